"""TxSender, PendingView and the listener against a real managed anvil.

Covers the issue's "real processes" checks: pending while mining is stopped, 20 concurrent
sends from one account, SIGTERM mid-auction with a restart, and kill -9 with the outbox
re-sending what the node lost.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from eth_account import Account
from web3 import Web3

from dapp.chain.contracts import load_artifact
from dapp.chain.deploy import MarketParameters, deploy
from dapp.chain.detection import detect
from dapp.chain.listener import EventListener
from dapp.chain.mining import MiningControl
from dapp.chain.pending import PendingView
from dapp.chain.transports import connect
from dapp.chain.tx import TxSender
from hardware.signing import BlockRef, Domain, sign_reading
from tests.chain.conftest import fund, wait_for

pytestmark = pytest.mark.slow
PRICE = 10**15


def _market(w3: Web3, address: str):
    return w3.eth.contract(address=address, abi=load_artifact("EnergyMarket").abi)


def _call_data(fn) -> str:
    return fn._encode_transaction_data()


def _node_and_sender(anvil_factory, tmp_path):
    """A fresh anvil mining each transaction, its mining control, a funded sender `alice`, an
    empty recipient `bob`, and a TxSender with its outbox in `tmp_path`."""
    node = anvil_factory(block_time=None)
    node.start()
    w3 = connect(node.url)
    return (w3, MiningControl(w3, detect(w3)), fund(w3), Account.create().address,
            TxSender(w3, tmp_path / "outbox.json"))


def test_stopped_mining_keeps_a_transfer_pending_until_started(anvil_factory, tmp_path):
    w3, mining, alice, bob, sender = _node_and_sender(anvil_factory, tmp_path)
    view = PendingView(w3, sender.outbox)

    assert mining.stop_mining().mining is False
    tx_hash = sender.send(alice, {"to": bob, "value": 5}, "send Ether")
    time.sleep(1.5)  # nothing mines it
    pending = view.pending_transactions(alice.address)
    assert [(p.hash, p.kind, p.source) for p in pending] == [(tx_hash, "send Ether", "node+outbox")]
    assert w3.eth.get_balance(bob) == 0

    assert mining.start_mining(1).mining is True
    assert sender.wait(tx_hash, timeout=10)["status"] == 1
    assert view.pending_transactions(alice.address) == []
    assert w3.eth.get_balance(bob) == 5


def test_a_transaction_sent_without_waiting_leaves_the_outbox_once_mined(anvil_factory, tmp_path):
    w3, mining, alice, bob, sender = _node_and_sender(anvil_factory, tmp_path)

    mining.stop_mining()
    tx_hash = sender.send(alice, {"to": bob, "value": 7}, "send Ether")
    assert sender.forget_mined() == []  # still in the pool: it stays
    assert [e.hash for e in sender.outbox.entries()] == [tx_hash]

    mining.start_mining(1)
    wait_for(lambda: w3.eth.get_balance(bob) == 7, timeout=10)
    gone = sender.forget_mined()
    assert [(e.hash, e.sender, e.to) for e in gone] == [(tx_hash, alice.address, bob)]
    assert sender.outbox.entries() == []
    assert TxSender(w3, tmp_path / "outbox.json").outbox.entries() == []  # also on disk


def test_twenty_concurrent_sends_from_one_account_are_all_mined(anvil_factory, tmp_path):
    node = anvil_factory(block_time=1)
    node.start()
    w3 = connect(node.url)
    alice, bob = fund(w3), Account.create().address
    sender = TxSender(w3, tmp_path / "outbox.json")
    hashes: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(20)

    def send(value: int) -> None:
        start.wait()
        try:
            hashes.append(sender.send(alice, {"to": bob, "value": value}, "send Ether"))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(v,)) for v in range(1, 21)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    receipts = [sender.wait(h, timeout=30) for h in hashes]
    assert all(r["status"] == 1 for r in receipts)
    nonces = sorted(w3.eth.get_transaction(h)["nonce"] for h in hashes)
    assert nonces == list(range(20))
    assert w3.eth.get_balance(bob) == sum(range(1, 21))
    assert sender.outbox.entries() == []


def _auction(w3: Web3, tmp_path):
    """Deploy, mint, list and bid: an auction in progress. Returns what the test needs.

    The buyer and a rival hold accepted load meters: bidders must.
    """
    operator, seller, buyer, rival = fund(w3), fund(w3), fund(w3), fund(w3)
    meter = Account.create()  # the meter's own key: it signs readings and holds no Ether
    dep = deploy(w3, operator, MarketParameters(min_duration=60, max_duration=3600))
    sender = TxSender(w3, tmp_path / "outbox.json")
    registry = w3.eth.contract(address=dep.registry, abi=load_artifact("MeterRegistry").abi)
    market = _market(w3, dep.market)
    domain = Domain(w3.eth.chain_id, dep.registry)
    sender.transact(operator, {"to": dep.registry, "data": _call_data(
        registry.functions.offerMeter(meter.address, seller.address, 0, 60_000))},
        "offer meter")
    sender.transact(seller, {"to": dep.registry, "data": _call_data(
        registry.functions.acceptMeter(meter.address))}, "accept meter")
    for bidder in (buyer, rival):
        load = Account.create().address
        sender.transact(operator, {"to": dep.registry, "data": _call_data(
            registry.functions.offerMeter(load, bidder.address, 1, 60_000))}, "offer meter")
        sender.transact(bidder, {"to": dep.registry, "data": _call_data(
            registry.functions.acceptMeter(load))}, "accept meter")

    def reading(energy_wh: int, sequence: int) -> dict:
        """The meter's signed reading, carried (and paid for) by the operator."""
        latest = w3.eth.get_block("latest")  # the meter signs the newest block
        block = BlockRef(int(latest["number"]), bytes(latest["hash"]))
        signature = sign_reading(meter.key, domain, energy_wh, sequence, block)
        # Readings depend on the next block's time, which an estimate cannot know: fixed gas.
        return sender.transact(operator, {"to": dep.registry, "gas": 300_000, "data": _call_data(
            registry.functions.report(meter.address, energy_wh, sequence, block.number,
                                      signature))},
            "meter reading")

    reading(0, 1)
    time.sleep(1.1)
    reading(10, 2)
    sender.transact(seller, {"to": dep.market, "data": _call_data(
        market.functions.list(10, PRICE, 600))}, "sell")
    deposit = market.functions.depositFor(1, PRICE).call()
    sender.transact(buyer, {"to": dep.market, "value": deposit, "data": _call_data(
        market.functions.bid(1, PRICE))}, "bid")
    return dep, sender, market, seller, buyer, rival, deposit


