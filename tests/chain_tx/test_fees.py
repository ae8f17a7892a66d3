"""Fees under load on a real anvil, and the outbox journal.

Blocks are kept full by a flood: anvil mines only on `evm_mine`, with a block gas limit of five
transfers, and the flood pays a higher tip than the server's transactions.
"""

from __future__ import annotations

import json
import time

import pytest
from eth_account import Account

from dapp.chain.transports import connect, rpc
from dapp.chain.tx import FEE_BUMP, Outbox, OutboxEntry, TxSender
from tests.chain.conftest import anvil_factory, fund  # noqa: F401 - fixture re-exported

GWEI = 10**9
FIVE_TRANSFERS = str(5 * 21_000)


def _flood(w3, count: int, tip: int = 5 * GWEI) -> None:
    """`count` transfers from a fresh account, paying `tip`, into the pool."""
    flooder = fund(w3)
    chain_id = w3.eth.chain_id
    for nonce in range(count):
        signed = flooder.sign_transaction({
            "to": Account.create().address, "value": 1, "gas": 21_000, "nonce": nonce,
            "chainId": chain_id, "maxFeePerGas": 10_000 * GWEI, "maxPriorityFeePerGas": tip})
        w3.eth.send_raw_transaction(signed.raw_transaction)


def _mine(w3) -> dict:
    rpc(w3, "evm_mine")
    return w3.eth.get_block("latest")


@pytest.mark.slow
def test_the_managed_chains_base_fee_stays_zero_in_full_blocks(anvil_factory, tmp_path):  # noqa: F811
    node = anvil_factory(block_time=None, extra_args=["--no-mining", "--gas-limit",
                                                      FIVE_TRANSFERS])
    node.start()
    w3 = connect(node.url)
    _flood(w3, 70)
    alice = fund(w3)
    sender = TxSender(w3, tmp_path / "outbox.json")
    tx_hash = sender.send(alice, {"to": Account.create().address, "value": 1}, "send Ether")
    blocks = [_mine(w3) for _ in range(12)]
    assert all(len(b["transactions"]) == 5 for b in blocks)  # full, every one
    assert {b["baseFeePerGas"] for b in blocks} == {0}
    for _ in range(4):  # the flood pays more tip and goes first; then ours
        _mine(w3)
    assert sender.wait(tx_hash, timeout=5)["status"] == 1
    assert sender.reprice_stuck(after_blocks=1) == []  # nothing was ever priced out


@pytest.mark.slow
def test_a_transaction_priced_out_by_full_blocks_is_repriced_and_mined(anvil_factory, tmp_path):  # noqa: F811
    node = anvil_factory(block_time=None, base_fee=None,  # anvil's own fee market
                         extra_args=["--no-mining", "--gas-limit", FIVE_TRANSFERS])
    node.start()
    w3 = connect(node.url)
    alice = fund(w3)
    sender = TxSender(w3, tmp_path / "outbox.json")
    tx_hash = sender.send(alice, {"to": Account.create().address, "value": 1}, "send Ether")
    signed = w3.eth.get_transaction(tx_hash)
    cap = signed["maxFeePerGas"]
    _flood(w3, 90)
    replaced: list[tuple[str, str]] = []
    priced_out_blocks = 0
    started = time.monotonic()
    while w3.eth.get_transaction_count(alice.address) == 0 and time.monotonic() - started < 30:
        block = _mine(w3)
        if block["baseFeePerGas"] > cap:
            priced_out_blocks += 1
        replaced += sender.reprice_stuck(after_blocks=3)
    receipt = sender.wait(tx_hash, timeout=5)  # follows the replacement
    assert receipt["status"] == 1
    # The original could never have been mined: its cap stayed below the base fee.
    assert w3.eth.get_block(receipt["blockNumber"])["baseFeePerGas"] > cap
    assert priced_out_blocks >= 3
    assert len(replaced) >= 1 and replaced[0][0] == tx_hash
    assert receipt["transactionHash"].to_0x_hex() == sender.current_hash(tx_hash) != tx_hash
    final = w3.eth.get_transaction(receipt["transactionHash"])
    assert final["nonce"] == signed["nonce"]
    assert final["maxFeePerGas"] >= int(cap * FEE_BUMP)
    assert sender.outbox.entries() == []


def _entry(number: int) -> OutboxEntry:
    return OutboxEntry(hash=f"0x{number:064x}", sender="0x" + "11" * 20, nonce=number,
                       kind="bid", raw="0x02", to=None, value=0, sent_at=float(number))


def test_outbox_appends_to_a_journal_and_a_new_outbox_reads_it_back(tmp_path):
    path = tmp_path / "outbox.json"
    outbox = Outbox(path)
    for number in range(5):
        outbox.add(_entry(number))
    outbox.remove(_entry(1).hash)
    assert not path.exists()  # no rewrite of the whole outbox per transaction
    lines = (tmp_path / "outbox.json.journal").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6
    again = Outbox(path)
    assert [e.nonce for e in again.entries()] == [0, 2, 3, 4]


def test_a_torn_journal_line_is_ignored(tmp_path):
    path = tmp_path / "outbox.json"
    outbox = Outbox(path)
    outbox.add(_entry(7))
    with (tmp_path / "outbox.json.journal").open("a", encoding="utf-8") as handle:
        handle.write('{"add": {"hash": "0x')  # the process died mid-append
    assert [e.nonce for e in Outbox(path).entries()] == [7]


def test_outbox_compacts_into_the_snapshot_and_replay_after_a_crash_is_harmless(tmp_path):
    path = tmp_path / "outbox.json"
    outbox = Outbox(path, compact_after=10)
    for number in range(30):
        outbox.add(_entry(number))
        if number % 3:
            outbox.remove(_entry(number).hash)
    assert path.exists()
    kept = [n for n in range(30) if n % 3 == 0]
    journal = tmp_path / "outbox.json.journal"
    assert len(journal.read_text(encoding="utf-8").splitlines()) < 30
    assert [e.nonce for e in Outbox(path).entries()] == kept
    # A crash between writing the snapshot and emptying the journal: both are replayed.
    old_journal = journal.read_text(encoding="utf-8")
    outbox.compact()
    assert json.loads(path.read_text(encoding="utf-8"))["transactions"]
    journal.write_text(old_journal, encoding="utf-8")
    assert [e.nonce for e in Outbox(path).entries()] == kept
