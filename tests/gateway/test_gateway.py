"""A hostile client against the JSON-RPC gateway in front of a real managed anvil.

The node runs with interval mining (a block a second) on loopback; the gateway listens on
127.0.0.2 (a "LAN" address on this machine). Attacks come from the gateway's address; the books
are then read from the node directly (loopback) to show nothing changed, and honest clients
(web3 with local signing, the app's ChainClient, cast) are still served.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from eth_account import Account
from web3 import Web3

from dapp.chain.anvil import ManagedAnvil
from dapp.chain.client import ChainClient
from dapp.chain.gateway import ALLOWED_METHODS, Gateway, serve
from dapp.chain.transports import connect
from tests.support import free_port, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CAST = ROOT / "node_modules" / "@foundry-rs" / "cast-linux-amd64" / "bin" / "cast"
LAN = "127.0.0.2"
CLIENT = "127.0.0.1"  # the address the test's requests come from
ETHER = 10**18
SOMEONE = "0x000000000000000000000000000000000000dEaD"

REFUSED = [
    ("anvil_setBalance", ["{victim}", "0x0"]),
    ("anvil_impersonateAccount", ["{victim}"]),
    ("anvil_setStorageAt", ["{victim}", "0x0", "0x" + "11" * 32]),
    ("anvil_mine", ["0x64"]),
    ("anvil_setCode", ["{victim}", "0x00"]),
    ("anvil_reset", []),
    ("anvil_dumpState", []),
    ("evm_increaseTime", [3600]),
    ("evm_setIntervalMining", [0]),
    ("evm_setAutomine", [False]),
    ("evm_mine", []),
    ("evm_snapshot", []),
    ("evm_revert", ["0x1"]),
    ("hardhat_setBalance", ["{victim}", "0x0"]),
    ("hardhat_impersonateAccount", ["{victim}"]),
    ("debug_traceTransaction", ["0x" + "00" * 32]),
    ("admin_nodeInfo", []),
    ("personal_unlockAccount", ["{victim}", "", 0]),
    ("personal_sign", ["0x00", "{victim}"]),
    ("miner_stop", []),
    ("eth_sendTransaction", [{"from": "{victim}", "to": "{victim}", "value": "0x1"}]),
    ("eth_sign", ["{victim}", "0x00"]),
    ("eth_signTransaction", [{"from": "{victim}", "to": "{victim}"}]),
    ("eth_signTypedData_v4", ["{victim}", "{}"]),
    ("eth_accounts", []),
    ("eth_newFilter", [{}]),
    ("eth_subscribe", ["newHeads"]),
    ("no_suchMethod", []),
    ("", []),
    ("ETH_CHAINID", []),
]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedAnvil]:
    """A managed anvil mining a block every second, on loopback."""
    anvil = ManagedAnvil(tmp_path_factory.mktemp("node"), port=free_port(), block_time=1)
    anvil.start()
    yield anvil
    anvil.stop(timeout=5)


def start_gateway(upstream: str, **limits: Any) -> tuple[Any, str]:
    """A gateway on LAN:free port in a thread; (server, URL)."""
    server = serve(Gateway(upstream, **limits), LAN, free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{LAN}:{server.port}"


@pytest.fixture(scope="module")
def gateway(node: ManagedAnvil) -> Iterator[str]:
    """The gateway's URL, with a low body limit and batch size so the limits can be hit."""
    server, url = start_gateway(node.url, max_body=64 * 1024, max_batch=20)
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def direct(node: ManagedAnvil) -> Web3:
    """web3 on the node itself (loopback): the test's view of the books."""
    return connect(node.url, timeout=5)


@pytest.fixture(scope="module")
def victim(direct: Web3) -> str:
    """An account with 5 ETH that the attacks aim at."""
    address = Account.create().address
    assert "error" not in direct.provider.make_request("anvil_setBalance",
                                                       [address, hex(5 * ETHER)])
    return address


def rpc(url: str, payload: Any, **headers: str) -> requests.Response:
    """POST a JSON-RPC payload (already a Python value) to `url`."""
    return requests.post(url, data=json.dumps(payload), timeout=10,
                         headers={"Content-Type": "application/json", **headers})


