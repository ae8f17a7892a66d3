"""The meter bridge: meters' signed readings to the chain, the chain's trades to their relays.

    bridge = MeterBridge(chain, [BridgeMeter("socket://127.0.0.1:7001")], submitter=account)
    bridge.start()                          # a small pool serves every meter's line
    listener.subscribe(bridge.on_event)     # the process's one EventListener feeds the relays
    bridge.state()                          # live MeterState per meter, for the web app
    bridge.stop()                           # relays commanded open, ports closed

The bridge is a transport. It forwards what each meter signed, or nothing; it cannot make a
meter sign a counter of its choosing, and the registry verifies every signature, so the
household's computer can withhold a reading but never forge or alter one.

* **Lines** (`port.py`): a fixed pool of threads (`workers`) takes each meter's next pass when
  it is due (a READ every `poll_interval`, heartbeats in between for the meter's watchdog), so
  a thousand meters need no thousand threads. A bridge that dies stops feeding the watchdogs
  and every meter opens its relay by itself.
* **Readings** (`rules.py`, `submitter.py`): a sane reading is forwarded once the counter grew
  by `submit_step_wh` and `submit_interval` passed, an unchanged one every `heartbeat_interval`
  (the chain sees a live meter); all that is due goes in one batch from the `submitter` account.
* **Relays** (`trades.py`): closed only while the chain wants it and nothing about the meter is
  wrong: a buyer's load relay while it has a delivering trade it has not asked to close; a
  seller's export relay only while its trade is the one the buyer's readings settle and is not
  stalled. A halted chain (no block for `halt_after` seconds) opens every relay.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable

from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from dapp.bridge.drivers import SignedReading
from dapp.bridge.port import BridgeMeter, MeterPort, MeterState
from dapp.bridge.rules import Cadence
from dapp.bridge.submitter import ReadingSubmitter
from dapp.bridge.trades import TradeBook
from dapp.chain.client import ChainClient
from dapp.chain.listener import ChainEvent
from dapp.chain.transports import HeadFeed
from dapp.errors import ChainError
from hardware.ports import allow_lines
from hardware.signing import BlockRef, Domain, recover_signer

log = logging.getLogger(__name__)

RESYNC_MIN_INTERVAL_S = 2.0  # at most one re-read of the open trades this often on request
# Readings per reportBatch at most: 109 bytes each, so a full batch (~109 KB) stays under the
# 128 KB a geth node takes as one transaction; gas is fitted per batch (ReadingSubmitter).
MAX_BATCH = 1_000
REGISTRY_EVENTS = ("MeterOffered", "MeterAccepted", "MeterDeclined", "MeterDeactivated")


class MeterBridge:
    """Bridges meters on their lines to the chain (readings) and the chain to them (relays)."""

    def __init__(
        self,
        chain: ChainClient,
        meters: Iterable[BridgeMeter],
        *,
        submitter: LocalAccount | None = None,
        poll_interval: float = 1.0,
        submit_interval: float = 10.0,
        submit_step_wh: int = 1,
        heartbeat_interval: float = 60.0,
        read_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[MeterState], None] | None = None,
        retries: int = 2,
        reconnect_backoff: tuple[float, float] = (0.5, 30.0),
        registry_recheck: float = 30.0,
        receipt_timeout: float = 120.0,
        workers: int = 8,
        halt_after: float = 10.0,
        head_interval: float = 0.5,
        batch_interval: float = 0.5,
        max_batch: int = MAX_BATCH,
        heads: HeadFeed | None = None,
    ) -> None:
        meters = list(meters)
        if poll_interval <= 0 or read_timeout <= 0:
            raise ValueError("poll_interval and read_timeout must be positive")
        low, high = reconnect_backoff
        if not 0 < low <= high:
            raise ValueError("reconnect_backoff must be (min, max) with 0 < min <= max")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        urls = [m.url for m in meters]
        addresses = [m.address for m in meters if m.address is not None]
        if len(set(urls)) != len(urls) or len(set(addresses)) != len(addresses):
            raise ValueError("a meter URL or address appears twice")
        self.chain = chain
        self.cadence = Cadence(submit_interval, submit_step_wh, heartbeat_interval)
        self.poll_interval = poll_interval
        self.read_timeout = read_timeout
        self.retries = retries
        self.reconnect_backoff = (low, high)
        self.registry_recheck = registry_recheck
        self.clock = clock
        self.on_change = on_change
        self.head_interval = head_interval
        self.heads = heads  # the process's new-heads feed: chain time read on each block
        self.trades = TradeBook(chain, owners=self._owners, on_change=self._relays_changed,
                                halt_after=halt_after, clock=clock)
        self.ports = [MeterPort(self, m) for m in meters]
        self.submitter = ReadingSubmitter(chain, submitter, lambda: self.ports, clock=clock,
                                          interval=batch_interval, max_batch=max_batch,
                                          receipt_timeout=receipt_timeout,
                                          backoff=reconnect_backoff)
        self._pool = _Pool(self.ports, min(workers, max(1, len(self.ports))), clock)
        self._domain: tuple[int, str] | None = None
        self._signing: Domain | None = None  # self._domain as an EIP-712 domain (separator once)
        self._head: BlockRef | None = None  # the newest block known: what every READ signs
        self._head_lock = threading.Lock()
        self._stopping = threading.Event()
        self._resync_wanted = threading.Event()
        self._sync_thread: threading.Thread | None = None
        self._head_thread: threading.Thread | None = None
        self._listener_stop = threading.Event()
        self._listener_thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Read the open trades from the chain, then start serving the lines and forwarding."""
        if self._started:
            return
        self._started = True
        self._stopping.clear()
        if not allow_lines([port.url for port in self.ports]):
            log.warning("bridge: the open files limit (ulimit -n) is too low for %d meter "
                        "lines; raise its hard limit, or some ports will not open",
                        len(self.ports))
        try:
            number, timestamp, block_hash = self.chain.head_block()
            self.note_head(BlockRef(number, block_hash))
            self.trades.on_head(number, timestamp)
            self.trades.resync()
        except ChainError as exc:
            # Relays stay open until the chain answers; the sync thread keeps trying.
            log.warning("bridge: cannot read the open trades yet (%s); relays stay open", exc)
            self._resync_wanted.set()
        self._sync_thread = threading.Thread(target=self._sync_loop, name="bridge-sync",
                                             daemon=True)
        self._sync_thread.start()
        self._head_thread = threading.Thread(target=self._head_loop, name="bridge-head",
                                             daemon=True)
        self._head_thread.start()
        self._pool.start()
        self.submitter.start()

    def stop(self, *, open_relays: bool = True, timeout: float = 10.0) -> None:
        """Stop every thread and close the ports.

        With `open_relays` (the default) each meter that still answers is told to open its
        relay first; `open_relays=False` leaves them as a crash would (the meters' watchdogs
        open them unless another bridge takes over in time).
        """
        self.stop_listener()
        self._stopping.set()
        self._resync_wanted.set()
        self.submitter.stop(timeout)
        self._pool.stop(timeout)
        _parallel([lambda p=p: p.shutdown(open_relays) for p in self.ports],
                  self._pool.size, timeout)
        for thread in (self._sync_thread, self._head_thread):
            if thread is not None:
                thread.join(timeout)
        self._sync_thread = self._head_thread = None
        self._started = False

    def start_listener(self, interval: float = 1.0) -> None:
        """Standalone use: subscribe to the chain client's own listener and run it in a thread.

        A process that already runs an EventListener (the web server) subscribes `on_event` to
        it instead and never calls this.
        """
        if self._listener_thread is not None:
            return
        _ = self.chain.deployment  # the listener needs the deployment resolved first
        listener = self.chain.listener
        self._unsubscribe = listener.subscribe(self.on_event)
        self._listener_stop.clear()
        self._listener_thread = threading.Thread(
            target=listener.run, args=(self._listener_stop, interval), name="bridge-listener",
            daemon=True)
        self._listener_thread.start()

    def stop_listener(self) -> None:
        """Stop the listener thread started by `start_listener` (if any)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._listener_thread is not None:
            self._listener_stop.set()
            self._listener_thread.join(timeout=10)
            self._listener_thread = None

    def run(self, stop: threading.Event, listener_interval: float = 1.0) -> None:
        """Standalone: start with an own listener, block until `stop` is set, then stop."""
        self.start()
        try:
            self.start_listener(listener_interval)
            stop.wait()
        finally:
            self.stop()

    def __enter__(self) -> MeterBridge:
        """Start on entry."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop (relays open) on exit."""
        self.stop()

    # ------------------------------------------------------------------ live state

    def state(self) -> list[MeterState]:
        """The live state of every meter, in the order they were given."""
        return [port.snapshot() for port in self.ports]

    def meter_state(self, address: str) -> MeterState:
        """The live state of one meter, by its address (KeyError if it is not one of ours)."""
        address = to_checksum_address(address)
        for port in self.ports:
            if port.address == address:
                return port.snapshot()
        raise KeyError(address)

    def changed(self, state: MeterState) -> None:
        """A port's visible state changed: tell `on_change`."""
        if self.on_change is None:
            return
        try:
            self.on_change(state)
        except Exception:
            log.exception("bridge: on_change callback failed")

    # ------------------------------------------------------------------ chain

    def domain(self) -> tuple[int, str]:
        """(chain id, registry address): what this chain's meters must sign for."""
        if self._domain is None:
            self._signing = Domain(self.chain.chain_id, self.chain.deployment.registry)
            self._domain = (self._signing.chain_id, self._signing.registry)
        return self._domain

    def note_head(self, block: BlockRef) -> None:
        """Remember `block` as the chain's newest: every READ from now on signs it."""
        with self._head_lock:
            if self._head is None or block.number >= self._head.number:
                self._head = block

    def read_block(self) -> BlockRef | None:
        """The newest block this bridge knows, for a READ to sign (asked of the chain if none
        yet; None while the chain cannot say: a reading of an old block would be refused)."""
        with self._head_lock:
            head = self._head
        if head is None:
            try:
                head = self.chain.reading_block()
            except ChainError:
                return None
            self.note_head(head)
        return head

    def signed_by(self, signed: SignedReading, address: str | None) -> bool:
        """Whether `signed` carries `address`'s own signature for this chain's registry."""
        if address is None or signed.meter != address:
            return False
        try:
            self.domain()
        except ChainError:
            return True  # cannot tell now; the registry checks it anyway
        assert self._signing is not None
        try:
            signer = recover_signer(self._signing, signed.meter, signed.energy_wh,
                                    signed.sequence, signed.block, signed.signature)
        except Exception:  # a malformed signature is simply not the meter's
            return False
        return signer == address

    def on_event(self, event: ChainEvent) -> None:
        """Handle one contract event (subscribe this to the process's EventListener).

        Idempotent and order-proof: a trade event makes the bridge re-read that trade from the
        chain, so an event delivered twice or late cannot set a relay against the chain.
        """
        try:
            if event.name in REGISTRY_EVENTS:
                meter = to_checksum_address(event.args["meter"])
                for port in self.ports:
                    if port.address == meter:
                        port.recheck_registry()
                        self._pool.wake(port)
                return
            for owner in self.trades.concerns(event, self._owners()):
                self.trades.refresh(owner)
        except ChainError as exc:
            log.warning("bridge: cannot read trade state for %s (%s); full re-sync queued",
                        event.name, exc)
            self._resync_wanted.set()

    def resync(self) -> None:
        """Re-read every open trade from the chain and re-apply the relays (ChainError if down)."""
        self.trades.resync()

    def request_resync(self) -> None:
        """Ask the sync thread to re-read the open trades soon (e.g. after a reconnect)."""
        self._resync_wanted.set()

    def _owners(self) -> set[str]:
        return {owner for p in self.ports if (owner := p.owner) is not None}

    def _relays_changed(self) -> None:
        for port in self.ports:
            self._pool.wake(port)

    def _head_loop(self) -> None:
        """Read the chain's head every `head_interval`: chain time for the stall rule, and a
        halted chain (no new block for `halt_after` seconds, or no node) opens every relay."""
        was_halted = False
        last = -1
        while True:
            if self.heads is not None:  # at the block's arrival, or after head_interval
                self.heads.wait(last, self.head_interval, self._stopping)
                if self._stopping.is_set():
                    return
            elif self._stopping.wait(self.head_interval):
                return
            try:
                number, timestamp, block_hash = self.chain.head_block()
            except ChainError:
                # No node is a halted chain too: the book says so after `halt_after`.
                if self.heads is not None and self._stopping.wait(self.head_interval):
                    return
            else:
                last = number
                self.note_head(BlockRef(number, block_hash))
                self.trades.on_head(number, timestamp)
            halted = self.trades.halted()
            if halted and not was_halted:
                log.warning("bridge: no new block for %.0f s; every relay opens until blocks "
                            "return", self.trades.halt_after)
                self._relays_changed()
            was_halted = halted

    def _sync_loop(self) -> None:
        """Run requested re-syncs; retry with back-off while the chain is unreachable."""
        delay = self.reconnect_backoff[0]
        while not self._stopping.is_set():
            self._resync_wanted.wait()
            if self._stopping.is_set():
                return
            self._resync_wanted.clear()
            try:
                self.trades.resync()
                delay = self.reconnect_backoff[0]
                # Coalesce requests: a meter flapping on and off must not flood the node.
                self._stopping.wait(RESYNC_MIN_INTERVAL_S)
            except ChainError as exc:
                log.warning("bridge: re-sync failed (%s); retrying in %.1f s", exc, delay)
                self._resync_wanted.set()
                self._stopping.wait(delay)
                delay = min(delay * 2, self.reconnect_backoff[1])
            except Exception:
                log.exception("bridge: re-sync failed")
                self._stopping.wait(delay)


