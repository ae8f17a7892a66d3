"""Fail-safe behaviour: dead, garbled and lying lines, bad counters, misconfigured meters.

Each test gives the meter's owner an open trade first, so the chain *wants* the relay closed: a
relay that stays open is the bridge's fail-safe at work, not the absence of a trade.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import threading
import time

from dapp.bridge import BridgeMeter
from dapp.chain.client import ReadingOutcome
from dapp.errors import ContractReverted
from hardware.emulator import Fault
from hardware.protocol import (
    MeterProtocolError,
    ReadReply,
    encode_ok,
    parse_reply,
    parse_request,
)
from tests.bridge.conftest import (
    FAKE_ADDRESS,
    NO_BLOCK,
    DamagedMeter,
    energy,
    relay,
    wait_for,
)


def _buyer_with_open_trade(world, lot_wh=300, load=None):
    """A buyer (and seller) with an open trade of `lot_wh`; returns (seller, buyer, trade id).

    With `load` (an emulated meter's server), that meter is the buyer's accepted load meter;
    otherwise the buyer gets one the test holds (bidding needs an accepted load meter).
    """
    seller, buyer = world.accounts(2)
    world.mint(seller, lot_wh)
    if load is not None:
        world.give(load, buyer)
    return seller, buyer, world.trade(seller, buyer, lot_wh)


def test_unplugged_meter_opens_its_relay_and_resumes_with_the_chain_state(
        world, plant, bridges, listener):
    seller, buyer = world.accounts(2)
    world.mint(seller, 300)
    load = plant.meter("load", watchdog_s=1)
    key = world.give(load, buyer)
    read_timeout = 1.0
    bridge = bridges([BridgeMeter(load.url, key, buyer.address, "load")],
                     read_timeout=read_timeout)
    listener.subscribe(bridge.on_event)
    state = lambda: bridge.meter_state(key)  # noqa: E731
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
    before = world.client.meter(key).cumulative_wh

    load.plug()  # the trade is still open: power flows again, readings resume
    wait_for(lambda: relay(load) and state().online, timeout=5, what="relay closed again")
    wait_for(lambda: world.client.meter(key).cumulative_wh > before, timeout=5,
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
    load = plant.meter("load")
    load.fault = Fault.GARBAGE  # the meter acts on commands, every reply has a bad checksum
    _, buyer, _ = _buyer_with_open_trade(world, load=load)
    key = load.meter.address
    bridge = bridges([BridgeMeter(load.url, key, buyer.address, "load")])
    state = lambda: bridge.meter_state(key)  # noqa: E731
    wait_for(lambda: "checksum" in (state().last_error or ""), what="garbage reported")
    time.sleep(1.5)
    assert True not in load.meter.relay_commands and not relay(load)
    assert not state().online and state().energy_wh is None
    assert world.readings_on_chain(key) == 0  # not one reading went to the chain

    load.fault = Fault.NONE  # the line heals: the chain's wish is carried out
    wait_for(lambda: relay(load) and state().online, timeout=5, what="relay closed")
    wait_for(lambda: world.readings_on_chain(key) > 0, what="baseline reading sent")

    seen = len(load.meter.relay_commands)
    load.fault = Fault.GARBAGE  # garbage again, mid-trade: commanded open, not by the watchdog
    wait_for(lambda: not relay(load), timeout=5, what="relay commanded open")
    assert False in load.meter.relay_commands[seen:]
    time.sleep(1)  # a reading already on its way may still be mined
    sent = world.readings_on_chain(key)
    counter = world.client.meter(key).cumulative_wh
    time.sleep(1.5)
    assert world.readings_on_chain(key) == sent
    assert world.client.meter(key).cumulative_wh == counter
    assert True not in load.meter.relay_commands[seen:] and not state().online


def test_sensor_faults_and_bad_counters_hold_the_relay_open_and_are_never_sent(
        world, plant, bridges, listener):
    seller, buyer = world.accounts(2)
    supply = plant.meter("supply")
    key = world.give(supply, seller)
    bridge = bridges([BridgeMeter(supply.url, key, seller.address, "supply")])
    listener.subscribe(bridge.on_event)
    state = lambda: bridge.meter_state(key)  # noqa: E731
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
    meter.energy_offset_wh -= 5  # the physics lost a little: the meter never signs below its
    time.sleep(0.5)  # last signed counter, so the readings stand still and nothing is wrong
    assert relay(supply) and "below" not in (state().last_error or "")

    # A tampered meter (its EEPROM counter rolled back, same key) signs a counter far below
    # what the chain holds: held open, and nothing of it is forwarded.
    with meter.grid.lock:
        rolled_back = max(0, meter.state.energy_wh - 25)
        meter.energy_offset_wh -= meter.state.energy_wh - rolled_back + 5
        meter.state.energy_wh = rolled_back
    wait_for(lambda: not relay(supply), timeout=3, what="relay held open")
    assert "went back" in state().last_error or "below" in state().last_error
    wait_for(lambda: relay(supply), timeout=10, what="counter passed the old value again")

    meter.energy_offset_wh += 1_000_000  # a jump no rating allows: withheld, held open
    wait_for(lambda: not relay(supply), timeout=3, what="relay held open on a jump")
    assert "jumped" in state().last_error
    time.sleep(0.5)
    with meter.grid.lock:  # the same tampering undone: sane again from the chain's counter
        meter.energy_offset_wh -= 1_000_000
        meter.state.energy_wh = world.client.meter(key).cumulative_wh
    wait_for(lambda: relay(supply), timeout=5, what="sane again")
    counters = listener.readings(key)
    assert counters == sorted(set(counters))  # never backwards, never twice
    assert max(counters) < 1_000_000 and max(counters) <= energy(supply)


def test_unregistered_unaccepted_and_mismatched_meters_are_faulty_until_accepted(
        world, plant, bridges, listener):
    _, buyer, _ = _buyer_with_open_trade(world)
    load = plant.meter("load", meter_id="real-load")
    wrong = plant.meter("supply", meter_id="not-a-load")  # a supply meter on a load's port
    other = world.account()  # accepts it as a load meter: its device says it is a supply meter
    world.offer(wrong, other.address, kind="load")
    world.client.wait(world.client.accept_meter(other, wrong.meter.address))
    load_key, wrong_key = load.meter.address, wrong.meter.address
    bridge = bridges([BridgeMeter(load.url, load_key, buyer.address, "load"),
                      BridgeMeter(wrong.url, wrong_key, other.address, "load")])
    listener.subscribe(bridge.on_event)
    state = bridge.meter_state
    wait_for(lambda: "not registered" in (state(load_key).last_error or ""))
    wait_for(lambda: "reports kind supply" in (state(wrong_key).last_error or ""))
    assert state(wrong_key).status == "faulty" and state(wrong_key).online
    time.sleep(1)
    assert not relay(load) and not relay(wrong)
    assert world.readings_on_chain(load_key) == world.readings_on_chain(wrong_key) == 0

    world.offer(load, buyer.address)  # offered, not yet accepted: still out of service
    wait_for(lambda: "not accepted" in (state(load_key).last_error or ""), timeout=5,
             what="the offer seen")
    time.sleep(0.5)
    assert not relay(load) and world.readings_on_chain(load_key) == 0

    # The buyer replaces its load meter: the operator withdraws the old one, the buyer accepts
    # the new one (an owner has one active load meter at a time).
    world.client.wait(world.client.deactivate_meter(world.operator,
                                                    world.client.load_meter_of(buyer.address)))
    world.client.wait(world.client.accept_meter(buyer, load_key))
    wait_for(lambda: relay(load) and state(load_key).status == "online", timeout=5,
             what="accepted meter in service")
    wait_for(lambda: world.readings_on_chain(load_key) > 0, what="its baseline reading")
    assert not relay(wrong) and True not in wrong.meter.relay_commands
    assert world.readings_on_chain(wrong_key) == 0


def test_no_exception_escapes_a_bridge_fed_thousands_of_damaged_replies(
        world, bridges, caplog):
    _, buyer, _ = _buyer_with_open_trade(world)
    caplog.set_level(logging.WARNING, logger="dapp.bridge")
    with DamagedMeter(seed=7) as fake:
        key = FAKE_ADDRESS  # what the damaged "meter" claims to be; never offered to anyone
        bridge = bridges([BridgeMeter(fake.url, key, buyer.address, "load")],
                         read_timeout=0.2, poll_interval=0.01, reconnect_backoff=(0.005, 0.01))
        wait_for(lambda: fake.replies >= 1500, timeout=60, step=0.1, what="1500 damaged replies")
        bridge.stop()
    assert fake.relay_requests and True not in fake.relay_requests  # told to open, never close
    assert world.readings_on_chain(key) == 0
    assert bridge.meter_state(key).energy_wh is None  # no reading was believed
    assert not [r for r in caplog.records if r.exc_info]  # every failure was a typed error


class RewritingProxy:
    """A man in the middle on a meter's TCP line: forwards every byte, but rewrites the counter
    of each READ reply (`add_wh` more) and recomputes the frame's checksum, so only the
    signature can tell. Every forged reading is kept in `forged`."""

    def __init__(self, upstream_url: str, add_wh: int) -> None:
        host, port = upstream_url.removeprefix("socket://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.add_wh = add_wh
        self.forged: list[ReadReply] = []
        self.block = NO_BLOCK  # the block of the last READ the host sent (the meter signs it)
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.url = f"socket://127.0.0.1:{self._server.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]

    def __enter__(self) -> RewritingProxy:
        self._threads[0].start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                host_side, _ = self._server.accept()
            except TimeoutError:
                continue
            meter_side = socket.create_connection(self.upstream)
            for src, dst, rewrite in ((host_side, meter_side, False),
                                      (meter_side, host_side, True)):
                thread = threading.Thread(target=self._pump, args=(src, dst, rewrite),
                                          daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket, rewrite: bool) -> None:
        src.settimeout(0.1)
        buffer = b""
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                try:
                    data = src.recv(4096)
                except TimeoutError:
                    continue
                if not data:
                    break
                buffer += data
                if not rewrite:
                    dst.sendall(data)
                    *requests, buffer = buffer.split(b"\n")
                    for request in requests:
                        self._note_block(request)
                    continue
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    dst.sendall(self._rewrite(line) + b"\n")
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.close()

    def _note_block(self, line: bytes) -> None:
        with contextlib.suppress(MeterProtocolError):
            request = parse_request(line.rstrip(b"\r"))
            if request.block is not None:
                self.block = request.block

    def _rewrite(self, line: bytes) -> bytes:
        try:
            reply = parse_reply(line)
        except MeterProtocolError:
            return line
        if not (reply.ok and reply.command == "READ") or not self.add_wh:
            return line
        genuine = ReadReply.from_fields(reply.values, self.block)
        forged = dataclasses.replace(genuine, energy_wh=genuine.energy_wh + self.add_wh)
        self.forged.append(forged)
        return encode_ok(reply.seq, "READ", forged.fields()).rstrip(b"\n")


def test_a_counter_rewritten_on_the_line_is_refused_and_the_relay_follows_the_chain(
        world, plant, bridges, listener):
    seller, buyer = world.accounts(2)
    world.mint(seller, 300)
    trade_id = world.trade(seller, buyer, 300)  # the chain wants the seller's export closed
    supply = plant.meter("supply")
    meter = world.give(supply, seller)
    tokens = world.client.token_balance(seller.address)
    with RewritingProxy(supply.url, add_wh=5_000) as proxy:
        bridge = bridges([BridgeMeter(proxy.url, meter, seller.address, "supply")])
        listener.subscribe(bridge.on_event)
        state = lambda: bridge.meter_state(meter)  # noqa: E731
        wait_for(lambda: len(proxy.forged) >= 5, what="forged readings")
        wait_for(lambda: "not the meter's" in (state().last_error or ""), what="forgery seen")
        time.sleep(1.0)
        assert world.readings_on_chain(meter) == 0  # not one forged reading was forwarded
        assert world.client.token_balance(seller.address) == tokens  # nothing minted

        # Carried to the chain by anyone, a forged reading is refused there too.
        outcome = _carry(world, proxy.forged[-1], meter)
        assert (outcome.accepted, outcome.reason) == (False, "MeterSignatureInvalid")
        assert world.client.token_balance(seller.address) == tokens
        assert state().energy_wh is None  # the page never showed a forged counter

        # The open trade was never in doubt: the relay only waits for a genuine reading.
        proxy.add_wh = 0  # the line is honest again
        wait_for(lambda: world.readings_on_chain(meter) > 0, what="genuine readings")
        wait_for(lambda: relay(supply), timeout=5, what="relay closed for the open trade")
        world.close(buyer, trade_id)
        wait_for(lambda: not relay(supply), timeout=5, what="relay open after the close")
    counters = listener.readings(meter)
    assert counters and max(counters) < 5_000  # only what the meter itself signed


def _carry(world, reading: ReadReply, meter: str):
    """Send a READ reply's reading to the chain as any account could."""
    from dapp.bridge import SignedReading as Carried

    tx = world.client.submit_readings(world.operator, [
        Carried(meter, reading.energy_wh, reading.sequence, reading.block, reading.signature)])
    try:
        return world.client.reading_outcomes(tx)[(meter, reading.sequence)]
    except ContractReverted as exc:
        return ReadingOutcome(meter, reading.sequence, False, exc.name)


def test_a_refused_reading_goes_again_after_the_interval_not_the_heartbeat(
        world, plant, bridges):
    """The registry refuses a counter that grew faster than the meter's rating allows in the
    chain time since its last reading. Once chain time has passed, the same counter is
    plausible: the bridge sends it again (signed anew) after its interval, without waiting for
    the next heartbeat (an hour here), so a frozen counter still reaches the chain and mints."""
    client = world.client
    (owner,) = world.accounts(1)
    supply = plant.meter("supply")
    meter = supply.meter.address
    # Rated 3,600 W: the chain allows 1 Wh a second; the emulated PV makes about 8.
    client.wait(client.offer_meter(world.operator, meter, owner.address, "supply", 3_600))
    client.wait(client.accept_meter(owner, meter))
    bridge = bridges([BridgeMeter(supply.url, meter, owner.address, "supply")],
                     submit_interval=0.5, heartbeat_interval=3_600.0)
    wait_for(lambda: client.meter(meter).read_at > 0, what="the baseline")
    baseline = client.meter(meter).cumulative_wh
    wait_for(lambda: "refused: MeterReadingImplausible" in (
        bridge.meter_state(meter).last_error or ""), timeout=20, what="a refused jump")
    plant.clock.freeze()
    final = energy(supply)
    wait_for(lambda: f"reading {final} Wh" in (bridge.meter_state(meter).last_error or ""),
             timeout=20, what="the frozen counter refused")
    assert client.meter(meter).cumulative_wh < final
    world.advance(3_600)  # an hour of chain time: the jump is plausible now
    wait_for(lambda: client.meter(meter).cumulative_wh == final, timeout=15,
             what="the refused counter on chain")
    assert client.token_balance(owner.address) == final - baseline  # every Wh minted once


def test_a_slow_reply_then_a_quick_one_is_not_an_impossible_jump(world, plant, bridges, caplog):
    """The meter samples its counter when the READ arrives; its reply may come late (a busy
    line or host). A late reply followed by a prompt one puts two counters close together in
    the host's clock although the meter counted for longer between them: the rating check
    measures from when the earlier READ was asked, so an honest meter is never held back."""
    client = world.client
    (owner,) = world.accounts(1)
    supply = plant.meter("supply")  # about 8 Wh a second of emulated PV
    meter = world.give(supply, owner)
    sample = supply.meter.reading
    slow: list[bool] = []

    def late_reply(block):
        signed = sample(block)  # sampled now ...
        if slow:
            slow.pop()
            time.sleep(0.4)  # ... answered 0.4 s later (3 Wh more counted meanwhile)
        return signed

    supply.meter.reading = late_reply
    bridge = bridges([BridgeMeter(supply.url, meter, owner.address, "supply")],
                     submit_interval=0.5)
    wait_for(lambda: client.meter(meter).read_at > 0, what="the baseline")
    before = client.meter(meter).cumulative_wh
    with caplog.at_level(logging.WARNING, logger="dapp.bridge"):
        for _ in range(3):
            slow.append(True)
            wait_for(lambda: not slow, what="a late reply")
            time.sleep(0.5)  # a few prompt READs after it
    assert "jumped" not in caplog.text
    assert bridge.meter_state(meter).last_error is None
    wait_for(lambda: client.meter(meter).cumulative_wh > before + 20, timeout=30,
             what="readings go on")