def test_sigterm_mid_auction_restart_keeps_state_and_listener_resumes(anvil_factory, tmp_path):
    data = tmp_path / "data"
    node = anvil_factory(data, block_time=None)
    node.start()
    w3 = connect(node.url)
    dep, sender, market, seller, buyer, rival, deposit = _auction(w3, tmp_path)
    seen: list[tuple[str, int]] = []
    listener = EventListener(w3, dep, data / "listener.json", window=50)
    listener.subscribe(lambda e: seen.append((e.name, e.log_index, e.block_number)))
    listener.poll_once()
    names_before = [s[0] for s in seen]
    assert "Listed" in names_before and "BidPlaced" in names_before

    node.stop()  # SIGTERM: anvil saves its state
    node.start()
    w3 = connect(node.url)
    market = _market(w3, dep.market)
    lot = market.functions.lotOf(1).call()
    assert lot[0] == 1 and lot[2] == buyer.address  # still Listed, same highest bidder
    assert w3.eth.get_balance(dep.market) == deposit

    # A new bid after the restart: the listener (a new instance, same cursor) gets only it.
    higher = PRICE + 10**12
    TxSender(w3, tmp_path / "outbox2.json").transact(rival, {
        "to": dep.market, "value": market.functions.depositFor(1, higher).call(),
        "data": _call_data(market.functions.bid(1, higher))}, "bid")
    resumed = EventListener(w3, dep, data / "listener.json", window=50)
    new: list[tuple[str, dict]] = []
    resumed.subscribe(lambda e: new.append((e.name, e.args)))
    resumed.poll_once()
    assert [n for n, _ in new] == ["BidPlaced", "Credited"]
    assert new[0][1]["bidder"] == rival.address
    assert new[1][1] == {"account": buyer.address, "lotId": 1, "amountWei": deposit}


def test_kill_9_loses_at_most_the_save_interval_and_the_outbox_resends(anvil_factory, tmp_path):
    data = tmp_path / "data"
    node = anvil_factory(data, block_time=None, state_interval=1)
    node.start()
    w3 = connect(node.url)
    dep, sender, market, seller, buyer, rival, deposit = _auction(w3, tmp_path)
    time.sleep(2.5)  # more than the save interval: the auction is on disk
    mining = MiningControl(w3, detect(w3))
    mining.stop_mining()
    bob = Account.create().address
    lost = sender.send(buyer, {"to": bob, "value": 4242}, "send Ether")
    os.kill(node.pid, signal.SIGKILL)
    wait_for(lambda: not node.is_running())
    node.stop()

    node.start()  # automine again (the runtime stop is not persisted)
    w3 = connect(node.url)
    market = _market(w3, dep.market)
    assert market.functions.lotOf(1).call()[2] == buyer.address  # the auction survived
    assert w3.eth.get_balance(dep.market) == deposit
    # The unmined transfer died with the node; the outbox sends the same signed bytes again.
    restarted = TxSender(w3, tmp_path / "outbox.json")
    assert lost in [e.hash for e in restarted.outbox.entries()]
    result = restarted.reconcile()
    assert lost in result["resent"]
    assert restarted.wait(lost, timeout=10)["status"] == 1
    assert w3.eth.get_balance(bob) == 4242
