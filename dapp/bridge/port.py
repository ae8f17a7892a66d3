"""One meter on its line: identify, read, judge, relay, heartbeat; fail safe on any doubt.

A `MeterPort` is a state machine driven by the bridge's scheduler: `step()` does one pass on the
line and says when it wants the next one. It never sends to the chain itself; it keeps the
newest sane signed reading for the submitter (`outgoing`) and learns the registry's answer
from it (`accepted` / `rejected`).

A relay is closed only while the chain wants it closed *and* nothing about the meter is wrong:
identified, provisioned for this chain, registered and accepted by the owner configured, of the
kind configured, with a sane counter and a signature that is its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from eth_utils import to_checksum_address

from dapp.bridge import rules
from dapp.bridge.drivers import (
    DeviceIdentity,
    DeviceReading,
    MeterDriver,
    MeterLineGone,
    MeterSaidNo,
    SignedReading,
    open_driver,
)
from dapp.chain.client import Meter, ReadingOutcome
from dapp.errors import ChainError, MeterError
from hardware.protocol import KINDS, LOAD

if TYPE_CHECKING:
    from dapp.bridge.bridge import MeterBridge

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class BridgeMeter:
    """One meter of the bridge: its port and, optionally, what it must be.

    `url` is a driver URL (`/dev/ttyUSB0`, `socket://HOST:PORT`, a pty path). `address`, `owner`
    and `kind`, when given, must match what the meter and the registry say; None means "take it
    from the meter's ID and the registry".
    """

    url: str
    address: str | None = None
    owner: str | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {self.kind!r}")
        for name in ("address", "owner"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, to_checksum_address(value))


def parse_meter_spec(spec: str) -> BridgeMeter:
    """`URL` or `URL:ADDRESS` (the URL may contain colons; ADDRESS pins the meter expected)."""
    spec = spec.strip()
    url, sep, tail = spec.rpartition(":")
    if sep and tail.lower().startswith("0x"):
        if not url:
            raise ValueError(f"{spec!r}: the port URL is missing")
        try:
            return BridgeMeter(url, to_checksum_address(tail))
        except ValueError:
            raise ValueError(f"{spec!r}: {tail!r} is not a meter address") from None
    if not spec:
        raise ValueError("a meter needs its port URL")
    return BridgeMeter(spec)


@dataclass(frozen=True)
class MeterState:
    """A meter as the web app shows it.

    `status` is "connecting" (not answered yet), "online", "offline" (the line is dead or
    garbled) or "faulty" (answers, but must not be used: see `last_error`). `relay_closed` is
    what the meter last reported (None: unknown); `relay_wanted` what the chain asks for.
    """

    address: str | None
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
    updated_at: float = field(default=0.0, compare=False)


class MeterPort:
    """The state of one meter and one pass over its line at a time (`step`)."""

    def __init__(self, bridge: MeterBridge, meter: BridgeMeter) -> None:
        self.bridge = bridge
        self.meter = meter
        self.url = meter.url
        self.name = f"meter on {meter.url}"
        self._lock = threading.RLock()
        self.driver: MeterDriver | None = None
        self.identified = False
        self.identity: DeviceIdentity | None = None
        self.connected_once = False
        self.backoff = bridge.reconnect_backoff[0]
        # What the registry says; a fault keeps the relay open and forwards nothing.
        self.registered: Meter | None = None
        self.owner: str | None = meter.owner
        self.kind: str | None = meter.kind
        self.fault: str | None = None
        self.checked_at: float | None = None
        self.recheck_now = False
        # The line.
        self.reading: DeviceReading | None = None
        self.relay: bool | None = None
        self.reading_error: str | None = None
        self.last_ok: float | None = None
        self.next_read = 0.0
        self.status = "connecting"
        self.last_error: str | None = None
        # Counters.
        self.good: tuple[int, float] | None = None  # last sane counter, when its READ was asked
        self.hold_below: int | None = None
        self._problem: str | None = None
        self.outgoing: SignedReading | None = None  # newest sane reading not yet forwarded
        self.forwarded: tuple[int, int, float] | None = None  # counter, sequence, when
        self.in_flight: SignedReading | None = None
        self._notified: MeterState | None = None

    @property
    def address(self) -> str | None:
        """The meter's address: configured, or learnt from its ID."""
        if self.identity is not None:
            return self.identity.address
        return self.meter.address

    # ------------------------------------------------------------------ state

    def snapshot(self) -> MeterState:
        """The meter's live state."""
        with self._lock:
            reading = self.reading
            registered = self.registered
            return MeterState(
                address=self.address,
                url=self.url,
                meter_id=self.identity.meter_id if self.identity else None,
                owner=self.owner,
                kind=self.kind,
                online=self.status in ("online", "faulty"),
                status=self.status,
                power_w=reading.power_w if reading else None,
                energy_wh=reading.energy_wh if reading else None,
                voltage_v=reading.voltage_v if reading else None,
                relay_closed=self.relay,
                relay_wanted=self.wanted(),
                last_submitted_wh=self.forwarded[0] if self.forwarded else None,
                last_accepted_wh=registered.cumulative_wh if registered else None,
                last_error=self.fault or self.reading_error or self.last_error,
                updated_at=self.bridge.clock(),
            )

    def notify(self) -> None:
        """Tell the bridge's `on_change` about the new state, unless nothing visible changed."""
        state = self.snapshot()
        key = replace(state, updated_at=0.0)
        with self._lock:
            if key == self._notified:
                return
            self._notified = key
        self.bridge.changed(state)

    def healthy(self) -> bool:
        """Identified, registered and accepted, no fault, a sane reading."""
        with self._lock:
            return (self.identified and self.registered is not None and self.fault is None
                    and self.reading_error is None and self.reading is not None)

    def wanted(self) -> bool:
        """Relay closed only if the chain wants it and nothing about this meter is wrong."""
        with self._lock:
            kind, owner = self.kind, self.owner
        return self.healthy() and self.bridge.trades.relay_wanted(kind, owner)

    def recheck_registry(self) -> None:
        """Read the registry again at the next pass (a registry event arrived)."""
        with self._lock:
            self.recheck_now = True

    # ------------------------------------------------------------------ one pass

    def step(self) -> float:
        """One pass over the line; returns the clock time the next pass is due."""
        clock = self.bridge.clock
        low, high = self.bridge.reconnect_backoff
        if not self.identified:
            if not self._connect():
                delay, self.backoff = self.backoff, min(self.backoff * 2, high)
                return clock() + delay
            self.backoff = low
        try:
            self._cycle()
        except MeterLineGone as exc:
            self._lost(exc, line_works=False)
            return clock()  # reopen the port at once; back off only if that fails
        except MeterError as exc:
            self._lost(exc, line_works=True)
        except Exception as exc:  # a bug must not stop the meter's passes: fail safe, go on
            log.exception("%s: unexpected error", self.name)
            self._lost(exc, line_works=True)
        else:
            return self._next_due()
        delay, self.backoff = self.backoff, min(self.backoff * 2, high)
        return clock() + delay

    def _next_due(self) -> float:
        due = self.next_read
        if self.identity is not None and self.last_ok is not None:
            due = min(due, self.last_ok + self.identity.watchdog_s / 3)
        return due

    def _connect(self) -> bool:
        """Open the port if needed, identify the meter and check it against the registry.

        A port is reopened only when it is gone; after timeouts or garbage the same port is
        asked again, since reopening a serial port can reset the meter.
        """
        with self._lock:
            self.status = "offline" if self.connected_once else "connecting"
        if self.driver is None:
            try:
                self.driver = open_driver(self.url, timeout=self.bridge.read_timeout,
                                          retries=self.bridge.retries)
            except MeterError as exc:
                self._set_error(f"cannot open the port: {exc}")
                return False
        driver = self.driver
        try:
            identity = driver.identify()
            identity = self._provision(driver, identity)
        except MeterLineGone as exc:
            self._drop_port()
            self._set_error(f"no answer to ID: {exc}")
            return False
        except (MeterError, ChainError) as exc:
            # Whatever answered is not a meter we can trust: try to leave its relay open.
            self._open_relay_if_possible(driver)
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
            self.name = f"meter {identity.address[:10]} on {self.url}"
        if previous is not None and previous.address != identity.address:
            log.warning("%s: a different meter answers now (%s, was %s)", self.name,
                        identity.address, previous.address)
            with self._lock:
                self.good, self.hold_below, self.outgoing, self.forwarded = None, None, None, None
        log.info("%s: %s %s meter %s (firmware %s, rated %d W, watchdog %d s)", self.name,
                 "reconnected to" if self.connected_once else "found", identity.kind,
                 identity.meter_id, identity.firmware, identity.rated_power_w,
                 identity.watchdog_s)
        self.check_registry()
        if self.connected_once:
            # Trades may have opened or closed while the line was down: read this owner's again
            # before the relay is commanded (and all of them soon, in the sync thread).
            if self.owner is not None:
                try:
                    self.bridge.trades.refresh(self.owner)
                except ChainError as exc:
                    log.warning("%s: cannot read the trades again yet (%s)", self.name, exc)
            self.bridge.request_resync()
        self.connected_once = True
        with self._lock:
            self.status = "faulty" if self.fault else "online"
        self.notify()
        return True

    def _provision(self, driver: MeterDriver, identity: DeviceIdentity) -> DeviceIdentity:
        """Bind a new meter's signatures to this chain and registry (once, at installation)."""
        if identity.domain is not None:
            return identity
        chain_id, registry = self.bridge.domain()
        log.info("%s: provisioning meter %s for chain %d, registry %s", self.name,
                 identity.address, chain_id, registry)
        return driver.provision(chain_id, registry)

    def _drop_port(self) -> None:
        driver, self.driver = self.driver, None
        if driver is not None:
            driver.close()

    def _open_relay_if_possible(self, driver: MeterDriver) -> bool | None:
        """Command the relay open on a line that may still carry commands; the new state."""
        try:
            return driver.set_relay(False)
        except MeterLineGone:
            self._drop_port()
        except MeterError as exc:
            log.warning("%s: could not command the relay open (%s); the meter's watchdog "
                        "will", self.name, exc)
        return None

    def check_registry(self) -> None:
        """Compare the configuration, the meter's ID and the registry; set or clear the fault."""
        self.checked_at = self.bridge.clock()
        self.recheck_now = False
        identity = self.identity
        address = self.address
        if address is None:
            return
        try:
            registered = self.bridge.chain.meter(address)
        except ChainError as exc:
            # Keep what the registry said before: a node hiccup must not switch a meter off.
            self._set_error(f"cannot read the registry: {exc}")
            return
        expected = self.meter
        fault = None
        try:
            domain = self.bridge.domain()
        except ChainError:
            domain = None
        if expected.address is not None and identity is not None \
                and identity.address != expected.address:
            fault = (f"the meter on {self.url} is {identity.address}, but the bridge is "
                     f"configured for {expected.address}")
        elif identity is not None and domain is not None and identity.domain is not None \
                and identity.domain != domain:
            fault = (f"the meter signs for chain {identity.domain[0]}, registry "
                     f"{identity.domain[1]}, not this chain's registry {domain[1]}")
        elif registered is None:
            fault = (f"{address} is not registered in the MeterRegistry (the grid operator "
                     "offers it with `microgrid meter offer`)")
        elif registered.status == "offered":
            fault = (f"{address} is offered to {registered.owner}, who has not accepted it "
                     "yet (wallet page: Meter offers)")
        elif registered.status == "declined":
            fault = f"{address} was declined by {registered.owner}"
        elif not registered.active:
            fault = f"{address} was deactivated by the grid operator"
        elif expected.owner is not None and registered.owner != expected.owner:
            fault = f"registered to owner {registered.owner}, but configured for {expected.owner}"
        elif expected.kind is not None and registered.kind != expected.kind:
            fault = f"registered as a {registered.kind} meter, configured as {expected.kind}"
        elif identity is not None and identity.kind != registered.kind:
            fault = (f"the meter on {self.url} reports kind {identity.kind}, but {address} is "
                     f"registered as a {registered.kind} meter")
        with self._lock:
            learnt_owner = registered is not None and registered.owner != self.owner
            self.registered = registered if fault is None or registered is not None else None
            if registered is not None:
                self.owner, self.kind = registered.owner, registered.kind
            changed = fault != self.fault
            self.fault = fault
        if learnt_owner:
            # Trade events for an owner we did not know yet were not tracked: read them now.
            self.bridge.request_resync()
        if fault and changed:
            log.error("%s: %s; relay kept open, no readings forwarded", self.name, fault)
        elif changed:
            log.info("%s: registry check passed", self.name)

    def _cycle(self) -> None:
        """READ if due, re-check the registry if due, set the relay, heartbeat."""
        driver = self.driver
        assert driver is not None
        clock = self.bridge.clock
        now = clock()
        with self._lock:
            recheck = self.recheck_now or (
                (self.registered is None or self.fault is not None)
                and (self.checked_at is None
                     or now - self.checked_at >= self.bridge.registry_recheck))
        if recheck:
            if self.fault is not None:
                identity = self._provision(driver, driver.identify())  # swapped or fixed?
                with self._lock:
                    self.identity = identity
            self.check_registry()
        # A relay the chain now wants otherwise goes first: a woken pass must not wait for a READ.
        self._apply_relay(driver)
        # Every READ signs the newest block the bridge knows (heartbeats too): a reading is
        # accepted only while that block is recent. No block known yet: nothing worth signing.
        block = self.bridge.read_block() if now >= self.next_read else None
        if block is not None:
            self.next_read = now + self.bridge.poll_interval
            asked = clock()
            try:
                reading = driver.read(block)
            except MeterSaidNo as exc:
                # The line works but the meter cannot measure (sensor fault): no unmetered power.
                message = f"meter cannot measure: {exc}"
                with self._lock:
                    changed, self.reading_error = message != self.reading_error, message
                if changed:
                    log.warning("%s: %s; relay held open", self.name, exc)
                self._apply_relay(driver, force=True)
                self.notify()
                return
            self._mark_ok()
            self._set_relay_state(reading.relay_closed)  # the watchdog or a reboot may open it
            self._take(reading, asked)
        self._apply_relay(driver)
        if (self.identity is not None and self.last_ok is not None
                and clock() - self.last_ok >= self.identity.watchdog_s / 3):
            relay = driver.heartbeat()
            self._mark_ok()
            self._set_relay_state(relay)

    def _mark_ok(self) -> None:
        with self._lock:
            self.last_ok = self.bridge.clock()

    def _apply_relay(self, driver: MeterDriver, force: bool = False) -> None:
        """Command the relay the chain wants, if the meter's state differs (idempotent)."""
        wanted = self.wanted()
        if not force and self.relay is wanted:
            return
        got = driver.set_relay(wanted)
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
            self.notify()

    def _take(self, reading: DeviceReading, asked: float) -> None:
        """Judge a READ: keep a sane one for the submitter; log and hold back the rest.

        The meter sampled its counter somewhere between `asked` (when the READ went out) and
        now (its reply): the rating check measures from the last sane READ's `asked` to this
        reply, the longest the meter could have counted, so a slow reply followed by a quick
        one never looks like an impossible jump.
        """
        now = self.bridge.clock()
        signed = reading.signed
        with self._lock:
            previous = self.reading
            if previous is not None and reading.samples < previous.samples:
                log.warning("%s: the meter rebooted (sample counter %d -> %d)", self.name,
                            previous.samples, reading.samples)
            registered = self.registered
            if not self.bridge.signed_by(signed, self.address):
                # Altered between the meter and us: the chain would refuse it, so it is not
                # forwarded. The meter itself still measures truly, so the relay keeps
                # following the chain; energy drawn meanwhile is in the next genuine counter.
                if self._problem != "signature":
                    log.error("%s: a reading whose signature is not the meter's (altered on "
                              "the line?) was not forwarded", self.name)
                self._problem = "signature"
                self.last_error = ("a reading arrived with a signature that is not the meter's "
                                   "(altered on the line?); it was not forwarded")
                self.status = "faulty" if self.fault else "online"
            else:
                self.reading = reading  # shown only when it is the meter's own
                verdict = rules.judge(
                    signed.energy_wh, previous=self.good,
                    chain_wh=registered.cumulative_wh if registered else None,
                    rated_w=self.identity.rated_power_w if self.identity else None,
                    now=now, hold_below=self.hold_below)
                self._judged(signed, verdict, asked)
        self.bridge.submitter.wake()
        self.notify()

    def _judged(self, signed: SignedReading, verdict: rules.Verdict, asked: float) -> None:
        """Apply the verdict on a genuine reading (call with the lock held)."""
        self.hold_below = verdict.hold_below
        if verdict.ok or verdict.problem == "back":
            self.good = (signed.energy_wh, asked)
        if verdict.ok:
            self.outgoing = signed
            if self.reading_error is not None:
                log.info("%s: readings are sane again", self.name)
        elif verdict.problem != self._problem:
            log.error("%s: %s", self.name, verdict.message)
        self._problem = verdict.problem
        self.reading_error = verdict.message
        self.last_error = None
        self.status = "faulty" if self.fault else "online"

    def _lost(self, exc: BaseException, line_works: bool) -> None:
        """Fail safe: try to open the relay, mark the meter offline (closing a dead port)."""
        log.warning("%s: %s; marking offline", self.name, exc)
        relay: bool | None = None
        driver = self.driver
        if line_works and driver is not None:
            relay = self._open_relay_if_possible(driver)
        else:
            self._drop_port()
        with self._lock:
            self.identified = False
            self.relay = relay if relay is False else None
            self.status = "offline"
            self.last_error = str(exc)
        self.notify()

    def shutdown(self, open_relay: bool) -> None:
        """On stop: open the relay (unless told not to) and close the port."""
        driver = self.driver
        if driver is None:
            return
        if open_relay:
            try:
                self._set_relay_state(driver.set_relay(False))
                log.info("%s: relay opened on stop", self.name)
            except MeterError as exc:
                log.warning("%s: could not open the relay on stop: %s", self.name, exc)
        self._drop_port()
        with self._lock:
            self.identified = False
            self.status = "offline"
        self.notify()

    def _set_error(self, text: str) -> None:
        with self._lock:
            changed = text != self.last_error
            self.last_error = text
        if changed:
            log.warning("%s: %s", self.name, text)
            self.notify()

    # ------------------------------------------------------------------ submitter side

    def take_outgoing(self, now: float) -> SignedReading | None:
        """The reading to forward now, if one is due (marks it as on its way)."""
        with self._lock:
            signed = self.outgoing
            if (signed is None or self.in_flight is not None or self.fault is not None
                    or self.registered is None or self.reading_error is not None):
                return None
            registered = self.registered
            on_chain = registered.read_at != 0 or registered.sequence != 0
            prompt = self.kind == LOAD and self.bridge.trades.closing(self.owner)
            if not rules.due(self.bridge.cadence, counter=signed.energy_wh,
                             sequence=signed.sequence,
                             chain_wh=registered.cumulative_wh if on_chain else None,
                             chain_sequence=registered.sequence if on_chain else None,
                             forwarded=self.forwarded, now=now, prompt=prompt):
                return None
            self.forwarded = (signed.energy_wh, signed.sequence, now)
            self.in_flight = signed
            return signed

    def settled(self, signed: SignedReading, outcome: ReadingOutcome) -> None:
        """The registry's answer to a forwarded reading."""
        with self._lock:
            if self.in_flight == signed:
                self.in_flight = None
            if outcome.accepted and self.registered is not None:
                self.registered = replace(self.registered, cumulative_wh=outcome.energy_wh,
                                          sequence=outcome.sequence, read_at=outcome.read_at)
        if outcome.accepted:
            log.info("%s: reading %d Wh (#%d) accepted", self.name, signed.energy_wh,
                     signed.sequence)
            with self._lock:
                self.last_error = None
        else:
            with self._lock:
                # Refused (stale after a slow node, or too early for its energy): the chain
                # still holds its older counter, so that is the base again and this counter
                # goes once more after the interval (signed anew with a new block), not only at
                # the next heartbeat (a frozen counter would otherwise wait a whole heartbeat).
                if self.forwarded is not None and self.forwarded[1] == signed.sequence:
                    base = self.registered.cumulative_wh if self.registered is not None else 0
                    self.forwarded = (base, signed.sequence, self.forwarded[2])
            self._set_error(f"reading {signed.energy_wh} Wh (#{signed.sequence}) refused: "
                            f"{outcome.reason}")
            self.recheck_registry()
        self.notify()

    def unsent(self, signed: SignedReading) -> None:
        """A forwarded reading never reached the chain (node down): it may go again."""
        with self._lock:
            if self.in_flight == signed:
                self.in_flight = None
                self.forwarded = None


OnChange = Callable[[MeterState], None]
