"""The JSON-RPC gateway: what other machines on the LAN may ask of the managed node.

anvil serves its development methods (``anvil_setBalance``, ``anvil_impersonateAccount``,
``evm_setIntervalMining`` ...) to whoever connects, so it listens on loopback only and other
machines reach the chain through this gateway. It forwards the standard methods a client needs
(chain id, blocks, balances, nonces, calls, gas and fees, raw transactions, receipts, logs and the
pool read the pending list uses) and answers everything else with a JSON-RPC error:

- ``-32601`` (method not found): a method not on `ALLOWED_METHODS`, e.g. ``anvil_*``, ``evm_*``,
  ``hardhat_*``, ``debug_*``, ``admin_*``, ``personal_*``, ``miner_*``, node-side signing
  (``eth_sendTransaction``, ``eth_sign*``, ``eth_accounts``) and filters (node-side state);
- ``-32600`` (invalid request): not a JSON-RPC 2.0 request object, no ``id`` (notifications are
  not taken), an empty batch or one larger than `max_batch`;
- ``-32700`` (parse error): the body is not JSON;
- ``-32005`` (limit exceeded, HTTP 429): more than `rate_limit` calls from one client address
  within `rate_window` seconds (every batch item counts);
- HTTP 413 with ``-32600``: a body larger than `max_body` bytes; HTTP 415: not
  ``Content-Type: application/json`` (a web page cannot send that cross-origin without a CORS
  preflight, which the gateway never grants).

Each batch item is checked on its own; the allowed ones go to the node as one batch and the
answers come back in the order asked. Every refusal is logged with the client's address.
HTTP only: no WebSocket, so no ``eth_subscribe`` (clients poll, as the servers do).
The HTTP side is werkzeug's threaded server (what ``microgrid serve`` uses too).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import Any

import requests
from flask import Flask, Response, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from dapp import __version__

log = logging.getLogger(__name__)

# Standard, read-only or signed-by-the-client methods: everything a microgrid server, a wallet
# or cast needs to read the chain and send its own signed transactions.
ALLOWED_METHODS = frozenset({
    "web3_clientVersion", "web3_sha3", "net_version", "net_listening",
    "eth_chainId", "eth_syncing", "eth_blockNumber", "eth_gasPrice", "eth_maxPriorityFeePerGas",
    "eth_feeHistory", "eth_blobBaseFee",
    "eth_getBlockByNumber", "eth_getBlockByHash",
    "eth_getBlockTransactionCountByNumber", "eth_getBlockTransactionCountByHash",
    "eth_getTransactionByHash", "eth_getTransactionByBlockNumberAndIndex",
    "eth_getTransactionByBlockHashAndIndex", "eth_getTransactionReceipt",
    "eth_getBlockReceipts",
    "eth_getBalance", "eth_getTransactionCount", "eth_getCode", "eth_getStorageAt",
    "eth_getProof",
    "eth_call", "eth_estimateGas", "eth_createAccessList",
    "eth_sendRawTransaction", "eth_getLogs",
    "txpool_content", "txpool_status",
})  # fmt: skip

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
LIMIT_EXCEEDED = -32005

DEFAULT_MAX_BODY = 1024 * 1024  # a contract deployment's raw transaction is ~50 KB of hex
DEFAULT_MAX_BATCH = 100
DEFAULT_RATE_LIMIT = 6000
DEFAULT_RATE_WINDOW = 60.0
# Clients remembered by the rate limit and its log; past this, the idle ones are forgotten.
MAX_TRACKED_CLIENTS = 10_000


def _error(id_: Any, code: int, message: str) -> dict[str, Any]:
    """A JSON-RPC 2.0 error object for request `id_`."""
    return {"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}}


class CallCounter:
    """At most `limit` calls per `window` seconds per client (a sliding window in memory)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str, count: int) -> bool:
        """Count `count` calls for `client`; False (nothing counted) if that exceeds the limit."""
        now = time.monotonic()
        with self._lock:
            if len(self._hits) > MAX_TRACKED_CLIENTS:  # a flood of addresses: forget idle ones
                floor = now - self.window
                self._hits = {k: v for k, v in self._hits.items() if v and v[-1] > floor}
            hits = self._hits.setdefault(client, deque())
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) + count > self.limit:
                return False
            hits.extend([now] * count)
            return True