def call(method: str, params: list, id_: Any = 1) -> dict:
    """One JSON-RPC request object."""
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}


def books(direct: Web3, victim: str) -> dict:
    """What an attack must not change, read from the node itself."""
    return {
        "balance": direct.eth.get_balance(victim),
        "code": direct.eth.get_code(victim),
        "automine": direct.provider.make_request("anvil_getAutomine", [])["result"],
        "interval": direct.provider.make_request("anvil_getIntervalMining", [])["result"],
        "accounts": direct.provider.make_request("eth_accounts", [])["result"],
    }


def fill(params: list, victim: str) -> list:
    """Put the victim's address into a parameter template."""
    return json.loads(json.dumps(params).replace("{victim}", victim))


@pytest.mark.parametrize(("method", "params"), REFUSED, ids=[m or "empty" for m, _ in REFUSED])
def test_refused_methods_change_nothing(gateway, direct, victim, method, params, caplog):
    before = books(direct, victim)
    block = direct.eth.block_number
    with caplog.at_level(logging.WARNING, logger="dapp.chain.gateway"):
        reply = rpc(gateway, call(method, fill(params, victim), id_=7))
    assert reply.status_code == 200
    body = reply.json()
    assert body["id"] == 7 and "result" not in body
    assert body["error"]["code"] == -32601
    assert "not available through this gateway" in body["error"]["message"]
    # The refusal is logged with the client's address.
    assert any(f"from {CLIENT}" in r.getMessage() and "refused" in r.getMessage()
               for r in caplog.records)
    assert books(direct, victim) == before
    # Mining goes on at its pace (no anvil_mine of 100 blocks, no halt).
    assert block <= direct.eth.block_number <= block + 3


def test_a_batch_is_checked_item_by_item(gateway, direct, victim):
    before = books(direct, victim)
    batch = [
        call("eth_chainId", [], "a"),
        call("anvil_setBalance", [victim, hex(10**30)], "b"),
        call("eth_getBalance", [victim, "latest"], "c"),
        call("evm_setIntervalMining", [0], "d"),
        call("eth_blockNumber", [], "a"),  # a repeated id is answered as asked
        call("eth_sendTransaction", [{"from": victim, "to": victim}], 5),
    ]
    reply = rpc(gateway, batch)
    assert reply.status_code == 200
    answers = reply.json()
    assert [a["id"] for a in answers] == ["a", "b", "c", "d", "a", 5]
    assert int(answers[0]["result"], 16) == direct.eth.chain_id
    assert int(answers[2]["result"], 16) == before["balance"]
    assert abs(int(answers[4]["result"], 16) - direct.eth.block_number) <= 1
    assert [a.get("error", {}).get("code") for a in answers] == [
        None, -32601, None, -32601, None, -32601]
    assert books(direct, victim) == before
    # The chain still makes a block a second.
    height = direct.eth.block_number
    wait_for(lambda: direct.eth.block_number >= height + 2, timeout=10)


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, -32700),
    (b"\xff\xfe", 400, -32700),
    (b"[]", 400, -32600),
    (b"42", 200, -32600),
    (b'"eth_chainId"', 200, -32600),
    (b'{"jsonrpc": "2.0", "method": "eth_chainId"}', 200, -32600),  # no id: a notification
    (b'{"jsonrpc": "1.0", "id": 1, "method": "eth_chainId"}', 200, -32600),
    (b'{"jsonrpc": "2.0", "id": 1, "method": 5}', 200, -32600),
    (b'{"jsonrpc": "2.0", "id": {"x": 1}, "method": "eth_chainId"}', 200, -32600),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": "x"}', 200, -32600),
])
def test_malformed_requests_get_json_rpc_errors(gateway, body, status, code):
    reply = requests.post(gateway, data=body, timeout=10,
                          headers={"Content-Type": "application/json"})
    assert reply.status_code == status
    assert reply.json()["error"]["code"] == code


def test_a_mixed_batch_of_garbage_and_good_calls(gateway, direct):
    reply = rpc(gateway, [7, call("eth_chainId", [], 1), {"method": "eth_chainId"}])
    answers = reply.json()
    assert [a["error"]["code"] if "error" in a else a["result"] for a in answers] == [
        -32600, hex(direct.eth.chain_id), -32600]


