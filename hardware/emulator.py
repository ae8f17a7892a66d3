"""Meter emulator: the firmware's behaviour in Python, served over a pseudo-terminal or TCP.

`EmulatedMeter` is the meter (protocol, counters, relay, watchdog) measuring a `Microgrid` (the
physics of hardware/models.py on an optionally accelerated clock). `MeterServer` serves one meter
on a pty (`/dev/pts/N`) or on TCP (`socket://127.0.0.1:PORT`) from a background thread, and can
simulate faults: a silent meter, garbled replies, slow replies, an unplugged cable.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import math
import os
import queue
import select
import socket
import threading
import time
import tty
from collections import deque
from collections.abc import Callable

from hardware.models import Plant
from hardware.protocol import (
    KINDS,
    ErrorCode,
    Identity,
    LineBuffer,
    MeterProtocolError,
    Reading,
    encode_error,
    encode_ok,
    parse_request,
)

log = logging.getLogger(__name__)

FIRMWARE = "emulator-1.0"
TICK_S = 0.05  # the sample period: counters, watchdog and delayed replies advance this often
REGISTRY_MAX_RATED_W = 65535  # MeterRegistry stores the rating as uint16

# The same short texts as the firmware, so an ERR reply reads the same from both.
ERROR_TEXT = {
    ErrorCode.BAD_CHECKSUM: "bad checksum",
    ErrorCode.BAD_FRAME: "bad frame",
    ErrorCode.LINE_TOO_LONG: "line too long",
    ErrorCode.UNKNOWN_COMMAND: "unknown command",
    ErrorCode.BAD_ARGUMENT: "bad argument",
    ErrorCode.SENSOR_FAULT: "sensor fault",
}


class Microgrid:
    """A Plant driven by the wall clock times `acceleration`, shareable by several meters."""

    def __init__(self, plant: Plant | None = None, *, acceleration: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if acceleration <= 0:
            raise ValueError("acceleration must be positive")
        self.plant = plant or Plant()
        self.acceleration = acceleration
        self.clock = clock
        self.lock = threading.RLock()
        self._last = clock()

    def sync(self) -> Plant:
        """Advance the plant to now and return it (hold `lock` to read several values at once)."""
        with self.lock:
            now = self.clock()
            if now > self._last:
                self.plant.advance((now - self._last) * self.acceleration)
                self._last = now
            return self.plant


class EmulatedMeter:
    """One meter: answers protocol lines, counts energy from the Microgrid, drives its relay.

    A supply meter counts PV -> battery energy; its relay is the owner's export switch and does not
    change what it counts. A load meter counts battery -> consumer energy, which only flows while
    its relay is closed. The watchdog opens the relay after `watchdog_s` wall-clock seconds with no
    valid command. With acceleration a, the counter advances a times faster than `power_w`
    suggests, so ID reports rated_power_w = ceil(rated * a): register the meter with that.
    """

    def __init__(self, kind: str, grid: Microgrid, *, meter_id: str | None = None,
                 rated_power_w: float | None = None, watchdog_s: int = 10,
                 energy_offset_wh: int = 0) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if not 1 <= watchdog_s <= 3600:
            raise ValueError("watchdog must be 1..3600 s")
        self.kind = kind
        self.grid = grid
        plant = grid.plant
        if rated_power_w is None:
            rated_power_w = plant.pv.peak_w if kind == "supply" else plant.load.peak_w
        if kind == "supply" and rated_power_w < plant.pv.peak_w:
            raise ValueError("a supply meter's rating must cover the PV peak power")
        if kind == "load" and rated_power_w < plant.load.peak_w:
            raise ValueError("a load meter's rating must cover the load profile's peak")
        self.identity = Identity(
            meter_id=meter_id or f"emu-{kind}",
            firmware=FIRMWARE,
            kind=kind,
            rated_power_w=max(1, math.ceil(rated_power_w * grid.acceleration)),
            watchdog_s=watchdog_s,
        )
        Identity.from_fields(self.identity.fields())  # validates meter_id etc. early
        self.energy_offset_wh = energy_offset_wh
        self.relay_closed = False  # a meter powers up with its relay open
        self.samples = 0
        self.watchdog_trips = 0
        self.sensor_ok = True  # False: READ answers ERR 6, as a meter whose sensor fell off the bus
        self._last_valid = grid.clock()

    # ----------------------------------------------------------------- state

    def energy_wh(self) -> float:
        """The exact (fractional) energy counted so far."""
        plant = self.grid.sync()
        measured = plant.supply_wh if self.kind == "supply" else plant.load_wh
        return self.energy_offset_wh + measured

    def reading(self) -> Reading:
        """What READ reports now."""
        with self.grid.lock:
            energy = self.energy_wh()
            plant = self.grid.plant
            power = plant.supply_w if self.kind == "supply" else plant.load_w
            volts = plant.battery.voltage()
            return Reading(math.floor(energy), power, volts, power / volts, self.relay_closed,
                           self.samples)

    def set_relay(self, closed: bool) -> None:
        """Close or open the relay (idempotent); a load meter connects/disconnects the load."""
        with self.grid.lock:
            plant = self.grid.sync()  # energy so far was counted with the old state
            if self.kind == "load":
                plant.load_connected = closed
                if not closed:
                    plant.load_w = 0.0
            if closed != self.relay_closed:
                log.info("%s: relay %s", self.identity.meter_id, "closed" if closed else "open")
            self.relay_closed = closed

    def tick(self) -> None:
        """One sample period: advance the physics, count the sample, run the watchdog."""
        with self.grid.lock:
            self.grid.sync()
            self.samples = (self.samples + 1) % 2**32
            if self.relay_closed and self.grid.clock() - self._last_valid >= \
                    self.identity.watchdog_s:
                self.watchdog_trips += 1
                log.warning("%s: watchdog: no valid command for %d s, relay opened",
                            self.identity.meter_id, self.identity.watchdog_s)
                self.set_relay(False)

    # ----------------------------------------------------------------- protocol

    def handle_line(self, line: bytes | None) -> bytes | None:
        """Answer one received line (None: a too-long line); None means no reply."""
        if line is None:
            return encode_error(0, ErrorCode.LINE_TOO_LONG, ERROR_TEXT[ErrorCode.LINE_TOO_LONG])
        try:
            request = parse_request(line)
        except MeterProtocolError as exc:
            return encode_error(exc.seq, exc.code, ERROR_TEXT[exc.code])
        with self.grid.lock:
            if request.command == "ID":
                reply = encode_ok(request.seq, "ID", self.identity.fields())
            elif request.command == "READ":
                if not self.sensor_ok:
                    code = ErrorCode.SENSOR_FAULT
                    return encode_error(request.seq, code, ERROR_TEXT[code])  # no watchdog feed
                reply = encode_ok(request.seq, "READ", self.reading().fields())
            elif request.command == "RELAY":
                self.set_relay(bool(request.relay))
                reply = encode_ok(request.seq, "RELAY", ("1" if self.relay_closed else "0",))
            else:  # HB
                reply = encode_ok(request.seq, "HB", ("1" if self.relay_closed else "0",))
            self._last_valid = self.grid.clock()  # only a command that succeeded feeds the watchdog
        return reply


class Fault(enum.Enum):
    """Simulated line faults for tests."""

    NONE = "none"
    SILENT = "silent"  # hears nothing, answers nothing (a broken line); the watchdog still runs
    GARBAGE = "garbage"  # acts on commands but every reply arrives with a bad checksum


class MeterServer:
    """Serves an EmulatedMeter on a pty or on TCP from one background thread.

    `start()` returns the URL for `MeterClient` (`/dev/pts/N` or `socket://127.0.0.1:PORT`).
    `unplug()` closes the port (the host sees a disconnect; the watchdog keeps running) and `plug()`
    opens it again (same TCP port; a new pty path). A TCP server serves one host at a time: a new
    connection replaces the previous one.
    """

    def __init__(self, meter: EmulatedMeter, *, transport: str = "tcp", host: str = "127.0.0.1",
                 port: int = 0) -> None:
        if transport not in ("tcp", "pty"):
            raise ValueError("transport must be 'tcp' or 'pty'")
        self.meter = meter
        self.transport = transport
        self.host = host
        self.port = port
        self.fault = Fault.NONE
        self.reply_delay = 0.0  # seconds; replies stay in order, as on a real line
        self._url = ""
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._lines = LineBuffer()
        self._pending: deque[tuple[float, bytes]] = deque()
        self._requests: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where the host connects (empty while unplugged or not started)."""
        return self._url

    def start(self) -> str:
        """Open the port and start serving; return the URL."""
        self._open()
        self._thread = threading.Thread(target=self._run, name=f"meter-{self.transport}",
                                        daemon=True)
        self._thread.start()
        return self._url

    def stop(self) -> None:
        """Stop serving and close everything (idempotent)."""
        if self._thread is not None:
            self._stopping.set()
            self._wake()
            self._thread.join(timeout=5)
            self._thread = None
        self._close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def unplug(self) -> None:
        """Close the port as if the cable were pulled."""
        self._call(self._close)

    def plug(self) -> str:
        """Open the port again after `unplug()`; return the (for a pty: new) URL."""
        self._call(self._open)
        return self._url

    def __enter__(self) -> MeterServer:
        """Start on entry."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop on exit."""
        self.stop()

    # ----------------------------------------------------------------- I/O thread

    def _call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the I/O thread (so no descriptor is closed under its select)."""
        if self._thread is None:
            fn()
            return
        done = threading.Event()
        self._requests.put((fn, done))
        self._wake()
        if not done.wait(timeout=5):
            raise TimeoutError("emulator thread did not respond")

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _open(self) -> None:
        self._lines.clear()
        self._pending.clear()
        if self.transport == "pty":
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo, no line editing: bytes pass unchanged
            os.set_blocking(master, False)
            self._master, self._slave = master, slave
            self._url = os.ttyname(slave)
        else:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(1)
            self.port = listener.getsockname()[1]  # keep the port for plug() after unplug()
            self._listener = listener
            self._url = f"socket://{self.host}:{self.port}"

    def _close(self) -> None:
        for sock in (self._client, self._listener):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._client = self._listener = None
        self._master = self._slave = None
        self._url = ""

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stopping.is_set():
            try:
                next_tick = self._iteration(next_tick)
            except Exception:
                # Why: a bug must show in the log, not turn the emulator into a silent meter.
                log.exception("emulator: unexpected error; still serving")
                time.sleep(TICK_S)

    def _iteration(self, next_tick: float) -> float:
        """Serve requests and I/O until the next tick; run the tick when due; return the next."""
        self._serve_requests()
        watched: list = [self._wake_r]
        watched += [s for s in (self._listener, self._client, self._master) if s is not None]
        timeout = max(0.0, next_tick - time.monotonic())
        try:
            readable, _, _ = select.select(watched, [], [], timeout)
        except (OSError, ValueError):
            readable = []
        for item in readable:
            self._on_readable(item)
        self._send_due()
        if time.monotonic() >= next_tick:
            self.meter.tick()
            next_tick = time.monotonic() + TICK_S
        return next_tick

    def _serve_requests(self) -> None:
        while True:
            try:
                fn, done = self._requests.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except OSError as exc:
                log.error("emulator: %s", exc)
            finally:
                done.set()

    def _on_readable(self, item: object) -> None:
        if item == self._wake_r:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 512)
        elif item is self._listener and self._listener is not None:
            client, _ = self._listener.accept()
            if self._client is not None:
                self._client.close()  # one host at a time; the newest wins
            client.setblocking(False)
            self._client = client
            self._lines.clear()
            self._pending.clear()
        elif item is self._client and self._client is not None:
            try:
                data = self._client.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._client.close()
                self._client = None
                return
            self._receive(data)
        elif item == self._master and self._master is not None:
            try:
                data = os.read(self._master, 4096)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EIO):
                    raise
                return
            self._receive(data)

    def _receive(self, data: bytes) -> None:
        if self.fault is Fault.SILENT:
            return
        for line in self._lines.feed(data):
            reply = self.meter.handle_line(line)
            if reply is None:
                continue
            if self.fault is Fault.GARBAGE:
                reply = reply[:-5] + b"%04X\n" % (int(reply[-5:-1], 16) ^ 0x5A5A)
            self._pending.append((time.monotonic() + self.reply_delay, reply))
        self._send_due()

    def _send_due(self) -> None:
        now = time.monotonic()
        while self._pending and self._pending[0][0] <= now:
            _, reply = self._pending.popleft()
            self._write(reply)

    def _write(self, data: bytes) -> None:
        try:
            if self._client is not None:
                self._client.send(data)
            elif self._master is not None:
                os.write(self._master, data)
        except (BlockingIOError, InterruptedError):
            log.warning("emulator: host is not reading; reply dropped")
        except OSError as exc:
            log.warning("emulator: write failed: %s", exc)
