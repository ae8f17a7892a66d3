"""Transports: a node URL becomes a Web3 whose every failure is `ChainUnavailable`.

`connect(url)` picks the transport from the URL (http(s)://, ws(s)://, an IPC path, or
``inprocess://`` for the eth-tester chain). Every transport raises `ChainUnavailable` when the
node cannot be reached, never a raw socket or requests exception, and no call waits longer than
the connection's timeout. `rpc()` is one raw JSON-RPC request (for the node's own methods:
mining control, development-node funding), its errors typed as `RPCError`.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from eth_utils import to_bytes
from hexbytes import HexBytes
from web3 import HTTPProvider, Web3
from web3.middleware import FormattingMiddlewareBuilder
from web3.providers import JSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from dapp.chain.failures import unavailable
from dapp.errors import ChainError, ChainUnavailable

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
INPROCESS_SCHEME = "inprocess://"

# JSON-RPC "method not found"; geth says "the method X does not exist/is not available".
METHOD_NOT_FOUND = -32601


def _redact(url: str) -> str:
    """`url` without user:password, for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class _HTTPProvider(HTTPProvider):
    """HTTPProvider that fails fast (no silent retries) with ChainUnavailable."""

    def __init__(self, url: str, timeout: float) -> None:
        # web3 retries refused connections with back-off by default; callers that want to wait
        # use wait_until_available() instead, so a dead node is reported at once.
        super().__init__(
            url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None
        )
        self.timeout = timeout
        self.where = _redact(url)
        self.chain_ids = _ChainIdMemory()

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        """Send one JSON-RPC request; a node that is down raises ChainUnavailable."""
        known = self.chain_ids.answer(method)
        if known is not None:
            return known
        try:
            return self.chain_ids.learn(method, super().make_request(method, params))
        except OSError as exc:  # requests' exceptions are OSErrors too
            self.chain_ids.forget()
            raise unavailable(exc, self.where, self.timeout) from exc

    def make_batch_request(self, batch_requests: list[tuple[RPCEndpoint, Any]]) -> Any:
        """Send a batch; a node that is down raises ChainUnavailable."""
        try:
            return super().make_batch_request(batch_requests)
        except OSError as exc:
            raise unavailable(exc, self.where, self.timeout) from exc

    def is_connected(self, show_traceback: bool = False) -> bool:
        """True if the node answers web3_clientVersion."""
        return _answers(self, show_traceback)


class _ChainIdMemory:
    """`eth_chainId` answered from memory after the node's first answer.

    web3 asks for the chain id twice per contract call (filling the call's defaults), which
    doubled the requests of every read; the chain id of a connection cannot change while the
    node stays up, so the answer is kept until the transport fails (a restarted node may be
    another chain).
    """

    def __init__(self) -> None:
        self._result: Any = None

    def answer(self, method: str) -> RPCResponse | None:
        """The remembered answer to `method`, if it is eth_chainId and known."""
        if method != "eth_chainId" or self._result is None:
            return None
        return RPCResponse({"jsonrpc": "2.0", "id": 0, "result": self._result})

    def learn(self, method: str, response: RPCResponse) -> RPCResponse:
        """Remember a successful eth_chainId answer; return `response`."""
        if method == "eth_chainId" and isinstance(response, dict) and "result" in response:
            self._result = response["result"]
        return response

    def forget(self) -> None:
        """The transport failed: ask the node again next time."""
        self._result = None


def _answers(provider: JSONBaseProvider, show_traceback: bool) -> bool:
    """True if `provider`'s node answers web3_clientVersion (ChainUnavailable -> False)."""
    try:
        response = provider.make_request(RPCEndpoint("web3_clientVersion"), [])
    except ChainUnavailable:
        if show_traceback:
            raise
        return False
    return "result" in response


