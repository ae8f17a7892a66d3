"""The bridge end to end on the in-process chain: emulated meters, real contracts, events."""

from __future__ import annotations

from dapp.bridge import BridgeMeter
from tests.bridge.conftest import relay, trade_scenario, wait_for


def test_readings_mint_and_pay_and_relays_follow_the_trade(world, plant, bridges, listener):
    trade_scenario(world, plant, bridges, listener)


def test_a_meter_on_a_pseudo_terminal_is_bridged_like_one_on_tcp(world, plant, bridges):
    owner = world.account()
    supply = plant.meter("supply", transport="pty")
    assert supply.url.startswith("/dev/")
    key = world.give(supply, owner)
    # Address from the meter's ID, owner and kind from the registry.
    bridge = bridges([BridgeMeter(supply.url)])
    wait_for(lambda: world.client.token_balance(owner.address) > 0, timeout=10,
             what="tokens minted through the pty")
    state = bridge.meter_state(key)
    assert (state.online, state.owner, state.kind, state.meter_id) == \
        (True, owner.address, "supply", "emu-supply")
    assert state.relay_closed is False and not relay(supply)  # no trade: export switch open
