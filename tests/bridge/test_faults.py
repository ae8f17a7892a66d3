"""Fail-safe behaviour: dead, garbled and lying lines, bad counters, misconfigured meters.

Each test gives the meter's owner an open trade first, so the chain *wants* the relay closed: a
relay that stays open is the bridge's fail-safe at work, not the absence of a trade.
"""

from __future__ import annotations

import logging
import time

from hardware.bridge import BridgeMeter
from hardware.emulator import Fault
from tests.bridge.conftest import DamagedMeter, energy, relay, wait_for


def _buyer_with_open_trade(world, lot_wh=300):
    """A buyer (and seller) with an open trade of `lot_wh`; returns (seller, buyer, trade id)."""
    seller, buyer = world.accounts(2)
    world.mint(seller, lot_wh)
    return seller, buyer, world.trade(seller, buyer, lot_wh)


def test_unplugged_meter_opens_its_relay_and_resumes_with_the_chain_state(
        world, plant, bridges, listener):
    seller, buyer = world.accounts(2)
    world.mint(seller, 300)
    load = plant.meter("load", watchdog_s=1)
    key = world.register(buyer.address, "load", load.meter.identity.rated_power_w)
    read_timeout = 1.0
    bridge = bridges([BridgeMeter(load.url, key, buyer.address, "load")],
                     read_timeout=read_timeout)
    listener.subscribe(bridge.on_event)
    state = lambda: bridge.meter_state(key.address)  # noqa: E731
    wait_for(lambda: state().online, what="meter online")
    trade_id = world.trade(seller, buyer, 300)
    wait_for(lambda: relay(load), timeout=5, what="relay closed by the trade")
    load.meter.set_relay(False)  # the meter opened it by itself (a reboot, a glitch)
    wait_for(lambda: relay(load), timeout=2, what="relay closed again at the next poll")

    pulled = time.monotonic()
    load.unplug()
    wait_for(lambda: not relay(load), timeout=2 * read_timeout, step=0.02,
             what="relay open after the cable was pulled")
    assert time.monotonic() - pulled <= 2 * read_timeout
    wait_for(lambda: state().status == "offline", timeout=5, what="meter marked offline")
    assert state().relay_closed is not True and state().last_error
    before = world.client.meter(key.address).cumulative_wh

    load.plug()  # the trade is still open: power flows again, readings resume
    wait_for(lambda: relay(load) and state().online, timeout=5, what="relay closed again")
    wait_for(lambda: world.client.meter(key.address).cumulative_wh > before, timeout=5,
             what="readings resumed")

    load.unplug()  # the buyer closes the trade while the line is down
    wait_for(lambda: not relay(load), timeout=2 * read_timeout, step=0.02)
    world.close(buyer, trade_id)
    commands = len(load.meter.relay_commands)
    load.plug()
    wait_for(lambda: state().online and state().relay_closed is False, timeout=5,
             what="back on line with the relay open")
    time.sleep(0.5)
    assert not relay(load) and True not in load.meter.relay_commands[commands:]


def test_garbled_replies_never_close_a_relay_and_send_nothing(world, plant, bridges):
    _, buyer, _ = _buyer_with_open_trade(world)
    load = plant.meter("load")
    load.fault = Fault.GARBAGE  # the meter acts on commands, every reply has a bad checksum
    key = world.register(buyer.address, "load", load.meter.identity.rated_power_w)
    bridge = bridges([BridgeMeter(load.url, key, buyer.address, "load")])
    state = lambda: bridge.meter_state(key.address)  # noqa: E731
    wait_for(lambda: "checksum" in (state().last_error or ""), what="garbage reported")
    time.sleep(1.5)
    assert True not in load.meter.relay_commands and not relay(load)
    assert not state().online and state().energy_wh is None
    assert world.nonce(key.address) == 0  # not one reading went to the chain

    load.fault = Fault.NONE  # the line heals: the chain's wish is carried out
    wait_for(lambda: relay(load) and state().online, timeout=5, what="relay closed")
    wait_for(lambda: world.nonce(key.address) > 0, what="baseline reading sent")

    seen = len(load.meter.relay_commands)
    load.fault = Fault.GARBAGE  # garbage again, mid-trade: commanded open, not by the watchdog
    wait_for(lambda: not relay(load), timeout=5, what="relay commanded open")
    assert False in load.meter.relay_commands[seen:]
    time.sleep(1)  # a reading already on its way may still be mined
    sent = world.nonce(key.address)
    counter = world.client.meter(key.address).cumulative_wh
    time.sleep(1.5)
    assert world.nonce(key.address) == sent
    assert world.client.meter(key.address).cumulative_wh == counter
    assert True not in load.meter.relay_commands[seen:] and not state().online