class _StreamProvider(JSONBaseProvider):
    """Base for one persistent, lock-protected connection (IPC socket or WebSocket)."""

    # Exceptions that mean "the transport failed" (subclasses add their library's).
    _errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, where: str, timeout: float) -> None:
        super().__init__()
        self.where = where
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: Any = None
        self.chain_ids = _ChainIdMemory()

    def _open(self) -> Any:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _exchange(self, conn: Any, request: bytes, request_id: Any) -> RPCResponse:
        raise NotImplementedError

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        """Send one request over the persistent connection, reconnecting once if it went stale."""
        known = self.chain_ids.answer(method)
        if known is not None:
            return known
        try:
            return self.chain_ids.learn(method, self._request(method, params))
        except ChainUnavailable:
            self.chain_ids.forget()
            raise

    def _request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        request = self.encode_rpc_request(method, params)
        request_id = json.loads(request)["id"]
        with self._lock:
            reused = self._conn is not None
            try:
                return self._attempt(request, request_id)
            except self._errors as exc:
                self._close()
                # A connection kept from before a node restart fails on first use: retry once
                # on a fresh one. A fresh connection that fails means the node is down.
                if not reused or isinstance(exc, TimeoutError):
                    raise unavailable(exc, self.where, self.timeout) from exc
            try:
                return self._attempt(request, request_id)
            except self._errors as exc:
                self._close()
                raise unavailable(exc, self.where, self.timeout) from exc

    def _attempt(self, request: bytes, request_id: Any) -> RPCResponse:
        if self._conn is None:
            self._conn = self._open()
        return self._exchange(self._conn, request, request_id)

    def is_connected(self, show_traceback: bool = False) -> bool:
        """True if the node answers web3_clientVersion."""
        return _answers(self, show_traceback)