def test_oversized_bodies_and_batches_are_refused(gateway, direct, victim):
    before = books(direct, victim)
    huge = call("eth_call", [{"to": victim, "data": "0x" + "00" * 40_000}, "latest"])
    reply = rpc(gateway, huge)
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == -32600
    batch = [call("eth_blockNumber", [], i) for i in range(21)]
    reply = rpc(gateway, batch)
    assert reply.status_code == 400
    assert reply.json()["error"] == {"code": -32600,
                                     "message": "a batch may hold at most 20 requests"}
    assert len(rpc(gateway, batch[:20]).json()) == 20
    assert books(direct, victim) == before


def test_only_json_posts_are_taken(gateway):
    # A web page can send text/plain cross-origin without asking; the gateway does not take it.
    reply = requests.post(gateway, data=json.dumps(call("eth_chainId", [])), timeout=10,
                          headers={"Content-Type": "text/plain"})
    assert reply.status_code == 415
    assert requests.get(gateway, timeout=10).status_code == 405
    assert requests.post(gateway + "/x", timeout=10).status_code in (404, 415)


def _post_from(source: str, url: str, payload: Any) -> tuple[int, dict]:
    """POST from a chosen local source address (another "machine")."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    try:
        conn.request("POST", "/", body=json.dumps(payload),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_a_flood_is_cut_off_per_client_and_others_are_still_served(node, direct, caplog):
    server, url = start_gateway(node.url, rate_limit=30, rate_window=60)
    try:
        flooder, honest = "127.0.0.3", "127.0.0.4"
        statuses = [_post_from(flooder, url, call("eth_blockNumber", []))[0] for _ in range(25)]
        assert statuses == [200] * 25
        # A batch counts every item: 5 more fit, 6 do not.
        status, body = _post_from(flooder, url, [call("eth_blockNumber", [], i) for i in range(6)])
        assert (status, body["error"]["code"]) == (429, -32005)
        with caplog.at_level(logging.WARNING, logger="dapp.chain.gateway"):
            for _ in range(50):
                status, body = _post_from(flooder, url, call("eth_blockNumber", []))
        assert (status, body["error"]["code"]) == (429, -32005)
        assert "at most 30 calls per 60 s" in body["error"]["message"]
        # One log line per client and window, not one per refused request.
        assert len([r for r in caplog.records if flooder in r.getMessage()]) <= 1
        status, body = _post_from(honest, url, call("eth_chainId", []))
        assert (status, int(body["result"], 16)) == (200, direct.eth.chain_id)
    finally:
        server.shutdown()
        server.server_close()


def test_honest_clients_sign_locally_and_trade_through_the_gateway(gateway, direct, tmp_path):
    w3 = connect(gateway, timeout=10)
    sender = Account.create()
    direct.provider.make_request("anvil_setBalance", [sender.address, hex(ETHER)])
    receiver = Account.create().address
    tx = {"to": receiver, "value": 12345, "gas": 21000, "chainId": w3.eth.chain_id,
          "nonce": w3.eth.get_transaction_count(sender.address),
          "maxFeePerGas": 2 * w3.eth.gas_price + 10**9, "maxPriorityFeePerGas": 10**9}
    tx_hash = w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=20, poll_latency=0.2)
    assert receipt["status"] == 1
    assert direct.eth.get_balance(receiver) == 12345
    assert w3.eth.get_transaction(tx_hash)["from"] == sender.address
    assert w3.eth.get_logs({"fromBlock": receipt["blockNumber"],
                            "toBlock": receipt["blockNumber"]}) == []
    assert "pending" in w3.provider.make_request("txpool_content", [])["result"]
    # The app's own client sees a shared node: no mining buttons, and why.
    client = ChainClient(gateway, tmp_path / "client")
    assert client.info.client == "microgridgateway"
    assert client.info.capabilities.has_txpool
    status = client.mining_status()
    assert status.available is False
    assert "gateway" in status.detail


def test_the_allow_list_has_no_development_or_signing_method():
    risky = ("anvil_", "evm_", "hardhat_", "debug_", "admin_", "personal_", "miner_")
    assert not [m for m in ALLOWED_METHODS if m.startswith(risky)]
    assert not {"eth_sendTransaction", "eth_sign", "eth_signTransaction", "eth_accounts"} \
        & ALLOWED_METHODS


@pytest.mark.skipif(not CAST.is_file(), reason="cast is not installed (npm ci)")
def test_cast_a_foreign_client_works_through_the_gateway(gateway, direct):
    sender = Account.create()
    direct.provider.make_request("anvil_setBalance", [sender.address, hex(ETHER)])
    receiver = Account.create().address
    env = {**os.environ, "ETH_RPC_URL": gateway, "NO_COLOR": "1"}

    def cast(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(CAST), *args], env=env, capture_output=True, text=True,
                              timeout=60)

    assert cast("chain-id").stdout.strip() == str(direct.eth.chain_id)
    sent = cast("send", "--private-key", sender.key.hex(), receiver, "--value", "777",
                "--timeout", "30")
    assert sent.returncode == 0, sent.stderr
    assert direct.eth.get_balance(receiver) == 777
    assert cast("balance", receiver).stdout.strip() == "777"
    # cast's own development helpers meet the same refusal.
    refused = cast("rpc", "anvil_setBalance", receiver, "0x1")
    assert refused.returncode != 0 and "not available through this gateway" in refused.stderr
    assert direct.eth.get_balance(receiver) == 777


def test_microgrid_node_serves_the_gateway_and_refuses_a_lan_node(tmp_path):
    refused = subprocess.run(
        [sys.executable, "-m", "dapp.cli", "--data-dir", str(tmp_path), "node",
         "--host", "0.0.0.0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "loopback only" in refused.stderr and "--gateway-host" in refused.stderr

    port, gateway_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dapp.cli", "--data-dir", str(tmp_path), "node",
         "--port", str(port), "--gateway-host", LAN, "--gateway-port", str(gateway_port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://{LAN}:{gateway_port}"
    try:
        def up() -> bool:
            try:
                return rpc(url, call("eth_chainId", [])).ok
            except requests.ConnectionError:
                return False

        wait_for(up, timeout=30, step=0.2)
        assert rpc(url, call("anvil_setBalance", [SOMEONE, "0x1"])).json()["error"][
            "code"] == -32601
        # No development accounts on the node itself either.
        direct = connect(f"http://127.0.0.1:{port}", timeout=5)
        assert direct.provider.make_request("eth_accounts", [])["result"] == []
        # The raw node is not on the LAN address.
        with pytest.raises(requests.ConnectionError):
            rpc(f"http://{LAN}:{port}", call("eth_chainId", []))
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 0, out
    assert f"gateway for other machines on http://{LAN}:{gateway_port}" in out


def test_a_flood_of_addresses_does_not_grow_the_gateways_memory_without_bound(monkeypatch):
    from dapp.chain import gateway as gateway_module

    monkeypatch.setattr(gateway_module, "MAX_TRACKED_CLIENTS", 100)
    clock = [1000.0]
    monkeypatch.setattr(gateway_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    gate = Gateway("http://127.0.0.1:9", rate_limit=1, rate_window=1.0)
    for i in range(1000):  # every address over its limit once, each a second apart
        client = f"10.0.{i // 256}.{i % 256}"
        assert gate.calls.take(client, 1)
        assert gate._over_limit(client)[1] == 429  # noqa: SLF001 - the refusal's log memory
        clock[0] += 1.0
    assert len(gate.calls._hits) <= 101  # noqa: SLF001
    assert len(gate._limit_logged) <= 101  # noqa: SLF001


def test_gets_are_refused_and_logged_once_per_window(caplog):
    client = Gateway("http://127.0.0.1:9").app().test_client()
    with caplog.at_level(logging.WARNING, logger="dapp.chain.gateway"):
        for _ in range(3):  # a flood of GETs writes one log line, not one per request
            assert client.get("/").status_code == 405
    assert sum("POST a request" in r.getMessage() for r in caplog.records) == 1
