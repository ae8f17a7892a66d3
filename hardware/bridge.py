"""The serial bridge: polls meters, submits their readings to the chain, drives their relays.

    bridge = MeterBridge(chain, [BridgeMeter("socket://127.0.0.1:7001", device_key)])
    bridge.start()                          # threads: one poller and one submitter per meter
    listener.subscribe(bridge.on_event)     # the process's one EventListener feeds the relays
    ...
    bridge.state()                          # live MeterState per meter, for the web app
    bridge.stop()                           # relays commanded open, ports closed

Standalone (`microgrid bridge`), `bridge.start_listener()` runs the chain client's own listener.

Policy (see /work/notes/bridge-readme.md for the long form):

* **Relays.** A supply meter's relay is closed while its owner is the *seller* of an open trade;
  a load meter's relay is closed while its owner is the *buyer* of an open trade. Everything else
  is open: unknown chain state, an unregistered, deactivated or mismatched meter, a line that
  does not answer or answers garbage, a sensor fault, an absurd counter. The open trades are read
  from the chain at start (`ChainClient.lots({OPEN})`) and on every reconnect of a meter, and kept
  up to date from `TradeOpened`/`ConnectionClosed` events by re-reading the trade concerned, so
  replayed or out-of-order events cannot leave a relay in a state the chain does not have.
* **Watchdog.** Every poll is a READ, which feeds the meter's watchdog; if polls are further
  apart than a third of the watchdog time, heartbeats fill the gaps. A bridge that dies or hangs
  stops feeding it and the meter opens its relay by itself.
* **Readings.** Each meter sends from its own device key, one transaction in flight at a time,
  at most every `submit_interval` seconds and only once the counter has grown by
  `submit_step_wh` since the last one sent (the first reading, the registry's baseline, goes at
  once). No counter is ever sent twice, nor one at or below a counter sent or accepted before: a
  reverted reading is logged and its counter is skipped. The counter sent is capped at what the
  registry's rating allows for the time since the last accepted reading, so a full-power meter
  is not refused as implausible (the rest follows with the next reading).
* **Counters.** A counter below the last good one is logged and never sent; the bridge waits
  until the meter passes the highest counter sent or accepted. Up to REBOOT_LOSS_WH back is the
  normal loss of a meter reboot; more is treated as a fault (relay held open) until the counter
  passes that value again. A counter that runs ahead faster than the meter's rating allows is
  discarded (relay held open) until the jump becomes physically possible.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from dapp.chain.client import ChainClient, LotStatus, Meter
from dapp.chain.listener import ChainEvent
from dapp.errors import ChainError, ChainUnavailable, ContractReverted, MeterError
from hardware.driver import (
    Identity,
    MeterClient,
    MeterDisconnected,
    MeterProtocolError,
    MeterRefused,
    MeterTimeout,
    Reading,
)
from hardware.protocol import KINDS, SUPPLY

__all__ = ["BridgeMeter", "MeterBridge", "MeterState", "parse_meter_spec"]

log = logging.getLogger(__name__)

# PROTOCOL.md: the firmware saves its counter every 10 Wh, so a reboot may lose up to that much.
REBOOT_LOSS_WH = 10
# A counter may run ahead of rated power x time by this factor (+ ABSURD_SLACK_WH for the
# truncation of whole Wh) before the bridge calls it absurd: timing jitter, not physics.
ABSURD_FACTOR = 1.5
ABSURD_SLACK_WH = 2
RESYNC_MIN_INTERVAL_S = 2.0  # at most one re-read of the open trades this often on request
RECEIPT_POLL_S = 2.0  # a submitter waits for a receipt in slices this long, to notice stop()


@dataclass(frozen=True)
class BridgeMeter:
    """One meter of the bridge: its port, its device key, and what the registry says about it.

    `url` is a pyserial URL or device path (`/dev/ttyUSB0`, `socket://127.0.0.1:7001`, a pty
    path). `account` is the meter's device key (it signs the meter's readings). `owner` and
    `kind` are what the registry holds; None means "take them from the registry at start".
    """

    url: str
    account: LocalAccount
    owner: str | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {self.kind!r}")
        if self.owner is not None:
            object.__setattr__(self, "owner", to_checksum_address(self.owner))

    @property
    def address(self) -> str:
        """The meter's device address (checksummed)."""
        return to_checksum_address(self.account.address)


