"""geth support, tested against replayed JSON-RPC exchanges (geth cannot be installed here).

A small HTTP JSON-RPC server on 127.0.0.1 answers from tests/chain/geth_exchange.json: each
request must be exactly the next one the scenario lists (method and params), so these tests
check both what the app concludes and that it sends exactly the expected requests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dapp.chain.detection import Capabilities, detect
from dapp.chain.mining import MiningControl
from dapp.chain.transports import connect
from dapp.errors import ChainError

SCENARIOS = json.loads((Path(__file__).with_name("geth_exchange.json")).read_text())["scenarios"]


class ReplayServer:
    """Serves one scenario's replies in order and records every request it gets."""

    def __init__(self, exchange: list[dict[str, Any]]) -> None:
        self.exchange = exchange
        self.received: list[tuple[str, list]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """Where the server listens."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def expected(self) -> list[tuple[str, list]]:
        """The requests the scenario lists, in order."""
        return [(e["request"]["method"], e["request"]["params"]) for e in self.exchange]

    def reply(self, request: dict[str, Any]) -> dict[str, Any]:
        """The recorded reply if `request` is the next expected one, else a JSON-RPC error."""
        with self._lock:
            call = (request["method"], request.get("params", []))
            index = len(self.received)
            self.received.append(call)
            if index < len(self.exchange) and self.expected[index] == call:
                body = self.exchange[index]["response"]
            else:
                body = {"error": {"code": -32000, "message": f"unexpected request {call}"}}
        return {"jsonrpc": "2.0", "id": request["id"], **body}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like geth

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers["Content-Length"])
                payload = json.dumps(server.reply(json.loads(self.rfile.read(length)))).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> ReplayServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def geth(request: pytest.FixtureRequest) -> Iterator[ReplayServer]:
    """A replay server for the scenario named by the test's `scenario` parameter."""
    with ReplayServer(SCENARIOS[request.param]["exchange"]) as server:
        yield server


@pytest.mark.parametrize("geth", ["clique-signer-1.13"], indirect=True)
def test_clique_signer_with_miner_api_starts_and_stops(geth):
    w3 = connect(geth.url, timeout=5)
    info = detect(w3)
    assert (info.client, info.version, info.chain_id) == ("geth", "1.13.15-stable-c5ba367e", 12345)
    assert info.capabilities == Capabilities(
        mining="miner", mining_reason="", has_txpool=True, supports_eip1559=True
    )

    control = MiningControl(w3, info)
    assert control.mining_status().mining is False
    started = control.start_mining(block_time=5)  # geth's block time is the clique period
    assert (started.mining, started.available, started.block_time) == (True, True, None)
    stopped = control.stop_mining()
    assert (stopped.mining, stopped.available) == (False, True)
    assert "pending" in stopped.detail
    assert geth.received == geth.expected


@pytest.mark.parametrize("geth", ["clique-signer-1.13"], indirect=True)
def test_clique_blocks_with_long_extra_data_are_readable(geth):
    # A clique block's extraData carries the 65-byte seal (97 bytes in all); web3 refuses
    # blocks with more than 32 bytes there unless the proof-of-authority formatter runs.
    w3 = connect(geth.url, timeout=5)
    w3.client_version  # noqa: B018 - follow the recorded order
    w3.eth.chain_id  # noqa: B018
    block = w3.eth.get_block("latest")
    assert block["number"] == 420
    assert len(block["proofOfAuthorityData"]) == 97


@pytest.mark.parametrize("geth", ["clique-default-http-api-1.13"], indirect=True)
def test_geth_without_the_miner_api_says_how_to_enable_it(geth):
    w3 = connect(geth.url, timeout=5)
    info = detect(w3)
    assert (info.client, info.version) == ("geth", "1.13.15-stable-c5ba367e")
    assert info.capabilities.has_txpool is False
    assert info.capabilities.mining is None
    assert "--http.api eth,net,web3,txpool,miner" in info.capabilities.mining_reason

    control = MiningControl(w3, info)
    status = control.mining_status()
    assert (status.mining, status.available) == (False, False)
    with pytest.raises(ChainError, match="mining cannot be controlled"):
        control.start_mining()
    assert geth.received == geth.expected  # nothing sent after detection


@pytest.mark.parametrize("geth", ["dev-pos-1.14"], indirect=True)
def test_post_merge_geth_cannot_be_told_to_mine(geth):
    w3 = connect(geth.url, timeout=5)
    info = detect(w3)
    assert (info.client, info.chain_id) == ("geth", 1337)
    assert info.capabilities.mining is None
    assert "proof-of-stake" in info.capabilities.mining_reason
    assert MiningControl(w3, info).mining_status().available is False

    # Even told otherwise (say, a NodeInfo kept from before an upgrade), the control finds
    # out from geth's "method does not exist" and stops offering mining.
    stale = replace(info, capabilities=replace(info.capabilities, mining="miner"))
    control = MiningControl(w3, stale)
    with pytest.raises(ChainError, match="does not offer miner_start .*v1.14 and later removed"):
        control.start_mining()
    status = control.mining_status()
    assert (status.mining, status.available) == (False, False)
    assert "miner_start does not exist/is not available" in status.detail
    assert geth.received == geth.expected


@pytest.mark.parametrize("geth", ["clique-signer-1.13"], indirect=True)
def test_replay_server_rejects_requests_out_of_order(geth):
    # The harness itself: a request the scenario does not list next is answered with an error
    # and recorded, so the "exactly the expected requests" assertions above can fail.
    w3 = connect(geth.url, timeout=5)
    response = w3.provider.make_request("eth_chainId", [])
    assert "unexpected request" in response["error"]["message"]
    assert geth.received != geth.expected
