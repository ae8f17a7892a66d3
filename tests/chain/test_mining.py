"""Start/stop mining: while stopped, sent transactions stay pending; started, they are mined."""

from __future__ import annotations

import time

import pytest
from web3 import EthereumTesterProvider, Web3

from dapp.chain.mining import MiningControl
from dapp.chain.transports import connect
from dapp.errors import ChainError
from tests.chain.conftest import fund, pool_hashes, receipt_or_none, transfer, wait_for

RECIPIENT = "0x000000000000000000000000000000000000dEaD"


def pending_block_hashes(w3: Web3) -> set[str]:
    """Transaction hashes in the node's pending block."""
    block = w3.provider.make_request("eth_getBlockByNumber", ["pending", False])["result"]
    return {h.lower() for h in block["transactions"]}


@pytest.mark.slow
def test_anvil_stopped_keeps_a_transfer_pending_until_mining_starts(anvil_w3):
    w3 = anvil_w3
    control = MiningControl(w3)
    assert control.mining_status().detail.startswith("automine")  # the fixture's anvil

    stopped = control.stop_mining()
    assert (stopped.mining, stopped.available, stopped.block_time) == (False, True, None)
    sender = fund(w3)
    height = w3.eth.block_number
    tx_hash = transfer(w3, sender, RECIPIENT, 12_345)

    time.sleep(1.5)  # longer than the block time we start with below: nothing gets mined
    assert receipt_or_none(w3, tx_hash) is None
    assert w3.eth.block_number == height
    assert tx_hash.to_0x_hex() in pool_hashes(w3)
    assert tx_hash.to_0x_hex() in pending_block_hashes(w3)
    assert w3.eth.get_balance(RECIPIENT) == 0

    started = control.start_mining(block_time=1)
    assert (started.mining, started.available, started.block_time) == (True, True, 1.0)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=5, poll_latency=0.1)
    assert receipt["status"] == 1
    assert w3.eth.get_balance(RECIPIENT) == 12_345
    assert pool_hashes(w3) == set()


@pytest.mark.slow
def test_anvil_status_is_read_from_the_node_not_remembered(anvil):
    ours = MiningControl(connect(anvil.url))
    other_connection = connect(anvil.url.replace("http://", "ws://"))
    theirs = MiningControl(other_connection)

    ours.start_mining(2)
    status = theirs.mining_status()
    assert (status.mining, status.block_time) == (True, 2.0)

    theirs.stop_mining()
    assert ours.mining_status().mining is False

    # A change made with plain JSON-RPC (another program) shows up too.
    other_connection.provider.make_request("evm_setIntervalMining", [3])
    assert ours.mining_status().block_time == 3.0
    other_connection.provider.make_request("evm_setAutomine", [True])
    assert ours.mining_status().detail.startswith("automine")


@pytest.mark.slow
def test_anvil_interval_is_whole_seconds(anvil_w3):
    # anvil's evm_setIntervalMining takes whole seconds: 0.4 s becomes 1 s, and says so.
    assert MiningControl(anvil_w3).start_mining(0.4).block_time == 1.0


def test_in_process_stopped_keeps_transfers_pending_until_mining_starts(inprocess):
    w3 = inprocess.w3
    control = MiningControl(w3)
    assert control.mining_status().mining is False
    sender, receiver = inprocess.accounts[0], inprocess.accounts[1].address
    before = w3.eth.get_balance(receiver)
    height = w3.eth.block_number

    # Two transfers from one sender: the second one's nonce counts the pending first one.
    first = transfer(w3, sender, receiver, 1_000)
    second = transfer(w3, sender, receiver, 2_000)
    assert w3.eth.get_transaction_count(sender.address, "pending") == 2
    assert w3.eth.get_transaction(second)["nonce"] == 1

    time.sleep(0.8)  # well past the chain's 0.3 s block time
    assert w3.eth.block_number == height
    assert receipt_or_none(w3, first) is None and receipt_or_none(w3, second) is None
    assert pool_hashes(w3) == {first.to_0x_hex(), second.to_0x_hex()}
    assert w3.provider.make_request("txpool_status", [])["result"]["pending"] == "0x2"

    status = control.start_mining(0.3)
    assert (status.mining, status.block_time) == (True, 0.3)
    wait_for(lambda: receipt_or_none(w3, second), timeout=5)
    assert receipt_or_none(w3, first)["status"] == 1
    assert w3.eth.get_balance(receiver) == before + 3_000
    assert pool_hashes(w3) == set()


def test_in_process_timer_mines_at_its_interval_and_stops(inprocess):
    w3 = inprocess.w3
    control = MiningControl(w3)
    control.start_mining(0.2)
    start = w3.eth.block_number
    wait_for(lambda: w3.eth.block_number >= start + 3, timeout=5)

    assert control.stop_mining().mining is False
    time.sleep(0.3)  # let a block that was being made finish
    stopped_at = w3.eth.block_number
    time.sleep(0.6)
    assert w3.eth.block_number == stopped_at


def test_in_process_timer_can_skip_empty_blocks():
    from dapp.chain.inprocess import InProcessChain

    with InProcessChain(block_time=0.1, empty_blocks=False) as chain:
        time.sleep(0.5)
        assert chain.w3.eth.block_number == 0
        tx_hash = transfer(chain.w3, chain.accounts[0], RECIPIENT, 1)
        wait_for(lambda: receipt_or_none(chain.w3, tx_hash), timeout=5)
        assert chain.w3.eth.block_number == 1


def test_in_process_clock_keeps_the_wall_clocks_pace_once_ahead_of_it():
    """After a burst of blocks (the chain is ahead of the wall clock), blocks slower than a
    second apart still move the chain's time as far as the wall clock moved, never only one
    second a block: meters' counters and the registry's rating check share one time."""
    from dapp.chain.inprocess import InProcessChain

    with InProcessChain(block_time=2.5, mining=False) as chain:
        chain.mine(30)  # thirty seconds ahead
        chain.start_mining()  # the timer counts from here, not from before the burst
        first = chain.w3.eth.get_block("latest")
        wall = time.time()
        wait_for(lambda: chain.w3.eth.block_number >= first["number"] + 2, timeout=10)
        second = chain.w3.eth.get_block("latest")
        elapsed_wall = time.time() - wall
        assert second["number"] - first["number"] <= 3
        assert elapsed_wall >= 4  # two blocks 2.5 s apart: one second a block would say 2
        assert second["timestamp"] - first["timestamp"] >= int(elapsed_wall) - 1
        assert second["timestamp"] - first["timestamp"] <= elapsed_wall + 1
        assert first["timestamp"] >= time.time() + 20  # and it stayed ahead by its lead


def test_a_node_without_mining_control_says_so_and_refuses():
    control = MiningControl(Web3(EthereumTesterProvider()))
    status = control.mining_status()
    assert (status.mining, status.available) == (False, False)
    assert "no block timer" in status.detail
    with pytest.raises(ChainError, match="mining cannot be controlled: .*no block timer"):
        control.start_mining()
    with pytest.raises(ChainError, match="mining cannot be controlled"):
        control.stop_mining()


def test_block_time_must_be_positive(inprocess):
    with pytest.raises(ValueError, match="positive"):
        MiningControl(inprocess.w3).start_mining(0)
