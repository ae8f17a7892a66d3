"""What the live benchmarks share: a managed anvil with the contracts, people, a real server.

`BenchWorld` starts the pinned anvil (1 s blocks by default) in a temporary data directory,
deploys the contracts, creates keystore accounts (scrypt N=16: logins cost nothing, so the
figures measure the server, not the KDF), funds them and mints a seller's tokens the real way
(a registered supply meter reports readings). `HeadClock` follows the node's new heads over
WebSocket and stamps each block's arrival in this process. `Server` runs `microgrid serve` as a
child process; `login` and `AsyncPages` log in and open Socket.IO clients the way a page
does (session cookie, same Origin).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import socketio
from eth_account import Account
from eth_account.signers.local import LocalAccount
from websockets.sync.client import connect as ws_connect

from dapp.bridge import SignedReading
from dapp.chain.anvil import ManagedAnvil
from dapp.chain.client import ChainClient
from dapp.chain.deploy import MarketParameters
from dapp.chain.transports import rpc
from dapp.wallet.keystore import Keystore
from hardware.signing import sign_reading

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
ETHER = 10**18
PASSPHRASE = "bench passphrase"
RATED_W = 65_000


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100, nearest rank) of `values`, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: list[float]) -> float | None:
    """The median, None when empty."""
    return statistics.median(values) if values else None


def machine() -> dict[str, Any]:
    """Where the figures were taken: CPU model, cores, Python, date (UTC)."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": sys.version.split()[0],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write bench/results/<name> (sorted, indented JSON) and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class HeadClock:
    """Stamps (time.monotonic) the arrival of each new block, from `eth_subscribe newHeads`."""

    def __init__(self, ws_url: str) -> None:
        self.arrivals: dict[int, float] = {}
        self.timestamps: dict[int, int] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._conn = ws_connect(ws_url, max_size=None)
        self._conn.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                                    "params": ["newHeads"]}))
        reply = json.loads(self._conn.recv(timeout=10))
        if "result" not in reply:
            raise RuntimeError(f"newHeads subscription refused: {reply}")
        self._thread = threading.Thread(target=self._run, name="head-clock", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._conn.recv(timeout=0.5)
            except TimeoutError:
                continue
            except Exception:  # noqa: BLE001 - closed at stop
                return
            now = time.monotonic()
            head = json.loads(message).get("params", {}).get("result")
            if not head:
                continue
            number = int(head["number"], 16)
            with self._cond:
                self.arrivals.setdefault(number, now)
                self.timestamps[number] = int(head["timestamp"], 16)
                self._cond.notify_all()

    def arrival(self, number: int, timeout: float = 10.0) -> float:
        """When block `number` reached the node (waits for it)."""
        with self._cond:
            self._cond.wait_for(lambda: number in self.arrivals, timeout)
            return self.arrivals[number]

    def first_at_or_after(self, chain_time: int, timeout: float = 30.0) -> int:
        """The first block whose timestamp is at least `chain_time` (waits for it)."""
        def found() -> int | None:
            hits = [n for n, ts in self.timestamps.items() if ts >= chain_time]
            return min(hits) if hits else None

        with self._cond:
            self._cond.wait_for(lambda: found() is not None, timeout)
            number = found()
        if number is None:
            raise TimeoutError(f"no block reached chain time {chain_time}")
        return number

    def close(self) -> None:
        """Stop following heads."""
        self._stop.set()
        self._conn.close()
        self._thread.join(2)


class BenchWorld:
    """A managed anvil with the contracts, a keystore of users, a seller with tokens."""

    def __init__(self, *, block_time: float = 1.0, users: int = 1,
                 params: MarketParameters | None = None, tokens_wh: int = 50_000,
                 load_meters: bool = True) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="microgrid-bench-")
        self.root = Path(self._tmp.name)
        self.data_dir = self.root / "server"
        self.block_time = block_time
        self.port = free_port()
        self.anvil = ManagedAnvil(self.root / "node", port=self.port, block_time=block_time,
                                  state_interval=0)
        self.anvil.start()
        self.url = self.anvil.url
        self.ws_url = self.url.replace("http://", "ws://")
        self.client = ChainClient(self.url, self.root / "bench-client")
        self.operator = Account.create()
        self.fund(self.operator.address, 1_000 * ETHER)
        self.deployment = self.client.deploy(
            self.operator, params or MarketParameters(min_duration=2, max_duration=86_400))
        self.keystore = Keystore(self.data_dir / "keystore", scrypt_n=16)
        self.users = [self.keystore.create(PASSPHRASE, label=f"user{i}") for i in range(users)]
        self.seller = Account.create()
        self.bidders = [Account.create(), Account.create()]
        for account in [self.seller, *self.bidders]:
            self.fund(account.address, 1_000 * ETHER)
        self.finalizer = self.keystore.create(PASSPHRASE, label="finalizer")
        self.fund(self.finalizer, 100 * ETHER)
        self.passphrase_file = self.root / "passphrase"
        self.passphrase_file.write_text(PASSPHRASE + "\n", encoding="utf-8")
        if tokens_wh:
            self.mint(self.seller, tokens_wh)
        if load_meters:  # bidding needs an accepted load meter
            for bidder in self.bidders:
                self.give_meter(bidder, Account.create().address, "load")

    def fund(self, address: str, wei: int) -> None:
        """Set an account's Ether (anvil_setBalance)."""
        self.client.fund_dev_account(address, wei)

    def give_meter(self, owner: LocalAccount, meter: str, kind: str,
                   rated_w: int = RATED_W) -> None:
        """The operator offers meter `meter` to `owner`, who accepts it."""
        self.client.wait(self.client.offer_meter(self.operator, meter, owner.address, kind,
                                                 rated_w))
        self.client.wait(self.client.accept_meter(owner, meter))

    def mint(self, owner: LocalAccount, wh: int) -> None:
        """Give `owner` `wh` tokens through the signed readings of a supply meter of theirs."""
        meter = Account.create()
        self.give_meter(owner, meter.address, "supply")
        domain = self.client.reading_domain()

        def report(energy_wh: int, sequence: int) -> None:
            block = self.client.reading_block()
            signature = sign_reading(meter.key, domain, energy_wh, sequence, block)
            signed = SignedReading(meter.address, energy_wh, sequence, block, signature)
            outcome = self.client.reading_outcomes(
                self.client.submit_readings(self.operator, [signed]))
            assert outcome[(meter.address, sequence)].accepted, outcome

        report(1_000, 1)
        hours = -(-wh // RATED_W) + 1
        rpc(self.client._w3, "evm_increaseTime", [hours * 3600])  # noqa: SLF001
        report(1_000 + wh, 2)

    def chain_time(self) -> int:
        """The latest block's timestamp."""
        return self.client.latest_timestamp()

    def close(self) -> None:
        """Stop anvil and remove the temporary directory."""
        self.anvil.stop()
        self._tmp.cleanup()


class Server:
    """`microgrid serve` as a child process over a bench world."""

    def __init__(self, world: BenchWorld, *, finalizer: bool = False,
                 env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "dapp.cli", "--data-dir", str(world.data_dir), "serve",
               "--rpc", world.url, "--port", str(self.port),
               "--market", world.deployment.market]
        if finalizer:
            cmd += ["--finalizer", world.finalizer,
                    "--finalizer-passphrase-file", str(world.passphrase_file)]
        cmd += args or []
        environment = {**os.environ, "PYTHONUNBUFFERED": "1",
                       "MICROGRID_SECRET_KEY": "bench-only-secret",
                       "MICROGRID_LOGIN_LIMIT_PER_ACCOUNT": "100000",
                       "MICROGRID_LOGIN_LIMIT_PER_CLIENT": "100000",
                       **(env or {})}
        self.log_path = world.root / f"serve-{self.port}.log"
        self._log = self.log_path.open("w", encoding="utf-8")
        self.process = subprocess.Popen(cmd, cwd=ROOT, env=environment, stdout=self._log,
                                        stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while "serving on" not in self.log_path.read_text(encoding="utf-8"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("microgrid serve did not start:\n"
                                   + self.log_path.read_text(encoding="utf-8")[-3000:])
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM and wait."""
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def login(server_url: str, address: str) -> str:
    """Log `address` in through the JSON API; the Cookie header of the session."""
    http = requests.Session()
    token = http.get(f"{server_url}/api/v1/session", timeout=30).json()["csrf_token"]
    response = http.post(f"{server_url}/api/v1/session", timeout=30,
                         json={"address": address, "passphrase": PASSPHRASE},
                         headers={"X-CSRF-Token": token})
    response.raise_for_status()
    return "; ".join(f"{c.name}={c.value}" for c in http.cookies)


class AsyncPages:
    """Socket.IO clients on one asyncio event loop in a thread of their own.

    Each receipt is stamped as it is read, without waiting for other clients' threads to get
    the interpreter lock (browsers are processes of their own; a thread per client in one
    Python process measured mostly the clients).
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="pages",
                                        daemon=True)
        self._thread.start()
        self.clients: list[socketio.AsyncClient] = []

    def connect(self, server_url: str,
                pages: list[tuple[str, dict[str, Callable[[Any], None]]]]) -> None:
        """Connect one client per (cookie, handlers), sixteen at a time."""
        async def one(cookie: str, handlers: dict[str, Callable[[Any], None]],
                      gate: asyncio.Semaphore) -> socketio.AsyncClient:
            client = socketio.AsyncClient(reconnection=False)
            for event, handler in handlers.items():
                client.on(event, handler)
            async with gate:
                await client.connect(server_url, transports=["websocket"], wait_timeout=30,
                                     headers={"Cookie": cookie, "Origin": server_url})
            return client

        async def every() -> list[socketio.AsyncClient]:
            gate = asyncio.Semaphore(16)
            return list(await asyncio.gather(*(one(c, h, gate) for c, h in pages)))

        self.clients += asyncio.run_coroutine_threadsafe(every(), self.loop).result(600)

    def close(self) -> None:
        """Disconnect every client and stop the loop."""
        async def every() -> None:
            await asyncio.gather(*(c.disconnect() for c in self.clients),
                                 return_exceptions=True)

        asyncio.run_coroutine_threadsafe(every(), self.loop).result(120)
        self.clients = []
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
