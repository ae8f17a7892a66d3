"""The managed anvil: start/stop, a chain that survives restarts and kills, `microgrid node`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dapp.chain.anvil import ManagedAnvil, find_anvil, port_in_use
from dapp.chain.deploy import deploy
from dapp.chain.detection import detect
from dapp.chain.transports import connect
from dapp.errors import MicrogridError
from tests.chain.conftest import fund, transfer, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RECIPIENT = "0x000000000000000000000000000000000000bEEF"


def chain_snapshot(node: ManagedAnvil, addresses: list[str]) -> dict:
    """What a restart must keep: height, head block, balances and contract code."""
    w3 = connect(node.url, timeout=5)
    head = w3.eth.get_block("latest")
    return {
        "number": head["number"],
        "hash": head["hash"],
        "timestamp": head["timestamp"],
        "balances": {a: w3.eth.get_balance(a) for a in addresses},
        "code": {a: w3.eth.get_code(a) for a in addresses},
    }


def test_start_writes_log_and_pid_and_stop_saves_state(anvil_factory):
    node = anvil_factory(block_time=None)
    node.start()
    assert node.is_running() and node.pid is not None
    assert node.pid_file.read_text().strip() == str(node.pid)
    assert detect(connect(node.url)).client == "anvil"
    assert node.stop() == 0
    assert not node.is_running() and node.pid is None
    assert not node.pid_file.exists()
    assert "Listening on 127.0.0.1" in node.log_file.read_text()
    assert "accounts" in json.loads(node.state_file.read_text())


def test_restart_resumes_the_same_chain(anvil_factory, tmp_path):
    node = anvil_factory(tmp_path / "data", block_time=None)
    node.start()
    w3 = connect(node.url)
    operator = fund(w3)
    deployment = deploy(w3, operator)
    receipt = w3.eth.wait_for_transaction_receipt(transfer(w3, operator, RECIPIENT, 4_321))
    watched = [deployment.token, deployment.registry, deployment.market, RECIPIENT]
    before = chain_snapshot(node, watched + [operator.address])
    assert all(before["code"][a] for a in watched[:3])
    node.stop()

    again = anvil_factory(tmp_path / "data", port=node.port, block_time=None)
    again.start()
    assert chain_snapshot(again, watched + [operator.address]) == before
    w3 = connect(again.url)
    assert w3.eth.get_transaction_receipt(receipt["transactionHash"])["blockNumber"] == (
        receipt["blockNumber"]
    )
    # ... and carries on from there.
    later = w3.eth.wait_for_transaction_receipt(transfer(w3, operator, RECIPIENT, 1))
    assert later["blockNumber"] == before["number"] + 1


def test_a_killed_node_loses_at_most_state_interval_seconds(anvil_factory, tmp_path):
    node = anvil_factory(tmp_path / "data", block_time=None, state_interval=1)
    node.start()
    w3 = connect(node.url)
    sender = fund(w3)
    w3.eth.wait_for_transaction_receipt(transfer(w3, sender, RECIPIENT, 777))
    time.sleep(2.5)  # more than state_interval: the transfer is on disk by now
    os.kill(node.pid, signal.SIGKILL)
    wait_for(lambda: not node.is_running())
    node.stop()

    again = anvil_factory(tmp_path / "data", port=node.port, block_time=None)
    again.start()
    assert connect(again.url).eth.get_balance(RECIPIENT) == 777


def test_a_damaged_state_file_is_restored_from_the_last_good_copy(anvil_factory, tmp_path):
    data = tmp_path / "data"
    node = anvil_factory(data, block_time=None)
    node.start()
    w3 = connect(node.url)
    w3.eth.wait_for_transaction_receipt(transfer(w3, fund(w3), RECIPIENT, 99))
    node.stop()
    node.start()  # this start keeps a copy of the good state
    node.stop()
    good = node.state_file.read_bytes()
    node.state_file.write_bytes(good[: len(good) // 2])  # as if killed mid-write

    node.start()
    assert node.restored_from_backup
    assert connect(node.url).eth.get_balance(RECIPIENT) == 99
    assert list(node.chain_dir.glob("anvil-state.damaged-*.json"))


def test_a_damaged_state_file_without_backup_is_refused(anvil_factory):
    node = anvil_factory(block_time=None)
    node.chain_dir.mkdir(parents=True)
    node.state_file.write_text('{"block": {"number"')
    with pytest.raises(MicrogridError, match="damaged and there is no good backup"):
        node.start()
    assert node.state_file.read_text() == '{"block": {"number"'  # left for the user to inspect


def test_a_saved_chain_keeps_its_chain_id(anvil_factory, tmp_path):
    node = anvil_factory(tmp_path / "data", block_time=None, chain_id=4242)
    node.start()
    node.stop()
    other = anvil_factory(tmp_path / "data", block_time=None, chain_id=999)
    with pytest.raises(MicrogridError, match="has chain id 4242, not 999"):
        other.start()
    same = anvil_factory(tmp_path / "data", block_time=None, chain_id=4242)
    same.start()
    assert connect(same.url).eth.chain_id == 4242


def test_a_busy_port_is_refused_with_a_clear_message(anvil_factory):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        node = anvil_factory(port=port)
        with pytest.raises(MicrogridError, match=f"port {port} on 127.0.0.1 is already in use"):
            node.start()
        assert not node.is_running()


def test_a_missing_binary_says_to_run_npm_ci(tmp_path):
    with pytest.raises(MicrogridError, match="run `npm ci`"):
        find_anvil(tmp_path)


def test_the_real_binary_is_used_not_the_npm_wrapper():
    binary = find_anvil()
    assert binary.is_file() and ".bin" not in binary.parts
    assert binary.parent.parent.name.startswith("anvil-")


def test_microgrid_node_stops_cleanly_on_sigterm(tmp_path):
    from tests.chain.conftest import free_port

    port = free_port()
    env = {**os.environ, "MICROGRID_NODE_PORT": str(port), "MICROGRID_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dapp.cli", "node", "--state-interval", "0", "--block-time", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = proc.stdout.readline()
        assert f"anvil listening on http://127.0.0.1:{port}" in first_line
        w3 = connect(f"http://127.0.0.1:{port}")
        assert w3.eth.chain_id == 31337
        w3.eth.wait_for_transaction_receipt(transfer(w3, fund(w3), RECIPIENT, 5))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "chain state saved" in out
    state = tmp_path / "chain" / "anvil-state.json"
    assert json.loads(state.read_text())["best_block_number"] == 1
    assert not port_in_use("127.0.0.1", port)  # no anvil left behind