class _IPCProvider(_StreamProvider):
    """JSON-RPC over a Unix socket (geth.ipc, anvil --ipc) with a real per-request timeout."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__(path, timeout)
        self.ipc_path = path

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.ipc_path)
        except OSError:
            sock.close()
            raise
        return sock

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _exchange(self, conn: socket.socket, request: bytes, request_id: Any) -> RPCResponse:
        conn.sendall(request + b"\n")
        buffer = b""
        deadline = time.monotonic() + self.timeout
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionResetError("the node closed the IPC connection")
            buffer += chunk
            if buffer.rstrip().endswith((b"}", b"]")):
                try:
                    return self.decode_rpc_response(buffer)
                except ValueError:
                    pass  # a "}" inside a string at a chunk boundary: keep reading
            if time.monotonic() > deadline:
                raise TimeoutError("timed out")

    def __str__(self) -> str:
        return f"IPC {self.ipc_path}"


class _WebSocketProvider(_StreamProvider):
    """Synchronous JSON-RPC over a WebSocket.

    web3 8 removed its synchronous LegacyWebSocketProvider (only the asyncio
    WebSocketProvider is left), and the rest of the app is synchronous, so this small
    provider speaks JSON-RPC over the `websockets` package's sync client.
    """

    def __init__(self, url: str, timeout: float) -> None:
        super().__init__(_redact(url), timeout)
        from websockets.exceptions import WebSocketException

        self.endpoint_uri = url
        self._errors = (OSError, WebSocketException)

    def _open(self) -> Any:
        from websockets.sync.client import connect as ws_connect

        conn = ws_connect(
            self.endpoint_uri,
            open_timeout=self.timeout,
            close_timeout=1,
            max_size=None,  # blocks with many transactions exceed the 1 MiB default
        )
        # Entering the context marks the connection as managed by us (websockets >= 17
        # otherwise warns); we close it ourselves in _close().
        return conn.__enter__()

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001,S110 - closing a broken socket may fail too
                pass
            finally:
                self._conn = None

    def _exchange(self, conn: Any, request: bytes, request_id: Any) -> RPCResponse:
        conn.send(request.decode())
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            response = self.decode_rpc_response(to_bytes(text=conn.recv(timeout=remaining)))
            # Subscription notifications have no id; this provider does not subscribe.
            if isinstance(response, dict) and response.get("id") == request_id:
                return response

    def __str__(self) -> str:
        return f"WS {self.where}"


def _clique_block(block: Any) -> Any:
    """A clique block with its long extraData moved to proofOfAuthorityData; others as-is."""
    if not isinstance(block, dict) or len(HexBytes(block.get("extraData") or b"")) <= 32:
        return block
    out = {k: v for k, v in block.items() if k != "extraData"}
    out["proofOfAuthorityData"] = HexBytes(block["extraData"])
    return out


# geth clique (proof-of-authority) blocks carry 97 bytes of extraData (vanity + seal), which
# web3's validation rejects. Unlike web3's ExtraDataToPOAMiddleware this leaves every other
# block (anvil, post-merge geth) exactly as the node sent it.
_clique_blocks = FormattingMiddlewareBuilder.build(
    result_formatters={
        RPCEndpoint("eth_getBlockByNumber"): _clique_block,
        RPCEndpoint("eth_getBlockByHash"): _clique_block,
    }
)


def connect(url: str, timeout: float = DEFAULT_TIMEOUT, cache_constants: bool = False) -> Web3:
    """A Web3 for the node at `url`: http(s)://, ws(s)://, an IPC path, or inprocess://[name].

    `cache_constants`: ask the chain id and client version once, not before every call (web3
    asks for the chain id with each eth_call and transaction otherwise); for a node that is not
    restarted under this process, such as a simulation's own. Nothing is sent yet: a node that
    is down makes the first call raise ChainUnavailable (after at most `timeout` seconds). Use
    `wait_until_available` to wait for a node. ``inprocess://`` (optionally
    ``inprocess://NAME``) returns the process-wide in-process chain of that name, created on
    first use with its block timer running.
    """
    url = url.strip()
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    lower = url.lower()
    if lower.startswith(INPROCESS_SCHEME):
        from dapp.chain.inprocess import shared_chain

        return shared_chain(url[len(INPROCESS_SCHEME):]).w3
    provider: Any
    if lower.startswith(("http://", "https://")):
        provider = _HTTPProvider(url, timeout)
    elif lower.startswith(("ws://", "wss://")):
        provider = _WebSocketProvider(url, timeout)
    elif lower.startswith("file://"):
        provider = _IPCProvider(url[len("file://"):], timeout)
    elif "://" in url or not url:
        raise ChainError(
            f"unsupported node URL {url!r}: use http://, ws://, an IPC path or inprocess://"
        )
    else:
        provider = _IPCProvider(url, timeout)
    if cache_constants:
        provider.cache_allowed_requests = True
        provider.cacheable_requests = {"eth_chainId", "net_version", "web3_clientVersion"}
    w3 = Web3(provider)
    w3.middleware_onion.inject(_clique_blocks, name="clique_blocks", layer=0)
    return w3


def wait_until_available(w3: Web3, timeout: float = 30.0) -> str:
    """Wait (with back-off) until the node answers; return its client version.

    Raises ChainUnavailable with the last failure once `timeout` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            return str(w3.client_version)
        except ChainUnavailable as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChainUnavailable(f"{exc} (gave up after {timeout:g} s)") from exc
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 1.0)


class RPCError(ChainError):
    """The node answered a raw request with a JSON-RPC error."""

    def __init__(self, method: str, code: int | None, message: str) -> None:
        self.method = method
        self.code = code
        self.message = message
        super().__init__(f"{method}: {message}")

    @property
    def not_found(self) -> bool:
        """The node does not offer this method (at least not on this connection)."""
        text = self.message.lower()
        return (
            self.code == METHOD_NOT_FOUND
            or "does not exist" in text
            or "not found" in text
            or "not implemented" in text
            or "unknown rpc" in text
            or "unsupported" in text
        )


