"""TxSender and PendingView on the in-process chain: signing, reverts, outbox, pending list."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_tester import EthereumTester
from web3 import EthereumTesterProvider, Web3

from dapp.chain.contracts import load_artifact
from dapp.chain.deploy import deploy
from dapp.chain.pending import PendingView, kind_of
from dapp.chain.tx import Outbox, TxSender
from dapp.errors import ChainError, ContractReverted


@pytest.fixture
def tester() -> EthereumTester:
    """A fresh in-process chain."""
    return EthereumTester()


@pytest.fixture
def w3(tester: EthereumTester) -> Web3:
    """web3 over the in-process chain."""
    return Web3(EthereumTesterProvider(tester))


@pytest.fixture
def alice(tester: EthereumTester):
    """A funded local account (signs locally, never through the node)."""
    return Account.from_key(tester.backend.account_keys[1])


@pytest.fixture
def bob() -> str:
    """A fresh address with no Ether."""
    return Account.create().address


def test_send_ether_is_signed_locally_and_mined(w3, tmp_path, alice, bob):
    sender = TxSender(w3, tmp_path / "outbox.json")
    receipt = sender.transact(alice, {"to": bob, "value": 12345}, "send Ether")
    assert receipt["status"] == 1
    assert w3.eth.get_balance(bob) == 12345
    assert sender.outbox.entries() == []  # mined: forgotten


def test_revert_at_estimate_names_the_custom_error_and_sends_nothing(w3, tmp_path, alice, tester):
    dep = deploy(w3, Account.from_key(tester.backend.account_keys[0]))
    market = w3.eth.contract(address=dep.market, abi=load_artifact("EnergyMarket").abi)
    sender = TxSender(w3, tmp_path / "outbox.json")
    nonce_before = w3.eth.get_transaction_count(alice.address)
    tx = market.functions.withdraw().build_transaction({"from": alice.address, "gas": 100_000})
    del tx["gas"]
    with pytest.raises(ContractReverted) as info:
        sender.send(alice, {"to": tx["to"], "data": tx["data"]}, "withdraw")
    assert info.value.name == "MarketNothingToWithdraw"
    assert info.value.args_ == (alice.address,)
    assert w3.eth.get_transaction_count(alice.address) == nonce_before
    assert sender.outbox.entries() == []


def test_revert_of_a_mined_transaction_is_decoded_from_a_replay(w3, tmp_path, alice, tester):
    dep = deploy(w3, Account.from_key(tester.backend.account_keys[0]))
    market = w3.eth.contract(address=dep.market, abi=load_artifact("EnergyMarket").abi)
    sender = TxSender(w3, tmp_path / "outbox.json")
    data = market.functions.finalize(7)._encode_transaction_data()
    # An explicit gas value skips estimation, so the failure happens on chain.
    with pytest.raises(ContractReverted) as info:
        sender.transact(alice, {"to": dep.market, "data": data, "gas": 100_000}, "finalize")
    assert info.value.name == "MarketListingNotOpen"
    assert info.value.args_ == (7,)


def test_pending_until_mined_then_gone(w3, tester, tmp_path, alice, bob):
    # eth-tester accepts one unmined transaction per account (it checks nonces against the
    # mined state); several pending per account are tested on anvil.
    tester.disable_auto_mine_transactions()
    sender = TxSender(w3, tmp_path / "outbox.json")
    view = PendingView(w3, sender.outbox)
    tx_hash = sender.send(alice, {"to": bob, "value": 6}, "send Ether")
    pending = view.pending_transactions(alice.address)
    assert [(p.hash, p.nonce, p.kind, p.value) for p in pending] == [
        (tx_hash, 0, "send Ether", 6)
    ]
    assert view.pending_transactions(bob) == []  # bob only receives: not his transactions
    tester.mine_blocks(1)
    assert view.pending_transactions(alice.address) == []
    assert w3.eth.get_balance(bob) == 6


def test_meter_transactions_are_pending_for_the_meter_owner(w3, tester, tmp_path, alice, bob):
    tester.disable_auto_mine_transactions()
    sender = TxSender(w3, tmp_path / "outbox.json")
    view = PendingView(w3, sender.outbox)
    meter = alice  # stands in for a meter's device key here
    owner = Account.create().address
    tx_hash = sender.send(meter, {"to": bob, "value": 1}, "meter reading", concerns=[owner])
    assert [p.hash for p in view.pending_transactions(owner)] == [tx_hash]
    assert [p.hash for p in view.pending_transactions(Account.create().address, [meter.address])]


def test_wait_times_out_when_nobody_mines(w3, tester, tmp_path, alice, bob):
    tester.disable_auto_mine_transactions()
    sender = TxSender(w3, tmp_path / "outbox.json")
    tx_hash = sender.send(alice, {"to": bob, "value": 1}, "send Ether")
    with pytest.raises(ChainError, match="not mined within"):
        sender.wait(tx_hash, timeout=0.3)
    assert [e.hash for e in sender.outbox.entries()] == [tx_hash]


def test_outbox_resends_what_the_node_lost(tmp_path, alice, bob):
    lost_chain = EthereumTester()
    lost_chain.disable_auto_mine_transactions()
    first = TxSender(Web3(EthereumTesterProvider(lost_chain)), tmp_path / "outbox.json")
    tx_hash = first.send(alice, {"to": bob, "value": 777}, "send Ether")

    # A node that never saw the transaction (as after a crash): same keys, same chain id.
    fresh = Web3(EthereumTesterProvider(EthereumTester()))
    second = TxSender(fresh, tmp_path / "outbox.json")
    assert [e.hash for e in second.outbox.entries()] == [tx_hash]
    result = second.reconcile()
    assert result["resent"] == [tx_hash]
    assert second.wait(tx_hash)["status"] == 1
    assert fresh.eth.get_balance(bob) == 777
    assert second.reconcile() == {"mined": [], "resent": [], "dropped": []}
    assert Outbox(tmp_path / "outbox.json").entries() == []


def test_kind_of_names_contract_calls():
    assert kind_of(b"", 5) == "send Ether"
    assert kind_of(bytes.fromhex("3ccfd60b"), 0) == "withdraw"  # withdraw()
    assert kind_of(bytes.fromhex("deadbeef"), 0) == "contract call"


def test_a_send_after_the_node_lost_earlier_transactions_fills_the_gap_first(tmp_path, alice, bob):
    lost_chain = EthereumTester()
    lost_chain.disable_auto_mine_transactions()
    first = TxSender(Web3(EthereumTesterProvider(lost_chain)), tmp_path / "outbox.json")
    lost = [first.send(alice, {"to": bob, "value": 300}, "send Ether")]

    # The node lost it (a restart without its pending pool); this process was restarted too
    # and knows it only from the outbox. Nobody calls reconcile: the next send must not take
    # a nonce past the gap, where it would wait for ever.
    fresh = Web3(EthereumTesterProvider(EthereumTester()))
    second = TxSender(fresh, tmp_path / "outbox.json")
    new = second.send(alice, {"to": bob, "value": 3}, "send Ether")
    for tx_hash in (*lost, new):
        assert second.wait(tx_hash, timeout=5)["status"] == 1
    assert fresh.eth.get_balance(bob) == 303
    assert [fresh.eth.get_transaction(h)["nonce"] for h in (*lost, new)] == [0, 1]
    assert Outbox(tmp_path / "outbox.json").entries() == []


def test_a_lost_transaction_whose_nonce_was_used_elsewhere_is_dropped(tmp_path, alice, bob):
    lost_chain = EthereumTester()
    lost_chain.disable_auto_mine_transactions()
    first = TxSender(Web3(EthereumTesterProvider(lost_chain)), tmp_path / "outbox.json")
    lost = first.send(alice, {"to": bob, "value": 100}, "send Ether")
    fresh = Web3(EthereumTesterProvider(EthereumTester()))
    elsewhere = TxSender(fresh)  # the same key used by another program: nonce 0 is taken
    elsewhere.wait(elsewhere.send(alice, {"to": bob, "value": 5}, "send Ether"))
    second = TxSender(fresh, tmp_path / "outbox.json")
    assert second.reconcile() == {"mined": [], "resent": [], "dropped": [lost]}
    second.wait(second.send(alice, {"to": bob, "value": 7}, "send Ether"))
    assert fresh.eth.get_balance(bob) == 12  # the lost 100 was never paid twice or at all
