"""TxSender and PendingView on the in-process chain: signing, reverts, outbox, pending list."""

from __future__ import annotations

import threading

import pytest
from eth_account import Account
from eth_tester import EthereumTester, PyEVMBackend
from hexbytes import HexBytes
from web3 import EthereumTesterProvider, Web3

from dapp.chain.contracts import load_artifact
from dapp.chain.deploy import deploy
from dapp.chain.pending import PendingView, kind_of
from dapp.chain.tx import Outbox, OutboxEntry, TxSender
from dapp.errors import DROPPED_NONCE_USED, DROPPED_OTHER_CHAIN, ChainError, ContractReverted

GENESIS_TIME = 1_700_000_000


def same_chain() -> EthereumTester:
    """An in-process chain with the one genesis every call gives: a node that restarted with
    its chain but without its pending pool (the default genesis takes the clock's second, so
    two testers made a second apart would be two chains)."""
    params = PyEVMBackend.generate_genesis_params(overrides={"timestamp": GENESIS_TIME})
    return EthereumTester(PyEVMBackend(genesis_parameters=params))


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
    lost_chain = same_chain()
    lost_chain.disable_auto_mine_transactions()
    first = TxSender(Web3(EthereumTesterProvider(lost_chain)), tmp_path / "outbox.json")
    tx_hash = first.send(alice, {"to": bob, "value": 777}, "send Ether")

    # A node that never saw the transaction (as after a crash): same keys, same chain id.
    fresh = Web3(EthereumTesterProvider(same_chain()))
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
    lost_chain = same_chain()
    lost_chain.disable_auto_mine_transactions()
    first = TxSender(Web3(EthereumTesterProvider(lost_chain)), tmp_path / "outbox.json")
    lost = [first.send(alice, {"to": bob, "value": 300}, "send Ether")]

    # The node lost it (a restart without its pending pool); this process was restarted too
    # and knows it only from the outbox. Nobody calls reconcile: the next send must not take
    # a nonce past the gap, where it would wait for ever.
    fresh = Web3(EthereumTesterProvider(same_chain()))
    second = TxSender(fresh, tmp_path / "outbox.json")
    new = second.send(alice, {"to": bob, "value": 3}, "send Ether")
    for tx_hash in (*lost, new):
        assert second.wait(tx_hash, timeout=5)["status"] == 1
    assert fresh.eth.get_balance(bob) == 303
    assert [fresh.eth.get_transaction(h)["nonce"] for h in (*lost, new)] == [0, 1]
    assert Outbox(tmp_path / "outbox.json").entries() == []


def test_a_lost_transaction_whose_nonce_was_used_elsewhere_is_dropped(tmp_path, alice, bob):
    lost_chain = same_chain()
    lost_chain.disable_auto_mine_transactions()
    first = TxSender(Web3(EthereumTesterProvider(lost_chain)), tmp_path / "outbox.json")
    lost = first.send(alice, {"to": bob, "value": 100}, "send Ether")
    fresh = Web3(EthereumTesterProvider(same_chain()))
    elsewhere = TxSender(fresh)  # the same key used by another program: nonce 0 is taken
    elsewhere.wait(elsewhere.send(alice, {"to": bob, "value": 5}, "send Ether"))
    second = TxSender(fresh, tmp_path / "outbox.json")
    assert second.reconcile() == {"mined": [], "resent": [], "dropped": [lost]}
    assert second.dropped(lost) == DROPPED_NONCE_USED  # what the pages tell its sender
    second.wait(second.send(alice, {"to": bob, "value": 7}, "send Ether"))
    assert fresh.eth.get_balance(bob) == 12  # the lost 100 was never paid twice or at all


def test_a_node_back_on_an_older_state_drops_what_can_never_be_mined(w3, tester, tmp_path,
                                                                     alice, bob):
    sender = TxSender(w3, tmp_path / "outbox.json")
    before = tester.take_snapshot()
    for value in (1, 2):  # mined, so they leave the outbox
        sender.transact(alice, {"to": bob, "value": value}, "send Ether")
    # Nonce 2, sent to a node that then restarted from a state a few seconds old (anvil's
    # --state-interval): nonces 0 to 2 are gone from the chain and from its pool.
    signed = alice.sign_transaction({"to": bob, "value": 4, "gas": 21_000, "nonce": 2,
                                     "chainId": w3.eth.chain_id, "maxFeePerGas": 10**10,
                                     "maxPriorityFeePerGas": 10**9})
    stuck = HexBytes(signed.hash).to_0x_hex()
    sender.outbox.add(OutboxEntry(hash=stuck, sender=alice.address, nonce=2, kind="send Ether",
                                  raw=HexBytes(signed.raw_transaction).to_0x_hex(), to=bob,
                                  value=4, sent_at=0.0, genesis=sender.genesis()))
    tester.revert_to_snapshot(before)
    # Nonces 0 and 1 are nowhere any more, so nonce 2 can never be mined: it is dropped, and the
    # next payment takes nonce 0 instead of waiting behind the gap for ever.
    paid = sender.transact(alice, {"to": bob, "value": 8}, "send Ether")
    assert paid["status"] == 1 and w3.eth.get_transaction(paid["transactionHash"])["nonce"] == 0
    assert w3.eth.get_balance(bob) == 8
    assert sender.outbox.entries() == []


