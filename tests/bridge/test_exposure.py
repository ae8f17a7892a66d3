"""What the bridges do so that nobody takes energy unpaid, on a real node making a block a second.

Only the seller whose trade the buyer's readings settle exports; a buyer whose meter goes
silent stalls the trade, and the seller's bridge opens the export relay by itself; a chain that
stops making blocks opens every relay until blocks return.
"""

from __future__ import annotations

import time

import pytest

from dapp.bridge import BridgeMeter
from dapp.chain.client import LotStatus
from tests.bridge.conftest import PARAMS, PRICE, World, relay, wait_for
from tests.bridge.test_anvil import anvil_world
from tests.chain.conftest import anvil_factory  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow


@pytest.fixture
def world(anvil_factory, tmp_path) -> World:  # noqa: F811 - the fixture, used by name
    """The contracts on a fresh anvil that makes a block every second, as a real chain does."""
    node = anvil_factory(block_time=1, chain_id=4345)
    node.start()
    return anvil_world(node, tmp_path)


def test_only_the_seller_whose_trade_is_being_settled_exports(world, plant, bridges, listener):
    first_seller, second_seller, buyer = world.accounts(3)
    world.mint(first_seller, 300)
    world.mint(second_seller, 300)
    supply_a, supply_b, load = plant.meter("supply"), plant.meter("supply"), plant.meter("load")
    world.give(supply_a, first_seller)
    world.give(supply_b, second_seller)
    world.give(load, buyer)
    bridge = bridges([BridgeMeter(supply_a.url), BridgeMeter(supply_b.url),
                      BridgeMeter(load.url)])
    listener.subscribe(bridge.on_event)
    first = world.trade(first_seller, buyer, 300)
    second = world.trade(second_seller, buyer, 300)  # queued behind the first
    assert world.client.active_trade_of(buyer.address) == first
    wait_for(lambda: relay(supply_a) and relay(load), timeout=10, what="first trade flowing")
    time.sleep(1.0)
    assert not relay(supply_b)  # its buyer's readings pay the first seller, not this one

    world.close(buyer, first)  # two-phase: relays open, the next reading settles the tail
    wait_for(lambda: world.client.lot(first).status is LotStatus.CLOSED, timeout=15,
             what="first trade closed by the buyer's next reading")
    assert world.client.active_trade_of(buyer.address) == second
    wait_for(lambda: relay(supply_b) and relay(load) and not relay(supply_a), timeout=10,
             what="the second seller exports now, the first does not")


def test_a_silent_buyer_stalls_the_trade_and_the_seller_is_paid_the_stated_bound(
        world, plant, bridges, listener):
    client = world.client
    seller, buyer = world.accounts(2)
    world.mint(seller, 300)
    supply, load = plant.meter("supply", watchdog_s=600), plant.meter("load", watchdog_s=600)
    world.give(supply, seller)
    load_meter = world.give(load, buyer)
    sellers_bridge = bridges([BridgeMeter(supply.url)])
    buyers_bridge = bridges([BridgeMeter(load.url)])
    listener.subscribe(sellers_bridge.on_event)
    listener.subscribe(buyers_bridge.on_event)
    trade = world.trade(seller, buyer, 300)
    wait_for(lambda: relay(supply) and relay(load), timeout=10, what="relays closed")
    wait_for(lambda: client.lot(trade).delivered_wh > 0, timeout=15, what="some delivery paid")

    # The buyer's server withholds every reading from now on; its meter's relay stays closed
    # (its watchdog is long), so the buyer goes on drawing power unmetered on chain.
    buyers_bridge.stop(open_relays=False)
    assert relay(load)
    silent_since = client.meter(load_meter).read_at
    stalls = client.stalls_at(trade)
    assert stalls == silent_since + PARAMS.stall_timeout
    world.advance(stalls - client.latest_timestamp())  # the stall timeout of chain time
    wait_for(lambda: not relay(supply), timeout=5, what="the seller's bridge opened by itself")

    before = client.lot(trade)
    credit = client.credit_of(seller.address)
    client.wait(client.close_connection(seller, trade))  # the seller may close at once
    closed = client.lot(trade)
    assert closed.status is LotStatus.CLOSED
    charged = [e for e in _events(world, "StallCharged") if e["args"]["tradeId"] == trade]
    assert len(charged) == 1
    args = charged[0]["args"]
    assert args["silentSince"] == silent_since
    # The bound: the most the buyer's meter could have drawn while silent, capped at the lot.
    most = client.meter(load_meter).rated_power_w * (args["silentUntil"] - silent_since) // 3600
    assert args["energyWh"] == min(most, before.energy_wh - before.delivered_wh)
    assert closed.delivered_wh == before.delivered_wh + args["energyWh"]
    assert client.credit_of(seller.address) - credit == closed.paid_wei - before.paid_wei
    assert closed.paid_wei == closed.delivered_wh * PRICE // 1000


def test_a_halted_chain_opens_every_relay_and_blocks_bring_them_back(
        world, plant, bridges, listener):
    seller, buyer = world.accounts(2)
    world.mint(seller, 300)
    supply, load = plant.meter("supply", watchdog_s=600), plant.meter("load", watchdog_s=600)
    world.give(supply, seller)
    world.give(load, buyer)
    halt_after = 2.0
    bridge = bridges([BridgeMeter(supply.url), BridgeMeter(load.url)], halt_after=halt_after)
    listener.subscribe(bridge.on_event)
    world.trade(seller, buyer, 300)
    wait_for(lambda: relay(supply) and relay(load), timeout=10, what="relays closed")

    rpc = world.w3.provider.make_request
    rpc("evm_setIntervalMining", [0])  # the chain stops: no more blocks
    rpc("evm_setAutomine", [False])
    stopped = time.monotonic()
    wait_for(lambda: not relay(supply) and not relay(load), timeout=halt_after + 5,
             step=0.05, what="relays open on a halted chain")
    assert time.monotonic() - stopped <= halt_after + 2.0  # the stated time, plus a poll

    rpc("evm_setIntervalMining", [1])  # blocks again
    wait_for(lambda: relay(supply) and relay(load), timeout=10, what="relays closed again")


def _events(world: World, name: str) -> list:
    """Every `name` event of the market so far."""
    from dapp.chain.contracts import load_artifact

    market = world.w3.eth.contract(address=world.deployment.market,
                                   abi=load_artifact("EnergyMarket").abi)
    return list(getattr(market.events, name).get_logs(from_block=0))