def test_sensor_faults_and_bad_counters_hold_the_relay_open_and_are_never_sent(
        world, plant, bridges, listener):
    seller, buyer = world.accounts(2)
    supply = plant.meter("supply")
    key = world.register(seller.address, "supply", supply.meter.identity.rated_power_w)
    bridge = bridges([BridgeMeter(supply.url, key, seller.address, "supply")])
    listener.subscribe(bridge.on_event)
    state = lambda: bridge.meter_state(key.address)  # noqa: E731
    wait_for(lambda: world.client.token_balance(seller.address) >= 30, timeout=15,
             what="tokens minted")
    world.trade(seller, buyer, 30)
    wait_for(lambda: relay(supply), timeout=5, what="seller's supply relay closed")
    meter = supply.meter

    meter.sensor_ok = False  # READ answers "sensor fault": no unmetered power
    wait_for(lambda: not relay(supply), timeout=3, what="relay opened on sensor fault")
    assert "cannot measure" in state().last_error
    meter.sensor_ok = True
    wait_for(lambda: relay(supply), timeout=3, what="relay closed after the sensor is back")

    sent = lambda: max(state().last_submitted_wh or 0, state().last_accepted_wh or 0)  # noqa: E731
    wait_for(lambda: sent() > 0)
    meter.energy_offset_wh -= 5  # a reboot loses up to 10 Wh: logged, relay stays as it is
    time.sleep(0.5)
    assert relay(supply)

    meter.energy_offset_wh -= 25  # far below what was sent: a reset meter, held open
    wait_for(lambda: not relay(supply), timeout=3, what="relay held open")
    assert "below" in state().last_error
    wait_for(lambda: relay(supply), timeout=10, what="counter passed the old value again")

    meter.energy_offset_wh += 1_000_000  # a jump no rating allows: discarded, held open
    wait_for(lambda: not relay(supply), timeout=3, what="relay held open on a jump")
    assert "jumped" in state().last_error
    time.sleep(0.5)
    meter.energy_offset_wh -= 1_000_000
    wait_for(lambda: relay(supply), timeout=5, what="sane again")
    counters = listener.readings(key.address)
    assert counters == sorted(set(counters))  # never backwards, never twice
    assert max(counters) < 1_000_000 and max(counters) <= energy(supply)


def test_unregistered_and_mismatched_meters_are_faulty_until_registered(
        world, plant, bridges, listener):
    _, buyer, _ = _buyer_with_open_trade(world)
    load = plant.meter("load", meter_id="real-load")
    wrong = plant.meter("supply", meter_id="not-a-load")  # a supply meter on a load's port
    load_key = world.accounts(1)[0]
    wrong_key = world.register(buyer.address, "load", 65535)
    bridge = bridges([BridgeMeter(load.url, load_key, buyer.address, "load"),
                      BridgeMeter(wrong.url, wrong_key, buyer.address, "load")])
    listener.subscribe(bridge.on_event)
    state = bridge.meter_state
    wait_for(lambda: "not registered" in (state(load_key.address).last_error or ""))
    wait_for(lambda: "reports kind supply" in (state(wrong_key.address).last_error or ""))
    assert state(wrong_key.address).status == "faulty" and state(wrong_key.address).online
    time.sleep(1)
    assert not relay(load) and not relay(wrong)
    assert world.nonce(load_key.address) == world.nonce(wrong_key.address) == 0

    world.register(buyer.address, "load", load.meter.identity.rated_power_w, key=load_key)
    wait_for(lambda: relay(load) and state(load_key.address).status == "online", timeout=5,
             what="registered meter in service")
    wait_for(lambda: world.nonce(load_key.address) > 0, what="its baseline reading")
    assert not relay(wrong) and True not in wrong.meter.relay_commands
    assert world.nonce(wrong_key.address) == 0


def test_no_exception_escapes_a_bridge_fed_thousands_of_damaged_replies(
        world, bridges, caplog):
    _, buyer, _ = _buyer_with_open_trade(world)
    key = world.register(buyer.address, "load", 65535)
    caplog.set_level(logging.WARNING, logger="hardware")
    with DamagedMeter(seed=7) as fake:
        bridge = bridges([BridgeMeter(fake.url, key, buyer.address, "load")],
                         read_timeout=0.2, poll_interval=0.01, reconnect_backoff=(0.005, 0.01))
        wait_for(lambda: fake.replies >= 1500, timeout=20, step=0.1, what="1500 damaged replies")
        bridge.stop()
    assert fake.relay_requests and True not in fake.relay_requests  # told to open, never close
    assert world.nonce(key.address) == 0
    assert bridge.meter_state(key.address).energy_wh is None  # no reading was believed
    assert not [r for r in caplog.records if r.exc_info]  # every failure was a typed error