class _Pool:
    """A fixed set of threads running each port's `step` when it is due (never two at once)."""

    def __init__(self, ports: list[MeterPort], size: int, clock: Callable[[], float]) -> None:
        self.ports = ports
        self.size = size
        self.clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, MeterPort]] = []
        self._due: dict[int, float] = {}  # id(port) -> the due time of its live heap entry
        self._running: set[int] = set()
        self._rerun: set[int] = set()  # woken while running: step again right after
        self._order = itertools.count()
        self._stop = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Schedule every port now and start the threads."""
        with self._cond:
            self._stop = False
            now = self.clock()
            for port in self.ports:
                self._push(port, now)
        self._threads = [threading.Thread(target=self._run, name=f"bridge-line-{i}", daemon=True)
                         for i in range(self.size)]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float) -> None:
        """Let running passes finish; start no new ones."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        self._threads = []
        with self._cond:
            self._heap.clear()
            self._due.clear()

    def wake(self, port: MeterPort) -> None:
        """Run `port`'s next pass now."""
        with self._cond:
            if self._stop:
                return
            if id(port) in self._running:
                self._rerun.add(id(port))
            else:
                self._push(port, self.clock())
            self._cond.notify()

    def _push(self, port: MeterPort, due: float) -> None:
        current = self._due.get(id(port))
        if current is not None and current <= due:
            return
        self._due[id(port)] = due
        heapq.heappush(self._heap, (due, next(self._order), port))

    def _run(self) -> None:
        while True:
            with self._cond:
                port = None
                while port is None:
                    if self._stop:
                        return
                    if not self._heap:
                        self._cond.wait()
                        continue
                    due, _, candidate = self._heap[0]
                    if self._due.get(id(candidate)) != due:
                        heapq.heappop(self._heap)  # superseded by an earlier entry
                        continue
                    wait = due - self.clock()
                    if wait > 0:
                        self._cond.wait(min(wait, 1.0))
                        continue
                    heapq.heappop(self._heap)
                    del self._due[id(candidate)]
                    self._running.add(id(candidate))
                    port = candidate
            try:
                next_due = port.step()
            except Exception:  # step() catches its own; this is the last line of defence
                log.exception("bridge: a pass over %s failed", port.url)
                next_due = self.clock() + 1.0
            with self._cond:
                self._running.discard(id(port))
                if id(port) in self._rerun:
                    self._rerun.discard(id(port))
                    next_due = self.clock()
                if not self._stop:
                    self._push(port, next_due)
                    self._cond.notify()


def _parallel(jobs: list[Callable[[], None]], size: int, timeout: float) -> None:
    """Run `jobs` on at most `size` threads; wait up to `timeout` for all of them."""
    pending = list(jobs)
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not pending:
                    return
                job = pending.pop()
            try:
                job()
            except Exception:
                log.exception("bridge: stopping a meter failed")

    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, size))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
