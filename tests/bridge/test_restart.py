"""A bridge killed mid-trade and started again takes the relay states from the chain."""

from __future__ import annotations

import time

from dapp.bridge import BridgeMeter
from tests.bridge.conftest import relay, wait_for


def test_killed_and_restarted_bridge_sets_relays_from_chain_state_not_memory(
        world, plant, bridges, listener):
    client = world.client
    seller, buyer = world.accounts(2)
    world.mint(seller, 600)
    supply, load = plant.meter("supply"), plant.meter("load")  # watchdogs: 10 s
    supply_key, load_key = world.give(supply, seller), world.give(load, buyer)
    meters = [BridgeMeter(supply.url, supply_key, seller.address, "supply"),
              BridgeMeter(load.url, load_key, buyer.address, "load")]
    data_dir = world.tmp / f"bridge-{buyer.address}"  # one "installation", three processes

    first = bridges(meters, client=world.chain_client(data_dir))
    unsubscribe = listener.subscribe(first.on_event)
    trade = world.trade(seller, buyer, 300)
    wait_for(lambda: relay(supply) and relay(load), timeout=15, what="relays closed")
    wait_for(lambda: client.meter(load_key).cumulative_wh > 0, what="load readings")

    first.stop(open_relays=False)  # killed: nothing opens the relays on the way out
    unsubscribe()
    killed = time.monotonic()
    assert relay(supply) and relay(load)
    world.close(buyer, trade)  # the trade ends while no bridge runs

    # No listener: what the second bridge does, it can only have from the chain's state.
    second = bridges(meters, client=world.chain_client(data_dir))
    wait_for(lambda: not relay(supply) and not relay(load), timeout=5, what="relays opened")
    assert time.monotonic() - killed < 10  # before the meters' own watchdogs would have
    assert not any(s.relay_wanted for s in second.state())

    trade = world.trade(seller, buyer, 300)  # opens while the second bridge hears nothing
    time.sleep(0.5)
    assert not relay(load)
    second.stop(open_relays=False)
    delivered = client.meter(load_key).cumulative_wh

    third = bridges(meters, client=world.chain_client(data_dir))
    wait_for(lambda: relay(supply) and relay(load), timeout=15, what="relays closed again")
    assert all(s.relay_wanted for s in third.state())
    # Readings go on from the same meters: the trade is paid for the energy now flowing.
    wait_for(lambda: client.lot(trade).delivered_wh > 0, timeout=10, what="delivery settled")
    assert client.meter(load_key).cumulative_wh > delivered
    for key in (supply_key, load_key):
        counters, sequences = listener.readings(key), listener.sequences(key)
        assert counters == sorted(counters) and sequences == sorted(set(sequences))