def test_an_outbox_of_another_chain_is_never_sent_to_this_one(w3, tmp_path, alice, bob):
    lost_chain = same_chain()
    lost_chain.disable_auto_mine_transactions()
    first = TxSender(Web3(EthereumTesterProvider(lost_chain)), tmp_path / "outbox.json")
    lost = first.send(alice, {"to": bob, "value": 100}, "send Ether")
    # As if it had been signed on a chain with another genesis block but the same chain id
    # (a fresh development chain): on this chain, alice's nonce 0 would pay bob again.
    outbox = Outbox(tmp_path / "outbox.json")
    (entry,) = outbox.entries()
    outbox.remove(lost)
    outbox.add(type(entry)(**{**entry.__dict__, "genesis": "0x" + "ab" * 32}))
    second = TxSender(w3, tmp_path / "outbox.json")
    assert second.reconcile() == {"mined": [], "resent": [], "dropped": [lost]}
    assert second.dropped(lost) == DROPPED_OTHER_CHAIN
    assert w3.eth.get_balance(bob) == 0


def test_waiting_for_a_replaced_transaction_finds_whichever_was_mined(w3, tmp_path, alice, bob):
    sender = TxSender(w3, tmp_path / "outbox.json")
    original = sender.send(alice, {"to": bob, "value": 5}, "send Ether")
    # Re-pricing made a replacement, but the original was mined first.
    sender._replaced_by[original] = "0x" + "77" * 32  # noqa: SLF001 - a replacement never mined
    assert sender.wait(original, timeout=2)["status"] == 1


def test_a_nonce_another_sender_took_meanwhile_is_signed_again_with_the_next(w3, tmp_path, alice,
                                                                           bob):
    """Two programs with one key (a bridge and a server sharing the operator): the other one's
    transaction reaches the node between this sender's nonce read and its send. The node refuses
    the taken nonce; the sender signs again with the next one, and both payments arrive."""
    mine = TxSender(w3, tmp_path / "mine.json")
    other = TxSender(w3, tmp_path / "other.json")
    own_lock = threading.Lock()
    other._lock_for = lambda address: own_lock  # another process: not this process's nonce lock
    real = mine._send_raw
    raced: list[str] = []

    def other_first(raw):
        if not raced:
            raced.append(other.send(alice, {"to": bob, "value": 5}, "send Ether"))
        return real(raw)

    mine._send_raw = other_first
    tx_hash = mine.send(alice, {"to": bob, "value": 7}, "send Ether")
    assert mine.wait(tx_hash, timeout=5)["status"] == 1 and other.wait(raced[0])["status"] == 1
    assert [w3.eth.get_transaction(h)["nonce"] for h in (raced[0], tx_hash)] == [0, 1]
    assert w3.eth.get_balance(bob) == 12
    assert [e.hash for e in mine.outbox.entries()] == []  # mined: only the sent one was kept
    assert mine.send(alice, {"to": bob, "value": 1}, "send Ether")  # and the next nonce is 2
    assert w3.eth.get_transaction_count(alice.address) == 3


def test_two_senders_of_one_process_share_the_accounts_nonce_lock(w3, tmp_path, alice, bob):
    """A bridge and the server in one process, each with its own client: their sends from one
    account are serialized, so neither reads a nonce the other is about to use."""
    first, second = TxSender(w3, tmp_path / "a.json"), TxSender(w3, tmp_path / "b.json")
    assert first._lock_for(alice.address) is second._lock_for(alice.address)
    hashes: list[str] = []

    def pay(sender: TxSender) -> None:
        for _ in range(10):
            hashes.append(sender.send(alice, {"to": bob, "value": 1}, "send Ether"))

    threads = [threading.Thread(target=pay, args=(s,)) for s in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(w3.eth.get_transaction(h)["nonce"] for h in hashes) == list(range(20))
    assert w3.eth.get_balance(bob) == 20


@pytest.mark.parametrize("refusal", [
    "insufficient funds for gas",  # not about the nonce: never retried
    "nonce too low",  # about the nonce, but the node's count says it is free: a lying node
])
def test_a_refusal_gets_no_second_signature_unless_the_nonce_is_really_used(
        w3, tmp_path, alice, bob, refusal):
    sender = TxSender(w3, tmp_path / "outbox.json")
    signed: list[bytes] = []

    def refuse(raw):
        signed.append(raw)
        raise ChainError(f"the node refused the transaction: {refusal}")

    sender._send_raw = refuse
    with pytest.raises(ChainError, match=refusal):
        sender.send(alice, {"to": bob, "value": 7}, "send Ether")
    assert len(signed) == 1 and sender.outbox.entries() == []
    assert w3.eth.get_balance(bob) == 0 and w3.eth.get_transaction_count(alice.address) == 0


def test_a_send_whose_reply_was_lost_is_not_signed_again(w3, tmp_path, alice, bob):
    """The node took the payment, but the reply was lost and the request was repeated (the
    stream transports repeat a request on a fresh connection): the repeat says "nonce too low".
    Those very bytes are known to the node, so the payment counts as sent, once."""
    sender = TxSender(w3, tmp_path / "outbox.json")
    real = sender._send_raw

    def delivered_then_refused(raw):
        real(raw)
        raise ChainError("the node refused the transaction: nonce too low")

    sender._send_raw = delivered_then_refused
    tx_hash = sender.send(alice, {"to": bob, "value": 7}, "send Ether")
    assert sender.wait(tx_hash, timeout=5)["status"] == 1
    assert w3.eth.get_balance(bob) == 7 and w3.eth.get_transaction_count(alice.address) == 1