class Gateway:
    """Checks JSON-RPC requests against the allow-list and forwards the allowed ones."""

    def __init__(
        self,
        upstream: str,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        max_batch: int = DEFAULT_MAX_BATCH,
        rate_limit: int = DEFAULT_RATE_LIMIT,
        rate_window: float = DEFAULT_RATE_WINDOW,
        timeout: float = 30.0,
    ) -> None:
        if max_body <= 0 or max_batch <= 0 or rate_limit <= 0 or rate_window <= 0:
            raise ValueError("gateway limits must be positive")
        self.upstream = upstream
        self.max_body = max_body
        self.max_batch = max_batch
        self.calls = CallCounter(rate_limit, rate_window)
        self.timeout = timeout
        self._local = threading.local()
        self._upstream_version: str | None = None
        self._limit_logged: dict[str, float] = {}  # "reason client" -> when last logged
        self._logged_lock = threading.Lock()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    # ------------------------------------------------------------------ checks

    def check(self, item: Any, client: str) -> dict[str, Any] | None:
        """The error answer for one request object, or None if it may be forwarded."""
        if not isinstance(item, dict):
            return self._refuse(None, INVALID_REQUEST, "not a JSON-RPC request object", client)
        id_ = item.get("id")
        if not isinstance(id_, (str, int)) or isinstance(id_, bool):
            return self._refuse(None, INVALID_REQUEST,
                                "a request needs an id (a number or a string)", client)
        method = item.get("method")
        if item.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return self._refuse(id_, INVALID_REQUEST,
                                'not a JSON-RPC 2.0 request ("jsonrpc": "2.0", "method")', client)
        if "params" in item and not isinstance(item["params"], (list, dict)):
            return self._refuse(id_, INVALID_REQUEST, "params must be a list or an object",
                                client)
        if method not in ALLOWED_METHODS:
            shown = method if len(method) <= 64 else method[:64] + "..."
            return self._refuse(
                id_, METHOD_NOT_FOUND,
                f"the method {shown} is not available through this gateway", client, method,
            )
        return None

    def _refuse(self, id_: Any, code: int, message: str, client: str,
                method: str | None = None) -> dict[str, Any]:
        log.warning("gateway refused %s from %s: %s", method or "a request", client, message)
        return _error(id_, code, message)

    # ------------------------------------------------------------------ answers

    def handle(self, body: bytes, client: str) -> tuple[Any, int]:
        """The JSON answer and HTTP status for a request body from `client`."""
        if not self.calls.take(client, 1):  # every HTTP request counts, even a malformed one
            return self._over_limit(client)
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return self._refuse(None, PARSE_ERROR, "the body is not valid JSON", client), 400
        batch = isinstance(payload, list)
        items = payload if batch else [payload]
        if batch and not items:
            return self._refuse(None, INVALID_REQUEST, "empty batch", client), 400
        if len(items) > self.max_batch:
            message = f"a batch may hold at most {self.max_batch} requests"
            return self._refuse(None, INVALID_REQUEST, message, client), 400
        if len(items) > 1 and not self.calls.take(client, len(items) - 1):
            return self._over_limit(client)
        answers: list[Any] = [self.check(item, client) for item in items]
        todo = [i for i, answer in enumerate(answers) if answer is None]
        if todo:
            results = self._forward([items[i] for i in todo])
            for i, result in zip(todo, results, strict=True):
                answers[i] = result
        return (answers if batch else answers[0]), 200

    def _over_limit(self, client: str) -> tuple[Any, int]:
        message = (f"too many requests: at most {self.calls.limit} calls per "
                   f"{self.calls.window:g} s from one address")
        return self._refuse_once(LIMIT_EXCEEDED, message, client, "limit"), 429

    def _refuse_once(self, code: int, message: str, client: str, reason: str) -> dict[str, Any]:
        """A refusal logged only the first time in the window for this client and reason."""
        if self._first_in_window(client, reason):
            return self._refuse(None, code, message, client)
        return _error(None, code, message)

    def _first_in_window(self, client: str, reason: str) -> bool:
        """Whether this is `client`'s first refusal for `reason` in the rate window: one log
        line per client, reason and window, not per request."""
        now = time.monotonic()
        with self._logged_lock:
            if len(self._limit_logged) > MAX_TRACKED_CLIENTS:  # a flood of addresses
                floor = now - self.calls.window
                self._limit_logged = {k: t for k, t in self._limit_logged.items() if t > floor}
            key = f"{reason} {client}"
            if now - self._limit_logged.get(key, -1e9) < self.calls.window:
                return False
            self._limit_logged[key] = now
            return True

    def _forward(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send allowed requests to the node as one batch; answers in the same order.

        The ids are replaced by positions on the way (a client's ids may repeat) and put back.
        """
        own: list[dict[str, Any]] = []
        answers: list[dict[str, Any] | None] = [None] * len(items)
        for position, item in enumerate(items):
            if item["method"] == "web3_clientVersion":
                answers[position] = {"jsonrpc": "2.0", "id": item["id"],
                                     "result": self.client_version()}
                continue
            own.append({"jsonrpc": "2.0", "id": position, "method": item["method"],
                        "params": item.get("params", [])})
        if own:
            for position, reply in self._post(own).items():
                reply["id"] = items[position]["id"]
                answers[position] = reply
        return [
            answer if answer is not None
            else _error(items[i]["id"], -32603, "the node gave no answer")
            for i, answer in enumerate(answers)
        ]

    def _post(self, batch: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """POST a batch to the node: {position: reply}; node failures become error replies."""
        try:
            response = self._session().post(self.upstream, json=batch, timeout=self.timeout)
            replies = response.json()
        except (requests.RequestException, ValueError) as exc:
            log.error("gateway: the node at %s did not answer: %s", self.upstream, exc)
            return {r["id"]: _error(r["id"], -32603, "the node did not answer") for r in batch}
        if isinstance(replies, dict):  # a node that answers a whole batch with one error
            return {r["id"]: {**replies, "id": r["id"]} for r in batch}
        out: dict[int, dict[str, Any]] = {}
        for reply in replies if isinstance(replies, list) else []:
            if isinstance(reply, dict) and isinstance(reply.get("id"), int):
                out[reply["id"]] = reply
        return out

    def client_version(self) -> str:
        """web3_clientVersion: says it is a gateway (so no mining control) and what is behind."""
        if self._upstream_version is None:
            reply = self._post([{"jsonrpc": "2.0", "id": 0, "method": "web3_clientVersion",
                                 "params": []}]).get(0, {})
            upstream = reply.get("result")
            if not isinstance(upstream, str):
                return f"MicrogridGateway/v{__version__}"
            self._upstream_version = upstream
        return f"MicrogridGateway/v{__version__}/{self._upstream_version}"

    # ------------------------------------------------------------------ WSGI

    def app(self) -> Flask:
        """A Flask app answering JSON-RPC on POST /."""
        app = Flask(__name__)
        app.config["MAX_CONTENT_LENGTH"] = self.max_body

        @app.route("/", methods=["GET", "POST"])
        def rpc() -> Response:
            """JSON-RPC over HTTP POST."""
            client = request.remote_addr or "unknown"
            if request.method != "POST":
                if not self.calls.take(client, 1):
                    return self._reply(*self._over_limit(client))
                return self._reply(self._refuse_once(
                    INVALID_REQUEST, "JSON-RPC only: POST a request", client, "method"), 405)
            if request.mimetype != "application/json":
                log.warning("gateway refused a request from %s: content type %r", client,
                            request.mimetype)
                return self._reply(_error(None, INVALID_REQUEST,
                                          "send Content-Type: application/json"), 415)
            try:
                body = request.get_data(cache=False)
            except RequestEntityTooLarge:
                return self._too_large(client)
            return self._reply(*self.handle(body, client))

        @app.errorhandler(RequestEntityTooLarge)
        def _too_large(exc: RequestEntityTooLarge) -> Response:
            return self._too_large(request.remote_addr or "unknown")

        @app.errorhandler(404)
        def _not_found(exc: Exception) -> Response:
            return self._reply(_error(None, INVALID_REQUEST, "JSON-RPC is served at /"), 404)

        return app

    def _too_large(self, client: str) -> Response:
        message = f"the request is larger than {self.max_body} bytes"
        return self._reply(self._refuse(None, INVALID_REQUEST, message, client), 413)

    @staticmethod
    def _reply(payload: Any, status: int) -> Response:
        return Response(json.dumps(payload), status=status, mimetype="application/json")


class _QuietHandler(WSGIRequestHandler):
    """No access log line per request (a busy client makes thousands; refusals are logged)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Skip the access log."""


def serve(gateway: Gateway, host: str, port: int) -> BaseWSGIServer:
    """A threaded werkzeug server for `gateway` on host:port (call serve_forever)."""
    return make_server(host, port, gateway.app(), threaded=True, request_handler=_QuietHandler)
