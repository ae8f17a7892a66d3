"""connect(), detect() and the "node is down" behaviour, over HTTP, WebSocket and IPC."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import EthereumTesterProvider, Web3

from dapp.chain.detection import detect, parse_client_version
from dapp.chain.inprocess import InProcessChain, close_shared_chains, shared_chain
from dapp.chain.transports import connect, wait_until_available
from dapp.errors import ChainError, ChainUnavailable
from tests.chain.conftest import free_port


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: Unix socket paths are limited to ~100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="mg-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(
    ("reported", "client", "version"),
    [
        ("anvil/v1.7.1", "anvil", "1.7.1"),
        ("Geth/v1.13.15-stable-c5ba367e/linux-amd64/go1.22.1", "geth", "1.13.15-stable-c5ba367e"),
        ("Geth/producer-1/v1.11.6-stable/linux-arm64/go1.20.3", "geth", "1.11.6-stable"),
        ("HardhatNetwork/2.22.3/@ethereumjs/vm/5.9.3", "hardhat", "2.22.3"),
        ("EthereumTester/0.14.0b1/linux/python3.11.7", "eth-tester", "0.14.0b1"),
        ("besu/v24.1.0/linux-x86_64/openjdk-java-17", "besu", "24.1.0"),
    ],
)
def test_client_version_is_parsed(reported, client, version):
    assert parse_client_version(reported) == (client, version)


@pytest.mark.slow
def test_detects_anvil_over_http(anvil, anvil_w3):
    info = detect(anvil_w3)
    assert (info.client, info.version, info.chain_id) == ("anvil", "1.7.1", 4242)
    assert info.client_version == "anvil/v1.7.1"
    caps = info.capabilities
    assert caps.mining == "interval" and caps.mining_reason == ""
    assert caps.has_txpool and caps.supports_eip1559


@pytest.mark.slow
def test_websocket_reaches_the_same_node_and_survives_a_node_restart(anvil, anvil_w3):
    ws = connect(anvil.url.replace("http://", "ws://"), timeout=5)
    assert detect(ws).client == "anvil"
    anvil_w3.provider.make_request("evm_mine", [])
    assert ws.eth.block_number == anvil_w3.eth.block_number == 1
    anvil.stop()
    with pytest.raises(ChainUnavailable, match="^chain unavailable: ws://"):
        ws.eth.block_number  # noqa: B018
    anvil.start()
    # The next call opens a fresh connection by itself.
    assert ws.eth.block_number == 1


@pytest.mark.slow
def test_ipc_path_connects_and_fails_fast_when_the_node_stops(anvil_factory, short_dir):
    ipc = short_dir / "anvil.ipc"
    node = anvil_factory(block_time=None, chain_id=777, extra_args=["--ipc", str(ipc)])
    node.start()
    wait_for_socket(ipc)
    w3 = connect(str(ipc), timeout=2)
    assert w3.eth.chain_id == 777
    assert detect(w3).client == "anvil"
    node.stop()
    started = time.monotonic()
    with pytest.raises(ChainUnavailable, match="^chain unavailable: "):
        w3.eth.block_number  # noqa: B018
    assert time.monotonic() - started < 2.5


def wait_for_socket(path: Path, timeout: float = 5.0) -> None:
    """anvil creates its IPC socket shortly after it answers HTTP."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"no IPC socket at {path}"
        time.sleep(0.02)


def test_detects_the_in_process_chain(inprocess):
    info = detect(inprocess.w3)
    assert info.client == "eth-tester"
    assert info.capabilities.mining == "timer"
    assert info.capabilities.has_txpool
    assert info.capabilities.supports_eip1559


def test_plain_eth_tester_says_why_it_cannot_mine_on_demand():
    info = detect(Web3(EthereumTesterProvider()))
    assert info.capabilities.mining is None
    assert "no block timer" in info.capabilities.mining_reason


def test_inprocess_url_returns_one_shared_chain_per_name():
    try:
        first = connect("inprocess://node-test")
        assert connect("inprocess://node-test") is first
        assert first is shared_chain("node-test").w3
        assert connect("inprocess://node-test-other") is not first
        assert detect(first).capabilities.mining == "timer"
        assert shared_chain("node-test").mining  # the shared chain mines by default
    finally:
        close_shared_chains("node-test", "node-test-other")


@pytest.mark.parametrize("scheme", ["http", "ws", "ipc"])
def test_a_node_that_is_down_raises_chain_unavailable_quickly(scheme, short_dir):
    port = free_port()
    url = {
        "http": f"http://127.0.0.1:{port}",
        "ws": f"ws://127.0.0.1:{port}",
        "ipc": str(short_dir / "missing.ipc"),
    }[scheme]
    w3 = connect(url, timeout=5)  # connecting sends nothing, so it cannot hang
    started = time.monotonic()
    with pytest.raises(ChainUnavailable) as info:
        w3.eth.block_number  # noqa: B018
    assert time.monotonic() - started < 1.5
    assert str(info.value).startswith("chain unavailable: ")
    assert "is the node running?" in str(info.value)
    assert w3.is_connected() is False


def test_a_node_that_accepts_but_never_answers_times_out():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        w3 = connect(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ChainUnavailable, match="no answer within 0.5 s"):
            w3.eth.chain_id  # noqa: B018
        assert time.monotonic() - started < 2


def test_wait_until_available_gives_up_after_its_timeout():
    w3 = connect(f"http://127.0.0.1:{free_port()}", timeout=1)
    started = time.monotonic()
    with pytest.raises(ChainUnavailable, match="gave up after 0.6 s"):
        wait_until_available(w3, timeout=0.6)
    assert 0.5 < time.monotonic() - started < 2


@pytest.mark.slow
def test_wait_until_available_returns_once_the_node_is_back(anvil_factory):
    node = anvil_factory(block_time=None)
    w3 = connect(node.url, timeout=2)
    starter = threading.Timer(1.0, node.start)
    starter.start()
    try:
        started = time.monotonic()
        assert wait_until_available(w3, timeout=20) == "anvil/v1.7.1"
        assert time.monotonic() - started >= 0.9
        assert w3.eth.block_number == 0
    finally:
        starter.join()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:8545", "", "unix://x"])
def test_unsupported_urls_are_refused(url):
    with pytest.raises(ChainError, match="unsupported node URL"):
        connect(url)


def test_in_process_chain_is_thread_safe(inprocess: InProcessChain):
    inprocess.start_mining(0.05)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(40):
                inprocess.w3.eth.get_block("latest")
                inprocess.w3.eth.get_balance(inprocess.accounts[0].address)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert inprocess.w3.eth.block_number > 0