@dataclass(frozen=True)
class MeterState:
    """A meter as the web app shows it.

    `status` is "connecting" (not answered yet), "online", "offline" (the line is dead or
    garbled) or "faulty" (answers, but must not be used: see `last_error`). `relay_closed` is
    what the meter last reported (None: unknown); `relay_wanted` what the chain asks for.
    """

    address: str
    url: str
    meter_id: str | None = None
    owner: str | None = None
    kind: str | None = None
    online: bool = False
    status: str = "connecting"
    power_w: float | None = None
    energy_wh: int | None = None
    voltage_v: float | None = None
    relay_closed: bool | None = None
    relay_wanted: bool = False
    last_submitted_wh: int | None = None
    last_accepted_wh: int | None = None
    last_error: str | None = None
    updated_at: float = field(default_factory=time.time)


def parse_meter_spec(spec: str) -> tuple[str, str]:
    """Split `URL:ADDRESS` (the URL may contain colons) into (url, checksummed address)."""
    url, sep, address = spec.strip().rpartition(":")
    if not sep or not url:
        raise ValueError(f"expected URL:ADDRESS, got {spec!r}")
    try:
        return url, to_checksum_address(address)
    except ValueError:
        raise ValueError(f"{spec!r}: {address!r} is not a meter address") from None


