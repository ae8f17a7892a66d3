"""Node adapter: connect to any Ethereum JSON-RPC node, detect it, and start/stop its mining.

`connect(url)` picks the transport from the URL (http(s)://, ws(s)://, an IPC path, or
``inprocess://`` for the eth-tester chain). Every transport raises `ChainUnavailable` when the
node cannot be reached, never a raw socket or requests exception, and no call waits longer than
the connection's timeout. `detect(w3)` names the client and what it can do; `MiningControl`
maps "start/stop mining" onto what that client offers (anvil/hardhat interval mining, the geth
miner API, the in-process block timer) and says plainly when it offers nothing.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from eth_utils import to_bytes
from hexbytes import HexBytes
from web3 import HTTPProvider, Web3
from web3.middleware import FormattingMiddlewareBuilder
from web3.providers import JSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from dapp.errors import ChainError, ChainUnavailable

DEFAULT_TIMEOUT = 10.0
INPROCESS_SCHEME = "inprocess://"

# JSON-RPC "method not found"; geth says "the method X does not exist/is not available".
METHOD_NOT_FOUND = -32601


# --------------------------------------------------------------------------- transports


def _describe(exc: BaseException, timeout: float) -> str:
    """A short, human reason for a transport failure (requests' messages are paragraphs)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text:
        return "connection refused (is the node running?)"
    if any(isinstance(e, FileNotFoundError) for e in chain):
        return "no IPC socket there (is the node running?)"
    if any(isinstance(e, TimeoutError) for e in chain) or "timed out" in text.lower():
        return f"no answer within {timeout:g} s"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host name"
    first = str(exc) or type(exc).__name__
    return first if len(first) <= 200 else first[:197] + "..."


def _unavailable(where: str, exc: BaseException, timeout: float) -> ChainUnavailable:
    """The project's error for a node that cannot be reached."""
    return ChainUnavailable(f"chain unavailable: {where}: {_describe(exc, timeout)}")


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

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        """Send one JSON-RPC request; a node that is down raises ChainUnavailable."""
        try:
            return super().make_request(method, params)
        except OSError as exc:  # requests' exceptions are OSErrors too
            raise _unavailable(self.where, exc, self.timeout) from exc

    def make_batch_request(self, batch_requests: list[tuple[RPCEndpoint, Any]]) -> Any:
        """Send a batch; a node that is down raises ChainUnavailable."""
        try:
            return super().make_batch_request(batch_requests)
        except OSError as exc:
            raise _unavailable(self.where, exc, self.timeout) from exc

    def is_connected(self, show_traceback: bool = False) -> bool:
        """True if the node answers web3_clientVersion."""
        return _answers(self, show_traceback)


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

    def _open(self) -> Any:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _exchange(self, conn: Any, request: bytes, request_id: Any) -> RPCResponse:
        raise NotImplementedError

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        """Send one request over the persistent connection, reconnecting once if it went stale."""
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
                    raise _unavailable(self.where, exc, self.timeout) from exc
            try:
                return self._attempt(request, request_id)
            except self._errors as exc:
                self._close()
                raise _unavailable(self.where, exc, self.timeout) from exc

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


def connect(url: str, timeout: float = DEFAULT_TIMEOUT) -> Web3:
    """A Web3 for the node at `url`: http(s)://, ws(s)://, an IPC path, or inprocess://[name].

    Nothing is sent yet: a node that is down makes the first call raise ChainUnavailable
    (after at most `timeout` seconds). Use `wait_until_available` to wait for a node.
    ``inprocess://`` (optionally ``inprocess://NAME``) returns the process-wide in-process
    chain of that name, created on first use with its block timer running.
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


def is_available(w3: Web3) -> bool:
    """True if the node answers right now."""
    try:
        w3.client_version  # noqa: B018 - the request is the point
    except ChainUnavailable:
        return False
    return True


# --------------------------------------------------------------------------- detection


class _RPCError(ChainError):
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


def _raw(w3: Web3, method: str, params: list | None = None) -> Any:
    """One raw JSON-RPC call (no web3 formatting); errors become _RPCError."""
    response = w3.provider.make_request(RPCEndpoint(method), params or [])
    if "error" in response:
        error = response["error"]
        if isinstance(error, dict):
            raise _RPCError(method, error.get("code"), str(error.get("message", error)))
        raise _RPCError(method, None, str(error))
    return response.get("result")


@dataclass(frozen=True)
class Capabilities:
    """What the node lets this app do.

    mining: "interval" (anvil/hardhat interval mining), "miner" (geth miner_start/stop),
    "timer" (the in-process chain's block timer) or None, with `mining_reason` saying why.
    """

    mining: str | None
    mining_reason: str
    has_txpool: bool
    supports_eip1559: bool


@dataclass(frozen=True)
class NodeInfo:
    """Who the node is: client name, version, chain id and capabilities.

    client is "anvil", "hardhat", "geth", "eth-tester", or the lower-cased name another
    client reports (e.g. "besu"); `client_version` is web3_clientVersion verbatim.
    """

    client: str
    version: str
    chain_id: int
    capabilities: Capabilities
    client_version: str


_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)")


def parse_client_version(client_version: str) -> tuple[str, str]:
    """(client, version): ("geth", "1.13.15-stable") from "Geth/v1.13.15-stable/linux-amd64"."""
    parts = [p for p in client_version.strip().split("/") if p]
    if not parts:
        return "unknown", ""
    name = parts[0].lower()
    if name == "geth":
        client = "geth"
    elif name.startswith("anvil"):
        client = "anvil"
    elif "hardhat" in name:
        client = "hardhat"
    elif name.startswith("ethereumtester"):
        client = "eth-tester"
    else:
        client = name
    # geth --identity inserts a segment (Geth/NAME/v1.13.15-...): take the first version-like one.
    fallback = parts[1] if len(parts) > 1 else ""
    version = next((p for p in parts[1:] if _VERSION_RE.match(p)), fallback)
    return client, version[1:] if version.startswith("v") else version


def _version_tuple(version: str) -> tuple[int, int]:
    """(major, minor) of a version string, (0, 0) if it has none."""
    match = _VERSION_RE.match(version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _in_process_chain(w3: Web3) -> Any:
    """The InProcessChain behind `w3`, or None."""
    return getattr(w3.provider, "chain", None)


def _probe(w3: Web3, method: str, params: list | None = None) -> bool:
    """True if the node offers `method` (answers without "method not found")."""
    try:
        _raw(w3, method, params)
    except _RPCError as exc:
        return not exc.not_found
    return True


def _geth_mining(w3: Web3, version: str, latest: dict) -> tuple[str | None, str]:
    """Whether this geth can be told to start/stop mining, and if not, why."""
    if int(latest.get("difficulty") or 0) == 0:
        return None, (
            f"geth {version} runs a proof-of-stake chain (geth --dev since v1.13, or any "
            "merged network): blocks come from the consensus client or the dev-mode "
            "simulator, so this app cannot start or stop mining"
        )
    try:
        modules = _raw(w3, "rpc_modules")
    except _RPCError as exc:
        return None, f"geth did not list its APIs (rpc_modules: {exc.message})"
    if not isinstance(modules, dict) or "miner" not in modules:
        return None, (
            "geth does not offer the miner API on this connection: start it with "
            "--http.api eth,net,web3,txpool,miner (or --ws.api ...), or connect over IPC"
        )
    return "miner", ""


def detect(w3: Web3) -> NodeInfo:
    """Ask the node who it is (web3_clientVersion) and probe what it can do."""
    client_version = str(w3.client_version)
    client, version = parse_client_version(client_version)
    chain_id = int(w3.eth.chain_id)
    latest = dict(w3.eth.get_block("latest"))
    supports_eip1559 = latest.get("baseFeePerGas") is not None
    has_txpool = _probe(w3, "txpool_content")
    mining: str | None = None
    reason = ""
    if client in ("anvil", "hardhat"):
        mining = "interval"
    elif client == "eth-tester":
        if _in_process_chain(w3) is not None:
            mining = "timer"
        else:
            reason = (
                "this eth-tester chain has no block timer (it mines each transaction at "
                "once); use the in-process chain (inprocess://) for start/stop mining"
            )
    elif client == "geth":
        mining, reason = _geth_mining(w3, version, latest)
    elif client == "microgridgateway":
        reason = "the chain is shared through a gateway: mining is set on the node's machine"
    else:
        reason = f"{client} {version}: this app knows no way to start or stop its mining"
    return NodeInfo(
        client=client,
        version=version,
        chain_id=chain_id,
        capabilities=Capabilities(mining, reason, has_txpool, supports_eip1559),
        client_version=client_version,
    )


# --------------------------------------------------------------------------- mining


@dataclass(frozen=True)
class MiningStatus:
    """Whether blocks are being made, whether this app can change that, and a plain detail.

    block_time is the interval in seconds where the node reports one (None otherwise).
    """

    mining: bool
    available: bool
    detail: str
    block_time: float | None = None


STOPPED_DETAIL = "stopped: new transactions stay pending until mining starts"


class MiningControl:
    """Start/stop mining on whatever node `w3` talks to; status is read back from the node."""

    def __init__(self, w3: Web3, info: NodeInfo | None = None) -> None:
        self.w3 = w3
        self.info = info or detect(w3)
        self._kind = self.info.capabilities.mining
        self._reason = self.info.capabilities.mining_reason
        # hardhat cannot report its interval; remember what we set (None: unknown).
        self._hardhat_interval: float | None = None

    @property
    def available(self) -> bool:
        """True if this node's mining can be started and stopped from here."""
        return self._kind is not None

    def _require(self) -> str:
        if self._kind is None:
            raise ChainError(f"mining cannot be controlled: {self._reason}")
        return self._kind

    def _lost(self, exc: _RPCError) -> ChainError:
        """The node turned out not to offer the method: stop offering the control."""
        self._kind = None
        self._reason = (
            f"{self.info.client} {self.info.version} does not offer {exc.method} on this "
            f"connection ({exc.message})"
        )
        if self.info.client == "geth":
            self._reason += (
                "; geth v1.14 and later removed miner_start/miner_stop, older versions "
                "need 'miner' in --http.api"
            )
        return ChainError(f"mining cannot be controlled: {self._reason}")

    def _call(self, method: str, params: list | None = None) -> Any:
        try:
            return _raw(self.w3, method, params)
        except _RPCError as exc:
            if exc.not_found:
                raise self._lost(exc) from exc
            raise

    def start_mining(self, block_time: float = 1.0) -> MiningStatus:
        """Make blocks every `block_time` seconds (where the node lets us choose); new status."""
        if block_time <= 0:
            raise ValueError("block_time must be positive")
        kind = self._require()
        if kind == "interval":
            self._call("evm_setAutomine", [False])
            if self.info.client == "hardhat":
                # hardhat takes milliseconds, anvil whole seconds.
                self._call("evm_setIntervalMining", [max(1, round(block_time * 1000))])
                self._hardhat_interval = block_time
            else:
                self._call("evm_setIntervalMining", [max(1, round(block_time))])
        elif kind == "timer":
            _in_process_chain(self.w3).start_mining(block_time)
        else:  # geth: the block time is the chain's (clique period); no thread count since v1.12
            self._call("miner_start", [])
        return self.mining_status()

    def stop_mining(self) -> MiningStatus:
        """Stop making blocks: sent transactions stay pending. Returns the new status."""
        kind = self._require()
        if kind == "interval":
            self._call("evm_setAutomine", [False])
            self._call("evm_setIntervalMining", [0])
            if self.info.client == "hardhat":
                self._hardhat_interval = 0
        elif kind == "timer":
            _in_process_chain(self.w3).stop_mining()
        else:
            self._call("miner_stop", [])
        return self.mining_status()

    def mining_status(self) -> MiningStatus:
        """The node's current mining state (read from the node where it can tell)."""
        if self._kind is None:
            return MiningStatus(False, False, f"mining cannot be controlled: {self._reason}")
        if self._kind == "interval":
            return self._interval_status()
        if self._kind == "timer":
            chain = _in_process_chain(self.w3)
            if chain.mining:
                return MiningStatus(
                    True, True, f"a block every {chain.block_time:g} s", chain.block_time
                )
            return MiningStatus(False, True, STOPPED_DETAIL)
        if self._call("eth_mining"):
            return MiningStatus(True, True, "geth is sealing blocks at the chain's block period")
        return MiningStatus(False, True, STOPPED_DETAIL)

    def _interval_status(self) -> MiningStatus:
        if self.info.client == "anvil":
            automine = bool(self._call("anvil_getAutomine"))
            interval = self._call("anvil_getIntervalMining")
        else:
            automine = bool(self._call("hardhat_getAutomine"))
            interval = self._hardhat_interval
        if automine:
            return MiningStatus(True, True, "automine: each transaction is mined at once")
        if interval:
            detail = f"a block every {float(interval):g} s"
            if self.info.client == "hardhat":
                detail += " (as last set here: hardhat does not report its interval)"
            return MiningStatus(True, True, detail, float(interval))
        if interval is None and self.info.client == "hardhat":
            return MiningStatus(
                False, True, "automine is off; hardhat does not report interval mining"
            )
        return MiningStatus(False, True, STOPPED_DETAIL)