def rpc(w3: Web3, method: str, params: list | None = None) -> Any:
    """One raw JSON-RPC call (no web3 formatting); errors become RPCError."""
    response = w3.provider.make_request(RPCEndpoint(method), params or [])
    if "error" in response:
        error = response["error"]
        if isinstance(error, dict):
            raise RPCError(method, error.get("code"), str(error.get("message", error)))
        raise RPCError(method, None, str(error))
    return response.get("result")


def subscription_url(url: str) -> str | None:
    """Where to ask for `eth_subscribe newHeads`: ws(s) as given, http(s) tried as ws(s) on the
    same host and port (anvil serves both there; geth's separate ws port is not guessed)."""
    lower = url.strip().lower()
    if lower.startswith(("ws://", "wss://")):
        return url.strip()
    if lower.startswith(("http://", "https://")):
        return "ws" + url.strip()[4:]
    return None


class HeadFeed:
    """Follows the node's new blocks: `eth_subscribe newHeads` over a WebSocket of its own where
    the node offers it, else a short poll of the block number.

    `run` (a background task) keeps `latest` up to date; `wait(after, ...)` returns as soon as
    a block newer than `after` is known, so a poller wakes on each new head instead of sleeping
    a fixed interval. A dropped subscription falls back to polling and is tried again after
    `retry` seconds; a node that never offered one is asked again less and less often (up to
    once a minute).
    """

    def __init__(self, url: str, block_number: Callable[[], int], *, poll: float = 0.1,
                 retry: float = 5.0, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url
        self.latest = -1
        self.subscribed = False
        self._block_number = block_number
        self._poll = poll
        self._retry = retry
        self._timeout = timeout
        self._ws_url = subscription_url(url)
        self._cond = threading.Condition()

    def _seen(self, number: int) -> None:
        with self._cond:
            if number > self.latest:
                self.latest = number
                self._cond.notify_all()

    def wait(self, after: int, timeout: float, stop: threading.Event | None = None) -> int:
        """Block until a head newer than `after` is known, `timeout` passes or `stop` is set."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.latest <= after and not (stop is not None and stop.is_set()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.25))
            return self.latest

    def run(self, stop: threading.Event) -> None:
        """Follow heads until `stop` is set: subscribed when possible, polling meanwhile."""
        next_try = 0.0
        retry = self._retry
        while not stop.is_set():
            if self._ws_url is not None and time.monotonic() >= next_try:
                try:
                    self._follow(stop)
                except Exception as exc:  # noqa: BLE001 - any failure: poll, try again later
                    if self.subscribed:
                        log.info("new heads: subscription lost (%s); polling meanwhile", exc)
                        retry = self._retry
                    else:  # a node without one (or still away): ask less and less often
                        log.debug("new heads: no subscription at %s (%s); polling",
                                  _redact(self._ws_url), exc)
                        retry = min(retry * 2, 60.0)
                self.subscribed = False
                next_try = time.monotonic() + retry
                if stop.is_set():
                    return
            try:
                self._seen(int(self._block_number()))
            except Exception as exc:  # noqa: BLE001 - the node is away: the pollers see it
                log.debug("new heads: block number unavailable: %s", exc)
            stop.wait(self._poll)

    def _follow(self, stop: threading.Event) -> None:
        """Subscribe to newHeads and read notifications until `stop` or a failure."""
        from websockets.sync.client import connect as ws_connect

        with ws_connect(self._ws_url, open_timeout=self._timeout, close_timeout=1,
                        max_size=None) as conn:
            conn.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                                  "params": ["newHeads"]}))
            reply = json.loads(conn.recv(timeout=self._timeout))
            if "result" not in reply:
                raise ChainError(f"newHeads refused: {reply.get('error')}")
            self.subscribed = True
            log.info("new heads: subscribed at %s", _redact(self._ws_url))
            self._seen(int(self._block_number()))  # what came before the first notification
            while not stop.is_set():
                try:
                    message = json.loads(conn.recv(timeout=0.5))
                except TimeoutError:
                    continue
                head = (message.get("params") or {}).get("result")
                if isinstance(head, dict) and "number" in head:
                    self._seen(int(head["number"], 16))