class MeterBridge:
    """Bridges meters on serial lines to the chain (readings) and the chain to them (relays)."""

    def __init__(
        self,
        chain: ChainClient,
        meters: Iterable[BridgeMeter],
        *,
        poll_interval: float = 1.0,
        submit_interval: float = 10.0,
        submit_step_wh: int = 1,
        read_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[MeterState], None] | None = None,
        retries: int = 2,
        reconnect_backoff: tuple[float, float] = (0.5, 30.0),
        registry_recheck: float = 30.0,
        receipt_timeout: float = 120.0,
        scan_lots: int = 1000,
    ) -> None:
        meters = list(meters)
        if poll_interval <= 0 or read_timeout <= 0:
            raise ValueError("poll_interval and read_timeout must be positive")
        if submit_interval < 0 or submit_step_wh < 1:
            raise ValueError("submit_interval must be >= 0 and submit_step_wh >= 1")
        low, high = reconnect_backoff
        if not 0 < low <= high:
            raise ValueError("reconnect_backoff must be (min, max) with 0 < min <= max")
        addresses = [m.address for m in meters]
        if len(set(addresses)) != len(addresses):
            raise ValueError("a meter address appears twice")
        self.chain = chain
        self.poll_interval = poll_interval
        self.submit_interval = submit_interval
        self.submit_step_wh = submit_step_wh
        self.read_timeout = read_timeout
        self.retries = retries
        self.reconnect_backoff = (low, high)
        self.registry_recheck = registry_recheck
        self.receipt_timeout = receipt_timeout
        self.scan_lots = scan_lots
        self.clock = clock
        self.on_change = on_change
        self._workers = [_MeterWorker(self, m) for m in meters]
        self._by_address = {w.address: w for w in self._workers}
        self._lock = threading.RLock()  # guards _open_trades and _trades_known
        self._sync_lock = threading.Lock()  # one chain read of trades at a time (see _refresh)
        self._open_trades: dict[int, tuple[str, str]] = {}  # trade id -> (seller, buyer)
        self._trades_known = False
        self._stopping = threading.Event()
        self._resync_wanted = threading.Event()
        self._sync_thread: threading.Thread | None = None
        self._listener_stop = threading.Event()
        self._listener_thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Read the open trades from the chain, then start polling and submitting."""
        if self._started:
            return
        self._started = True
        self._stopping.clear()
        try:
            self.resync()
        except ChainError as exc:
            # Relays stay open until the chain answers; the sync thread keeps trying.
            log.warning("bridge: cannot read the open trades yet (%s); relays stay open", exc)
            self._resync_wanted.set()
        self._sync_thread = threading.Thread(target=self._sync_loop, name="bridge-sync",
                                             daemon=True)
        self._sync_thread.start()
        for worker in self._workers:
            worker.start()

    def stop(self, *, open_relays: bool = True, timeout: float = 10.0) -> None:
        """Stop every thread and close the ports.

        With `open_relays` (the default) each meter that still answers is told to open its
        relay first. `open_relays=False` leaves the relays as they are, as a crash would (the
        meters' watchdogs open them unless another bridge takes over in time).
        """
        self.stop_listener()
        self._stopping.set()
        self._resync_wanted.set()
        for worker in self._workers:
            worker.request_stop(open_relays)
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.1, deadline - time.monotonic()))
        if self._sync_thread is not None:
            self._sync_thread.join(max(0.1, deadline - time.monotonic()))
            self._sync_thread = None
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
        return [worker.snapshot() for worker in self._workers]

    def meter_state(self, address: str) -> MeterState:
        """The live state of one meter (KeyError if it is not one of ours)."""
        return self._by_address[to_checksum_address(address)].snapshot()

    # ------------------------------------------------------------------ chain -> relays

    def on_event(self, event: ChainEvent) -> None:
        """Handle one contract event (subscribe this to the process's EventListener).

        Idempotent and order-proof: a trade event makes the bridge re-read that trade from the
        chain, so an event delivered twice or late cannot set a relay against the chain.
        """
        name, args = event.name, event.args
        try:
            if name == "TradeOpened":
                parties = {to_checksum_address(args["seller"]), to_checksum_address(args["buyer"])}
                if parties & self._owners():
                    self._refresh(int(args["tradeId"]))
            elif name == "ConnectionClosed":
                trade_id = int(args["tradeId"])
                with self._lock:
                    ours = trade_id in self._open_trades
                if ours:
                    self._refresh(trade_id)
            elif name in ("MeterRegistered", "MeterDeactivated"):
                worker = self._by_address.get(to_checksum_address(args["meter"]))
                if worker is not None:
                    worker.recheck_registry()
        except ChainError as exc:
            log.warning("bridge: cannot read trade state for %s (%s); full re-sync queued",
                        name, exc)
            self._resync_wanted.set()

    def resync(self) -> None:
        """Re-read every open trade from the chain and re-apply the relays (ChainError if down)."""
        with self._sync_lock:
            lots = self.chain.lots({LotStatus.OPEN}, last=self.scan_lots)
            trades = {lot.id: (to_checksum_address(lot.seller), to_checksum_address(lot.buyer))
                      for lot in lots if lot.buyer is not None}
            with self._lock:
                self._open_trades = trades
                self._trades_known = True
        log.info("bridge: %d open trade(s) on chain", len(trades))
        self._relays_changed()

    def request_resync(self) -> None:
        """Ask the sync thread to re-read the open trades soon (e.g. after a reconnect)."""
        self._resync_wanted.set()

    def relay_wanted(self, kind: str | None, owner: str | None) -> bool:
        """Whether the chain wants the relay of a `kind` meter of `owner` closed."""
        if kind is None or owner is None:
            return False
        role = 0 if kind == SUPPLY else 1  # seller's supply side, buyer's load side
        with self._lock:
            if not self._trades_known:
                return False
            return any(parties[role] == owner for parties in self._open_trades.values())

    def _refresh(self, trade_id: int) -> None:
        """Re-read one trade and record whether it is open."""
        with self._sync_lock:
            lot = self.chain.lot(trade_id)
            with self._lock:
                if lot.status is LotStatus.OPEN and lot.buyer is not None:
                    self._open_trades[trade_id] = (to_checksum_address(lot.seller),
                                                   to_checksum_address(lot.buyer))
                else:
                    self._open_trades.pop(trade_id, None)
        log.info("bridge: trade %d is %s", trade_id, lot.status.name.lower())
        self._relays_changed()

    def _owners(self) -> set[str]:
        return {owner for w in self._workers if (owner := w.owner) is not None}

    def _relays_changed(self) -> None:
        for worker in self._workers:
            worker.wake()

    def _sync_loop(self) -> None:
        """Run requested re-syncs; retry with back-off while the chain is unreachable."""
        delay = self.reconnect_backoff[0]
        while not self._stopping.is_set():
            self._resync_wanted.wait()
            if self._stopping.is_set():
                return
            self._resync_wanted.clear()
            try:
                self.resync()
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

    def _changed(self, state: MeterState) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(state)
        except Exception:
            log.exception("bridge: on_change callback failed")


class _MeterWorker:
    """One meter: a poller thread (serial line, relay) and a submitter thread (readings)."""

    def __init__(self, bridge: MeterBridge, meter: BridgeMeter) -> None:
        self.bridge = bridge
        self.meter = meter
        self.address = meter.address
        self.name = f"meter {self.address[:10]} on {meter.url}"
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._submit_wake = threading.Event()
        self._stop = threading.Event()
        self._open_on_stop = True
        self._threads: list[threading.Thread] = []
        self.client: MeterClient | None = None  # the open port
        self.identified = False  # the meter answered ID on it since the last failure
        # What the registry says (None until read); a fault keeps the relay open and sends nothing.
        self.owner: str | None = meter.owner
        self.kind: str | None = meter.kind
        self.rated_w: int | None = None  # the registry's rating (Wh per hour of block time)
        self.registry_ok = False
        self.fault: str | None = None
        self.checked_at: float | None = None
        self.recheck_now = False
        # The line.
        self.identity: Identity | None = None
        self.reading: Reading | None = None
        self.relay: bool | None = None  # as the meter last reported
        self.reading_error: str | None = None  # sensor fault / absurd counter: relay held open
        self.last_ok: float | None = None  # last command answered OK (watchdog fed)
        self.next_read = 0.0
        self.status = "connecting"
        self.last_error: str | None = None
        # Counters.
        self.good: tuple[int, float] | None = None  # last sane counter and when it was read
        self.candidate: int | None = None  # the counter to send next
        self._problem: tuple[str, int] | None = None
        self.hold_below: int | None = None  # large backward jump: sane again once above this
        self.last_sent: int | None = None  # highest counter ever sent (mined, reverted or lost)
        self.last_accepted: int | None = None  # the registry's counter
        self.read_at = 0  # block time of the registry's counter; 0: no baseline yet
        self.read_wall: float | None = None  # our clock (time.time) when we learnt read_at
        self.last_submit: float | None = None
        self.connected_once = False
        self._notified: MeterState | None = None

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        """Start the poller and submitter threads."""
        self._stop.clear()
        short = self.address[2:8]
        self._threads = [
            threading.Thread(target=self._poll_loop, name=f"bridge-poll-{short}", daemon=True),
            threading.Thread(target=self._submit_loop, name=f"bridge-submit-{short}",
                             daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def request_stop(self, open_relay: bool) -> None:
        """Ask both threads to finish (the poller opens the relay first if `open_relay`)."""
        self._open_on_stop = open_relay
        self._stop.set()
        self._wake.set()
        self._submit_wake.set()

    def join(self, timeout: float) -> None:
        """Wait for both threads."""
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s: thread %s did not stop", self.name, thread.name)

    def wake(self) -> None:
        """Re-check the relay now (the chain's wish may have changed)."""
        self._wake.set()

    def recheck_registry(self) -> None:
        """Read the registry again at the next poll (a registration event arrived)."""
        with self._lock:
            self.recheck_now = True
        self._wake.set()

    def snapshot(self) -> MeterState:
        """The meter's live state."""
        with self._lock:
            reading = self.reading
            return MeterState(
                address=self.address,
                url=self.meter.url,
                meter_id=self.identity.meter_id if self.identity else None,
                owner=self.owner,
                kind=self.kind,
                online=self.status in ("online", "faulty"),
                status=self.status,
                power_w=reading.power_w if reading else None,
                energy_wh=reading.energy_wh if reading else None,
                voltage_v=reading.voltage_v if reading else None,
                relay_closed=self.relay,
                relay_wanted=self._wanted(),
                last_submitted_wh=self.last_sent,
                last_accepted_wh=self.last_accepted,
                last_error=self.fault or self.reading_error or self.last_error,
            )

    def _notify(self) -> None:
        """Tell `on_change` about the new state, unless nothing visible changed."""
        state = self.snapshot()
        key = replace(state, updated_at=0.0)
        with self._lock:
            if key == self._notified:
                return
            self._notified = key
        self.bridge._changed(state)

    def _wanted(self) -> bool:
        """Relay closed only if the chain wants it and nothing about this meter is wrong."""
        with self._lock:
            healthy = (self.identified and self.registry_ok and self.fault is None
                       and self.reading_error is None and self.reading is not None)
            kind, owner = self.kind, self.owner
        return healthy and self.bridge.relay_wanted(kind, owner)

    # ------------------------------------------------------------------ poller

    def _poll_loop(self) -> None:
        low, high = self.bridge.reconnect_backoff
        delay = low
        try:
            while not self._stop.is_set():
                if not self.identified:
                    if self._connect():
                        delay = low
                    else:
                        self._stop.wait(delay)
                        delay = min(delay * 2, high)
                        continue
                try:
                    self._cycle()
                except MeterDisconnected as exc:
                    self._lost(exc, line_works=False)
                    continue  # reopen the port at once; back off only if that fails
                except (MeterTimeout, MeterProtocolError, MeterRefused) as exc:
                    self._lost(exc, line_works=True)
                except Exception as exc:  # a bug must not kill the poller: fail safe, go on
                    log.exception("%s: unexpected error", self.name)
                    self._lost(exc, line_works=True)
                else:
                    self._sleep()
                    continue
                self._stop.wait(delay)
                delay = min(delay * 2, high)
        finally:
            self._shutdown()

    def _sleep(self) -> None:
        """Wait until the next READ or heartbeat is due, or until woken."""
        now = self.bridge.clock()
        due = self.next_read
        if self.identity is not None and self.last_ok is not None:
            due = min(due, self.last_ok + self.identity.watchdog_s / 3)
        if due > now:
            self._wake.wait(due - now)
        self._wake.clear()

    def _connect(self) -> bool:
        """Open the port if needed, identify the meter and check it against the registry.

        A port is reopened only when it is gone (MeterDisconnected); after timeouts or garbage
        the same port is asked again, since reopening a serial port can reset the meter.
        """
        with self._lock:
            self.status = "connecting" if not self.connected_once else "offline"
        if self.client is None:
            try:
                self.client = MeterClient(self.meter.url, timeout=self.bridge.read_timeout,
                                          retries=self.bridge.retries)
            except MeterError as exc:
                self._set_error(f"cannot open the port: {exc}")
                return False
        client = self.client
        try:
            identity = client.identify()
        except MeterDisconnected as exc:
            self._drop_port()
            self._set_error(f"no answer to ID: {exc}")
            return False
        except MeterError as exc:
            # Whatever answered is not a meter we can trust: try to leave its relay open.
            self._open_relay_if_possible(client)
            self._set_error(f"no valid answer to ID: {exc}")
            return False
        with self._lock:
            previous = self.identity
            self.identified = True
            self.identity = identity
            self.relay = None
            self.last_ok = self.bridge.clock()
            self.next_read = 0.0
            self.last_error = None
        if previous is not None and previous.meter_id != identity.meter_id:
            log.warning("%s: a different meter answers now (%s, was %s)", self.name,
                        identity.meter_id, previous.meter_id)
        log.info("%s: %s %s meter %s (firmware %s, rated %d W, watchdog %d s)", self.name,
                 "reconnected to" if self.connected_once else "found",
                 identity.kind, identity.meter_id, identity.firmware, identity.rated_power_w,
                 identity.watchdog_s)
        self._check_registry()
        if self.connected_once:
            # Trades may have opened or closed while the line was down: ask the chain again.
            self.bridge.request_resync()
        self.connected_once = True
        self._set_status()
        return True

    def _drop_port(self) -> None:
        """Close the port (it is gone); the next connect opens it again."""
        client, self.client = self.client, None
        if client is not None:
            client.close()

    def _open_relay_if_possible(self, client: MeterClient) -> bool | None:
        """Command the relay open on a line that may still carry commands; the new state."""
        try:
            return client.set_relay(False)
        except MeterDisconnected:
            self._drop_port()
        except MeterError as exc:
            log.warning("%s: could not command the relay open (%s); the meter's watchdog "
                        "will", self.name, exc)
        return None

    def _check_registry(self) -> None:
        """Compare the configuration, the meter's ID and the registry; set or clear the fault."""
        self.checked_at = self.bridge.clock()
        self.recheck_now = False
        try:
            registered = self.bridge.chain.meter(self.address)
        except ChainError as exc:
            # Keep what the registry said before: a node hiccup must not switch a meter off;
            # a meter never checked stays out of service until the node answers.
            self._set_error(f"cannot read the registry: {exc}")
            return
        fault = None
        identity = self.identity
        if registered is None:
            fault = (f"{self.address} is not registered in the MeterRegistry (the operator "
                     "registers it with `microgrid meter register`)")
        elif not registered.active:
            fault = f"{self.address} was deactivated by the grid operator"
        elif self.meter.owner is not None and registered.owner != self.meter.owner:
            fault = (f"registered to owner {registered.owner}, but configured for "
                     f"{self.meter.owner}")
        elif self.meter.kind is not None and registered.kind != self.meter.kind:
            fault = f"registered as a {registered.kind} meter, configured as {self.meter.kind}"
        elif identity is not None and identity.kind != registered.kind:
            fault = (f"the meter on {self.meter.url} reports kind {identity.kind}, but "
                     f"{self.address} is registered as a {registered.kind} meter")
        with self._lock:
            learnt_owner = registered is not None and registered.owner != self.owner
            if registered is not None:
                self.owner = registered.owner
                self.kind = registered.kind
                self.rated_w = registered.rated_power_w
                if self.last_accepted is None or registered.cumulative_wh >= self.last_accepted:
                    self._registry_counter(registered)
            self.registry_ok = registered is not None
            changed = fault != self.fault
            self.fault = fault
        if learnt_owner:
            # Trade events for an owner we did not know yet were not tracked: read them now.
            self.bridge.request_resync()
        if fault and changed:
            log.error("%s: %s; relay kept open, no readings sent", self.name, fault)
        elif changed:
            log.info("%s: registry check passed", self.name)
        if (fault is None and registered is not None and identity is not None
                and identity.rated_power_w > registered.rated_power_w):
            log.warning("%s: the meter's rating (%d W) is above the registered %d W: readings "
                        "at full power will be capped", self.name, identity.rated_power_w,
                        registered.rated_power_w)
        self._submit_wake.set()

    def _cycle(self) -> None:
        """One pass: READ if due, re-check the registry if due, set the relay, heartbeat."""
        client = self.client
        assert client is not None
        clock = self.bridge.clock
        now = clock()
        with self._lock:
            recheck = self.recheck_now or (
                (not self.registry_ok or self.fault is not None)
                and (self.checked_at is None
                     or now - self.checked_at >= self.bridge.registry_recheck))
        if recheck:
            if self.fault is not None:
                identity = client.identify()  # the meter may have been swapped or fixed
                with self._lock:
                    self.identity = identity
            self._check_registry()
        if now >= self.next_read:
            self.next_read = now + self.bridge.poll_interval
            try:
                reading = client.read()
            except MeterRefused as exc:
                # The line works but the meter cannot measure (sensor fault): no unmetered power.
                # (An ERR reply does not feed the watchdog either.)
                message = f"meter cannot measure: {exc}"
                with self._lock:
                    changed, self.reading_error = message != self.reading_error, message
                if changed:
                    log.warning("%s: %s; relay held open", self.name, exc)
                self._apply_relay(client, force=True)
                self._notify()
                return
            self._mark_ok()
            self._set_relay_state(reading.relay_closed)  # the watchdog or a reboot may open it
            self._take(reading)
        self._apply_relay(client)
        if (self.identity is not None and self.last_ok is not None
                and clock() - self.last_ok >= self.identity.watchdog_s / 3):
            relay = client.heartbeat()
            self._mark_ok()
            self._set_relay_state(relay)

    def _mark_ok(self) -> None:
        with self._lock:
            self.last_ok = self.bridge.clock()

    def _apply_relay(self, client: MeterClient, force: bool = False) -> None:
        """Command the relay the chain wants, if the meter's state differs (idempotent)."""
        wanted = self._wanted()
        if not force and self.relay is wanted:
            return
        got = client.set_relay(wanted)
        self._mark_ok()
        if got != wanted:
            self._set_error(f"relay did not {'close' if wanted else 'open'} when told to")
        if got != self.relay:
            log.info("%s: relay %s", self.name, "closed" if got else "open")
        self._set_relay_state(got)

    def _set_relay_state(self, relay: bool) -> None:
        with self._lock:
            changed = relay != self.relay
            self.relay = relay
        if changed:
            self._notify()

    def _take(self, reading: Reading) -> None:
        """Judge a READ: keep sane counters as the next candidate; log and hold back the rest."""
        now = self.bridge.clock()
        counter = reading.energy_wh
        message = None
        problem: tuple[str, int] | None = None  # what is wrong, for logging each problem once
        with self._lock:
            previous = self.reading
            if previous is not None and reading.samples < previous.samples:
                log.warning("%s: the meter rebooted (sample counter %d -> %d)", self.name,
                            previous.samples, reading.samples)
            sent = max(self.last_sent or 0, self.last_accepted or 0)
            good = self.good
            rated = self.identity.rated_power_w if self.identity else None
            self.reading = reading
            # The first reading is judged against what was sent or accepted before (the meter
            # may have been reset while the bridge was down), later ones against the last one.
            reference = good[0] if good is not None else sent
            if counter < reference:
                if reference - counter > REBOOT_LOSS_WH and counter < sent:
                    self.hold_below = sent
                log.warning("%s: counter went back from %d to %d Wh; nothing is sent until it "
                            "passes %d Wh", self.name, reference, counter, sent)
                self.good = (counter, now)
            elif (good is not None and rated is not None
                  and counter - good[0] > ABSURD_FACTOR * rated * (now - good[1]) / 3600
                  + ABSURD_SLACK_WH):
                problem = ("jump", good[0])
                message = (f"counter jumped from {good[0]} to {counter} Wh in "
                           f"{now - good[1]:.1f} s, more than the rating of {rated} W allows; "
                           "reading discarded")
            else:
                self.good = (counter, now)
            if message is None and self.hold_below is not None:
                if counter > self.hold_below:
                    log.info("%s: counter passed %d Wh again", self.name, self.hold_below)
                    self.hold_below = None
                else:
                    problem = ("hold", self.hold_below)
                    message = (f"counter {counter} Wh is more than {REBOOT_LOSS_WH} Wh below "
                               f"the {self.hold_below} Wh already sent (meter reset or "
                               "replaced?); relay held open until it passes it")
            if message is None:
                self.candidate = counter
                if self.reading_error is not None:
                    log.info("%s: readings are sane again", self.name)
            elif problem != self._problem:
                log.error("%s: %s", self.name, message)
            self._problem = problem
            self.reading_error = message
            self.last_error = None
            self.status = "faulty" if self.fault else "online"
        self._submit_wake.set()
        self._notify()

    def _lost(self, exc: BaseException, line_works: bool) -> None:
        """Fail safe: try to open the relay, mark the meter offline (closing a dead port)."""
        log.warning("%s: %s; marking offline", self.name, exc)
        relay: bool | None = None
        client = self.client
        if line_works and client is not None:
            relay = self._open_relay_if_possible(client)
        else:
            self._drop_port()
        with self._lock:
            self.identified = False
            self.relay = relay if relay is False else None
            self.status = "offline"
            self.last_error = str(exc)
        self._notify()

    def _shutdown(self) -> None:
        """On stop: open the relay (unless told not to) and close the port."""
        client = self.client
        if client is None:
            return
        if self._open_on_stop:
            try:
                self._set_relay_state(client.set_relay(False))
                log.info("%s: relay opened on stop", self.name)
            except MeterError as exc:
                log.warning("%s: could not open the relay on stop: %s", self.name, exc)
        self._drop_port()
        with self._lock:
            self.identified = False
            self.status = "offline"
        self._notify()

    def _set_error(self, text: str) -> None:
        with self._lock:
            changed = text != self.last_error
            self.last_error = text
        if changed:
            log.warning("%s: %s", self.name, text)
            self._notify()

    def _set_status(self) -> None:
        with self._lock:
            self.status = "faulty" if self.fault else "online"
        self._notify()

    # ------------------------------------------------------------------ submitter

    def _submit_loop(self) -> None:
        """Send readings at the configured cadence, one at a time, and follow their receipts."""
        delay = self.bridge.reconnect_backoff[0]
        while not self._stop.is_set():
            value = self._due()
            if value is None:
                wait = self.bridge.submit_interval if self.last_submit is not None else 0.5
                self._submit_wake.wait(min(max(wait, 0.05), 0.5))
                self._submit_wake.clear()
                continue
            try:
                self._submit(value)
                delay = self.bridge.reconnect_backoff[0]
            except ChainError as exc:
                self._set_error(f"cannot submit a reading: {exc}")
                self._stop.wait(delay)
                delay = min(delay * 2, self.bridge.reconnect_backoff[1])
            except Exception:
                log.exception("%s: submitting a reading failed", self.name)
                self._stop.wait(delay)

    def _due(self) -> int | None:
        """The counter to send now, or None (nothing new, too early, or not allowed)."""
        with self._lock:
            if not self.registry_ok or self.fault is not None or self.candidate is None:
                return None
            base = max(self.last_sent or -1, self.last_accepted or 0)
            if self.read_at == 0 and self.last_sent is None:
                return self.candidate  # the baseline: no delta, so no cadence to wait for
            if self.candidate - base < self.bridge.submit_step_wh:
                return None
            if (self.last_submit is not None
                    and self.bridge.clock() - self.last_submit < self.bridge.submit_interval):
                return None
            return self.candidate

    def _submit(self, candidate: int) -> None:
        """Send `candidate` (capped to what the rating allows) and wait for its receipt."""
        chain = self.bridge.chain
        with self._lock:
            accepted, read_at, rated = self.last_accepted or 0, self.read_at, self.rated_w
            base = max(self.last_sent or -1, accepted)
        value = candidate
        if read_at and rated:
            # The registry refuses more than rated x (block time since the last reading): send
            # what it will accept now; the meter really passed that counter, the rest follows.
            value = min(candidate, accepted + rated * self._elapsed(read_at) // 3600)
            if value <= base:
                with self._lock:
                    self.last_submit = self.bridge.clock()  # try again one interval later
                return
        with self._lock:
            # Set before sending: if the send fails halfway, this counter may be on its way,
            # and it must never go twice.
            self.last_sent = value
            self.last_submit = self.bridge.clock()
        try:
            tx_hash = chain.report(self.meter.account, value, self.owner)
        except ContractReverted as exc:
            self._refused(value, exc)
            return
        self._notify()
        log.info("%s: sent reading %d Wh (%s)", self.name, value, tx_hash)
        started = time.monotonic()
        checks = 1
        while True:
            try:
                chain.wait(tx_hash, timeout=RECEIPT_POLL_S)
            except ContractReverted as exc:
                self._refused(value, exc)
                return
            except ChainUnavailable as exc:
                self._set_error(f"waiting for reading {value} Wh: {exc}")
                if self._stop.wait(RECEIPT_POLL_S):
                    return
                continue
            except ChainError:
                if self._stop.is_set():
                    return
                waited = time.monotonic() - started
                if waited > self.bridge.receipt_timeout * checks:
                    checks += 1
                    if self._lost_in_node(tx_hash, value, waited):
                        return
                continue
            break
        self._accepted(value)

    def _lost_in_node(self, tx_hash: str, value: int, waited: float) -> bool:
        """A reading is long unmined: let the sender re-send it if the node lost it.

        Returns True if it was replaced by another transaction (it will never be mined).
        """
        self._set_error(f"reading {value} Wh ({tx_hash}) not mined after {waited:.0f} s")
        try:
            outcome = self.bridge.chain.sender.reconcile()
        except ChainError as exc:
            log.warning("%s: cannot check the outbox: %s", self.name, exc)
            return False
        if tx_hash in outcome.get("dropped", []):
            log.warning("%s: reading %d Wh (%s) was dropped; its counter is skipped",
                        self.name, value, tx_hash)
            return True
        return False

    def _elapsed(self, read_at: int) -> int:
        """Block seconds since the last accepted reading, as the next block will count them.

        A lower bound: the next block is not stamped before the latest one (a second after it,
        except on anvil, which may reuse its parent's second) nor before our clock; on anvil,
        whose clock may run ahead of ours, also the time since we saw the reading recorded.
        """
        chain = self.bridge.chain
        latest = chain.latest_timestamp()
        wall = time.time()
        try:
            strict = chain.info.client != "anvil"
        except ChainError:
            strict = False
        elapsed = max(latest + (1 if strict else 0), int(wall)) - read_at
        with self._lock:
            read_wall = self.read_wall
        if not strict and read_wall is not None:
            elapsed = max(elapsed, int(wall - read_wall))
        return max(0, elapsed)

    def _registry_counter(self, registered: Meter) -> None:
        """Take the registry's counter and block time (call with the lock held)."""
        self.last_accepted = registered.cumulative_wh
        self.read_at = registered.read_at
        self.read_wall = time.time()  # read_at was stamped no later than now

    def _accepted(self, value: int) -> None:
        """A reading was mined: take the registry's counter and block time."""
        try:
            registered = self.bridge.chain.meter(self.address)
        except ChainError:
            registered = None
        with self._lock:
            if registered is not None:
                self._registry_counter(registered)
            else:
                self.last_accepted = max(self.last_accepted or 0, value)
            self.last_error = None
        log.info("%s: reading %d Wh accepted", self.name, value)
        self._notify()

    def _refused(self, value: int, exc: ContractReverted) -> None:
        """A reading reverted: log it, re-read the registry; the counter is never sent again."""
        log.warning("%s: reading %d Wh refused by the registry: %s", self.name, value, exc)
        self._set_error(f"reading {value} Wh refused: {exc}")
        try:
            registered = self.bridge.chain.meter(self.address)
        except ChainError:
            return
        with self._lock:
            if registered is None or not registered.active:
                self.fault = ("not registered" if registered is None
                              else "deactivated by the grid operator")
                self.registry_ok = registered is not None
            else:
                self._registry_counter(registered)
                self.rated_w = registered.rated_power_w
        self._wake.set()
        self._notify()
