"""Host-side meter client: one request at a time over a pyserial port, with timeouts and retries.

    with MeterClient("socket://127.0.0.1:7001") as meter:   # or "/dev/ttyUSB0", a pty path, ...
        meter.identify()              # -> Identity (with the meter's address and domain)
        meter.provision(domain)       # -> Domain (once, at installation; idempotent)
        meter.set_relay(True)         # -> True (the state the meter reports)
        reading = meter.read(block)   # -> ReadReply of a recent block (BlockRef)
        reading.verify(domain, meter.identity.address)   # -> True unless forged or damaged

Errors (all `hardware.protocol.MeterError`): MeterTimeout (no answer; MeterDisconnected when the
port is closed or gone), MeterProtocolError (garbled reply), MeterRefused (the meter answered ERR).
A call takes at most about (retries + 1) * timeout seconds; only timeouts and garbled replies are
retried (every command is idempotent), each attempt with a fresh sequence number so that a late
reply to an earlier attempt is recognised and discarded.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time

import serial

from hardware.ports import serial_for_url
from hardware.protocol import (
    MAX_REPLY,
    MAX_SEQ,
    PROTOCOL_VERSION,
    Identity,
    LineBuffer,
    MeterDisconnected,
    MeterError,
    MeterProtocolError,
    MeterRefused,
    MeterTimeout,
    ReadReply,
    Reply,
    Request,
    parse_provision,
    parse_reply,
)
from hardware.signing import BlockRef, Domain

__all__ = [
    "MeterClient",
    "Identity",
    "ReadReply",
    "Domain",
    "MeterError",
    "MeterTimeout",
    "MeterDisconnected",
    "MeterProtocolError",
    "MeterRefused",
]

log = logging.getLogger(__name__)

BAUDRATE = 115200
POLL_S = 0.05  # longest single blocking read; bounds how far a call overruns its deadline


class MeterClient:
    """A meter on a serial line: `port_or_url` is a pyserial URL/device path or an open port."""

    def __init__(self, port_or_url: str | serial.SerialBase, *, timeout: float = 1.0,
                 retries: int = 2, baudrate: int = BAUDRATE) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be positive (a read without timeout can hang)")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.timeout = timeout
        self.retries = retries
        self.baudrate = baudrate
        self._url = port_or_url if isinstance(port_or_url, str) else None
        self._lock = threading.Lock()
        self._lines = LineBuffer(MAX_REPLY)
        # A random start makes a reply left over from an earlier session unlikely to match.
        self._seq = random.randint(1, MAX_SEQ)  # noqa: S311 - not a secret
        self.identity: Identity | None = None
        if self._url is not None:
            self._port = self._open_url()
        else:
            self._port = port_or_url
            self._port.timeout = min(POLL_S, timeout)  # never None: reads must return
            if self._port.write_timeout is None:
                self._port.write_timeout = timeout
        try:
            self._discard_input()
        except MeterDisconnected:
            self.close()
            raise

    @property
    def name(self) -> str:
        """The URL or device this client talks to (for logs)."""
        return self._url or str(getattr(self._port, "portstr", None) or self._port)

    # ----------------------------------------------------------------- commands

    def identify(self) -> Identity:
        """Ask who the meter is (ID); the answer is kept in `self.identity`."""
        identity = Identity.from_fields(self._transact(Request(0, "ID")).values)
        if identity.protocol != PROTOCOL_VERSION:
            raise MeterProtocolError(f"{self.name}: meter speaks protocol {identity.protocol}, "
                                     f"this driver speaks {PROTOCOL_VERSION}")
        self.identity = identity
        return identity

    def read(self, block: BlockRef) -> ReadReply:
        """Take a new signed reading of the recent `block` (READ); MeterRefused code 8 while
        not provisioned.

        The signature is not checked here: use `reading.verify(domain, identity.address)`.
        """
        reply = self._transact(Request(0, "READ", block=block))
        return ReadReply.from_fields(reply.values, block)

    def provision(self, domain: Domain) -> Domain:
        """Give the meter its domain once (INSTALL); the same domain again is accepted.

        A meter provisioned with another domain refuses: MeterRefused with code 7.
        """
        provisioned = parse_provision(self._transact(Request(0, "INSTALL",
                                                             domain=domain)).values)
        if provisioned != domain:
            raise MeterProtocolError(f"{self.name}: INSTALL answered {provisioned}")
        if self.identity is not None:
            self.identity = dataclasses.replace(self.identity, domain=domain)
        return provisioned

    def set_relay(self, on: bool) -> bool:
        """Close (`on=True`, power flows) or open the relay; return the state the meter reports."""
        return _relay_field(self._transact(Request(0, "RELAY", bool(on))))

    def heartbeat(self) -> bool:
        """Keep the watchdog fed (HB); return the relay state the meter reports."""
        return _relay_field(self._transact(Request(0, "HB")))

    def close(self) -> None:
        """Close the port (idempotent)."""
        with self._lock:
            try:
                self._port.close()
            except (serial.SerialException, OSError) as exc:
                log.debug("%s: close: %s", self.name, exc)

    def __enter__(self) -> MeterClient:
        """Use as a context manager that closes the port."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the port."""
        self.close()

    # ----------------------------------------------------------------- transport

    def _open_url(self) -> serial.SerialBase:
        try:
            # poll() ports: pyserial's select() fails on descriptors >= 1024 (many lines).
            return serial_for_url(self._url, baudrate=self.baudrate,
                                  timeout=min(POLL_S, self.timeout),
                                  write_timeout=self.timeout)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise MeterDisconnected(f"{self._url}: cannot open: {exc}") from exc

    def _discard_input(self) -> None:
        """Drop bytes left on the line by an earlier session."""
        try:
            self._port.reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            raise MeterDisconnected(f"{self.name}: {exc}") from exc

    def _next_seq(self) -> int:
        self._seq = self._seq % MAX_SEQ + 1  # 1..65535; 0 is reserved for unreadable frames
        return self._seq

    def _transact(self, request: Request) -> Reply:
        """Send `request` and return its OK reply, retrying timeouts and garbled replies."""
        with self._lock:
            last: MeterTimeout | MeterProtocolError | None = None
            for attempt in range(self.retries + 1):
                seq = self._next_seq()
                try:
                    return self._attempt(dataclasses.replace(request, seq=seq))
                except MeterDisconnected:
                    raise
                except (MeterTimeout, MeterProtocolError) as exc:
                    last = exc
                    log.warning("%s: %s (attempt %d of %d): %s", self.name, request.command,
                                attempt + 1, self.retries + 1, exc)
            assert last is not None
            raise last

    def _attempt(self, request: Request) -> Reply:
        frame = request.encode()
        deadline = time.monotonic() + self.timeout
        try:
            self._port.write(frame)
        except serial.SerialTimeoutException as exc:
            raise MeterTimeout(f"{self.name}: write timed out") from exc
        except (serial.SerialException, OSError) as exc:
            raise MeterDisconnected(f"{self.name}: {exc}") from exc
        log.debug("%s > %r", self.name, frame)
        while True:
            for line in self._read_lines(deadline):
                if line is None:
                    raise MeterProtocolError(f"{self.name}: reply line too long")
                log.debug("%s < %r", self.name, line)
                try:
                    reply = parse_reply(line)
                except MeterProtocolError as exc:
                    raise MeterProtocolError(f"{self.name}: {exc}", exc.code, exc.seq) from exc
                if reply.seq == 0 and not reply.ok:
                    # The meter could not read our frame (noise on the line): try again.
                    raise MeterProtocolError(
                        f"{self.name}: meter could not read a frame: {reply.code} "
                        f"{reply.message}", reply.code, 0)
                if reply.seq != request.seq:
                    log.info("%s: discarded stale reply (seq %d, want %d)", self.name,
                             reply.seq, request.seq)
                    continue
                if not reply.ok:
                    raise MeterRefused(reply.code, reply.message)
                if reply.command != request.command:
                    raise MeterProtocolError(
                        f"{self.name}: reply to {reply.command}, expected {request.command}")
                return reply
            if time.monotonic() >= deadline:
                raise MeterTimeout(
                    f"{self.name}: no reply to {request.command} within {self.timeout} s")

    def _read_lines(self, deadline: float) -> list[bytes | None]:
        """Block until at least one line arrives or `deadline` passes; return the lines."""
        while time.monotonic() < deadline:
            try:
                waiting = self._port.in_waiting
                data = self._port.read(max(1, waiting))
            except (serial.SerialException, OSError) as exc:
                raise MeterDisconnected(f"{self.name}: {exc}") from exc
            if data:
                lines = self._lines.feed(data)
                if lines:
                    return lines
        return []


def _relay_field(reply: Reply) -> bool:
    if len(reply.values) != 1 or reply.values[0] not in ("0", "1"):
        raise MeterProtocolError(f"malformed {reply.command} reply: {reply.values}")
    return reply.values[0] == "1"
