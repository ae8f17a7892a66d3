"""Meter emulator: the firmware's behaviour in Python, served over a pseudo-terminal or TCP.

`EmulatedMeter` is the meter (protocol, counters, relay, watchdog, signed readings) measuring a
`Microgrid` (the physics of hardware/models.py on an optionally accelerated clock). Its
`MeterMemory` is its EEPROM: a key file of its own (mode 0600) holding its secp256k1 key, the last
signed counter and sequence, and its domain once provisioned; it is never shared with the host.
`MeterServer` serves one meter on a pty (`/dev/pts/N`) or on TCP (`socket://127.0.0.1:PORT`) from
a background thread, and can simulate faults: a silent meter, garbled replies, slow replies, an
unplugged cable. `python -m hardware.emulator` serves one or several meters on one micro-grid.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import errno
import json
import logging
import math
import os
import queue
import re
import secrets
import select
import signal
import socket
import sys
import threading
import time
import tty
from collections import deque
from collections.abc import Callable
from pathlib import Path

from hardware.models import LeadAcidBattery, LoadProfile, Plant, SolarArray
from hardware.protocol import (
    KINDS,
    LOAD,
    SUPPLY,
    ErrorCode,
    Identity,
    LineBuffer,
    MeterProtocolError,
    ReadReply,
    encode_error,
    encode_ok,
    parse_request,
    provision_fields,
)
from hardware.signing import UINT64_MAX, BlockRef, Domain, meter_address, sign_reading

log = logging.getLogger(__name__)

FIRMWARE = "emulator-2.0"
TICK_S = 0.05  # the sample period: counters, watchdog and delayed replies advance this often


# The same short texts as the firmware, so an ERR reply reads the same from both.
ERROR_TEXT = {
    ErrorCode.BAD_CHECKSUM: "bad checksum",
    ErrorCode.BAD_FRAME: "bad frame",
    ErrorCode.LINE_TOO_LONG: "line too long",
    ErrorCode.UNKNOWN_COMMAND: "unknown command",
    ErrorCode.BAD_ARGUMENT: "bad argument",
    ErrorCode.SENSOR_FAULT: "sensor fault",
    ErrorCode.ALREADY_PROVISIONED: "already provisioned",
    ErrorCode.NOT_PROVISIONED: "not provisioned",
}
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_METER_NAME = re.compile(r"[A-Za-z0-9._-]{1,32}")


def _write_whole(path: Path, text: str) -> Path:
    """Write `text` to a new file `path` (mode 0600), flushed to disk; returns `path`.

    The device side's own atomic writer: hardware/ imports nothing from dapp (dapp/atomic.py).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    return path


def _sync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename or link in it) to disk, where the OS allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class MeterMemory:
    """An emulated meter's EEPROM: its key, last signed counter and sequence, and its domain.

    With a `path` it lives in a JSON file created with mode 0600 on first use (the key is made
    then, as the firmware makes its key at first boot) and rewritten atomically before every
    signed reading leaves the meter, so a kill at any moment never lets a sequence be reused or
    a signed counter go back. Without a path (`ephemeral()`) it lives in memory only.
    """

    def __init__(self, private_key: bytes, *, energy_wh: int = 0, sequence: int = 0,
                 domain: Domain | None = None, path: Path | None = None) -> None:
        if len(private_key) != 32 or not 0 < int.from_bytes(private_key, "big") < _SECP256K1_N:
            raise ValueError("not a secp256k1 private key")
        if not (0 <= energy_wh <= UINT64_MAX and 0 <= sequence <= UINT64_MAX):
            raise ValueError("counter or sequence out of range")
        self._key = private_key
        self.address = meter_address(private_key)
        self.energy_wh = energy_wh  # the last counter signed (never signs below it)
        self.sequence = sequence  # the last sequence signed (the next one is larger)
        self.domain = domain
        self.path = path

    def __repr__(self) -> str:
        return f"MeterMemory({self.address}, path={self.path})"  # never the key

    @classmethod
    def ephemeral(cls) -> MeterMemory:
        """A new meter whose EEPROM is RAM: a fresh key, forgotten when the process ends."""
        return cls(_new_key())

    @classmethod
    def open(cls, path: str | os.PathLike) -> MeterMemory:
        """Load the meter at `path`, or create it there (a new key, mode 0600) if it is absent.

        A new key file is written whole beside it and linked into place, so a crash never
        leaves half a key file, and two starts cannot both create one.
        """
        path = Path(path)
        if path.exists():
            return cls._load(path)
        state = cls(_new_key(), path=path)
        tmp = _write_whole(path.with_name(f"{path.name}.new-{secrets.token_hex(4)}"), state._dump())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return cls._load(path)
        finally:
            tmp.unlink()
        _sync_directory(path.parent)
        log.info("%s: new meter key %s", path, state.address)
        return state

    @classmethod
    def in_directory(cls, directory: str | os.PathLike, name: str) -> MeterMemory:
        """The meter `name` in a key directory (one file per meter, `NAME.key`; dir mode 0700)."""
        if not _METER_NAME.fullmatch(name):
            raise ValueError(f"bad meter name {name!r}")
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls.open(directory / f"{name}.key")

    @classmethod
    def _load(cls, path: Path) -> MeterMemory:
        if path.stat().st_mode & 0o077:
            raise ValueError(f"{path}: a meter key file must not be readable by others "
                             "(chmod 600)")
        try:
            data = json.loads(path.read_text())
            domain = (Domain(int(data["chain_id"]), str(data["registry"]))
                      if data.get("chain_id") is not None else None)
            return cls(bytes.fromhex(data["private_key"]), energy_wh=int(data["energy_wh"]),
                       sequence=int(data["sequence"]), domain=domain, path=path)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a meter key file: {exc}") from exc

    def _dump(self) -> str:
        return json.dumps({
            "version": 1,
            "address": self.address,
            "private_key": self._key.hex(),
            "energy_wh": self.energy_wh,
            "sequence": self.sequence,
            "chain_id": self.domain.chain_id if self.domain else None,
            "registry": self.domain.registry if self.domain else None,
        }, indent=1) + "\n"

    def save(self) -> None:
        """Write the state to its file atomically (no-op for an ephemeral meter)."""
        if self.path is None:
            return
        # Before every signed reading: no directory fsync (a rename lost to a power cut makes
        # the meter sign an old sequence again, which the registry refuses as a replay).
        os.replace(_write_whole(self.path.with_name(self.path.name + ".tmp"), self._dump()),
                   self.path)

    def sign_next(self, energy_wh: int, block: BlockRef) -> tuple[int, int, bytes]:
        """Sign the next reading of `block`: (counter, sequence, signature), persisted before it
        is returned.

        The counter signed is never below the last one signed; the sequence grows by one.
        """
        if self.domain is None:
            raise RuntimeError("not provisioned")
        energy = max(energy_wh, self.energy_wh)
        sequence = self.sequence + 1
        signature = sign_reading(self._key, self.domain, energy, sequence, block)
        self.energy_wh, self.sequence = energy, sequence
        self.save()  # before the reading leaves the meter
        return energy, sequence, signature


def _new_key() -> bytes:
    while True:
        key = secrets.token_bytes(32)
        if 0 < int.from_bytes(key, "big") < _SECP256K1_N:
            return key


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
    `state` is the meter's EEPROM (key, last signed counter and sequence, domain); the counter
    resumes from the last one signed. Without it the meter gets a fresh in-memory key.
    """

    def __init__(self, kind: str, grid: Microgrid, *, meter_id: str | None = None,
                 rated_power_w: float | None = None, watchdog_s: int = 10,
                 energy_offset_wh: int = 0, state: MeterMemory | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if not 1 <= watchdog_s <= 3600:
            raise ValueError("watchdog must be 1..3600 s")
        self.kind = kind
        self.grid = grid
        plant = grid.plant
        if rated_power_w is None:
            rated_power_w = plant.pv.peak_w if kind == SUPPLY else plant.load.peak_w
        if kind == SUPPLY and rated_power_w < plant.pv.peak_w:
            raise ValueError("a supply meter's rating must cover the PV peak power")
        if kind == LOAD and rated_power_w < plant.load.peak_w:
            raise ValueError("a load meter's rating must cover the load profile's peak")
        self.state = state or MeterMemory.ephemeral()
        self.meter_id = meter_id or f"emu-{kind}"
        self.rated_power_w = max(1, math.ceil(rated_power_w * grid.acceleration))
        self.watchdog_s = watchdog_s
        Identity.from_fields(self.identity.fields())  # validates meter_id etc. early
        # The physics restarts at 0 with the process; the counter resumes from the last signed.
        self.energy_offset_wh = energy_offset_wh + self.state.energy_wh
        self.relay_closed = False  # a meter powers up with its relay open
        self.samples = 0
        self.watchdog_trips = 0
        self.sensor_ok = True  # False: READ answers ERR 6, as a meter whose sensor fell off the bus
        self._last_valid = grid.clock()

    # ----------------------------------------------------------------- state

    @property
    def identity(self) -> Identity:
        """What ID reports now (the domain appears once provisioned)."""
        return Identity(meter_id=self.meter_id, firmware=FIRMWARE, kind=self.kind,
                        rated_power_w=self.rated_power_w, watchdog_s=self.watchdog_s,
                        address=self.state.address, domain=self.state.domain)

    @property
    def address(self) -> str:
        """The meter's own address (from the key in its state)."""
        return self.state.address

    def provision(self, domain: Domain) -> bool:
        """Set the domain once (INSTALL); True if now provisioned with exactly `domain`."""
        with self.grid.lock:
            if self.state.domain is None:
                self.state.domain = domain
                self.state.save()
                log.info("%s: provisioned for chain %d, registry %s", self.meter_id,
                         domain.chain_id, domain.registry)
            return self.state.domain == domain

    def energy_wh(self) -> float:
        """The exact (fractional) energy counted so far."""
        plant = self.grid.sync()
        measured = plant.supply_wh if self.kind == SUPPLY else plant.load_wh
        return self.energy_offset_wh + measured

    def reading(self, block: BlockRef) -> ReadReply:
        """What READ of `block` reports now: a new signed reading (the sequence grows; needs a
        domain)."""
        with self.grid.lock:
            energy = self.energy_wh()
            plant = self.grid.plant
            power = plant.supply_w if self.kind == SUPPLY else plant.load_w
            volts = plant.battery.voltage()
            signed_wh, sequence, signature = self.state.sign_next(math.floor(energy), block)
            return ReadReply(signed_wh, power, volts, power / volts, self.relay_closed,
                                 self.samples, sequence, signature, block)

    def set_relay(self, closed: bool) -> None:
        """Close or open the relay (idempotent); a load meter connects/disconnects the load."""
        with self.grid.lock:
            plant = self.grid.sync()  # energy so far was counted with the old state
            if self.kind == LOAD:
                plant.load_connected = closed
                if not closed:
                    plant.load_w = 0.0
            if closed != self.relay_closed:
                log.info("%s: relay %s", self.meter_id, "closed" if closed else "open")
            self.relay_closed = closed

    def tick(self) -> None:
        """One sample period: advance the physics, count the sample, run the watchdog."""
        with self.grid.lock:
            self.grid.sync()
            self.samples = (self.samples + 1) % 2**32
            if self.relay_closed and self.grid.clock() - self._last_valid >= self.watchdog_s:
                self.watchdog_trips += 1
                log.warning("%s: watchdog: no valid command for %d s, relay opened",
                            self.meter_id, self.watchdog_s)
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
                code = None
                if self.state.domain is None:
                    code = ErrorCode.NOT_PROVISIONED
                elif not self.sensor_ok:
                    code = ErrorCode.SENSOR_FAULT
                if code is not None:
                    return encode_error(request.seq, code, ERROR_TEXT[code])  # no watchdog feed
                assert request.block is not None
                reply = encode_ok(request.seq, "READ", self.reading(request.block).fields())
            elif request.command == "INSTALL":
                assert request.domain is not None
                if not self.provision(request.domain):
                    code = ErrorCode.ALREADY_PROVISIONED
                    return encode_error(request.seq, code, ERROR_TEXT[code])
                reply = encode_ok(request.seq, "INSTALL", provision_fields(request.domain))
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
        """Run `fn` on the I/O thread (so no descriptor is closed under its poll)."""
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
        # poll(), not select(): a process serving hundreds of meters has descriptors >= 1024,
        # which select() refuses (every such meter would go silent, its thread spinning).
        watched: dict[int, object] = {self._wake_r: self._wake_r}
        for item in (self._listener, self._client):
            if item is not None:
                watched[item.fileno()] = item
        if self._master is not None:
            watched[self._master] = self._master
        poller = select.poll()
        for fd in watched:
            poller.register(fd, select.POLLIN)
        timeout_ms = max(0, math.ceil((next_tick - time.monotonic()) * 1000))
        for fd, _ in poller.poll(timeout_ms):
            self._on_readable(watched[fd])
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


# --------------------------------------------------------------------------- command line


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's own default-showing help, quiet for options without a default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The options of `python -m hardware.emulator`."""
    p = argparse.ArgumentParser(
        prog="python -m hardware.emulator", formatter_class=_DefaultsShown,
        description="Serve emulated meters (hardware/PROTOCOL.md) that share one micro-grid "
        "(PV, lead-acid battery, load). Each meter keeps its own key file: its EEPROM.")
    p.add_argument("--meter", action="append", metavar="KIND[:NAME]",
                   help="a meter to serve, e.g. supply:house-1 (repeat for several on one grid; "
                   "default: one supply meter emu-supply)")
    keys = p.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key-file", type=Path, metavar="PATH",
                      help="the key file of the (single) meter; created with mode 0600 on first "
                      "start, it holds the key, the counter, the sequence and the domain")
    keys.add_argument("--key-dir", type=Path, metavar="DIR",
                      help="a directory of key files, one per meter (NAME.key, mode 0600)")
    p.add_argument("--tcp", type=int, default=0, metavar="PORT",
                   help="TCP port of the first meter, the next meters on the following ports "
                   "(0: any free port)")
    p.add_argument("--pty", action="store_true", help="serve on pseudo-terminals instead")
    p.add_argument("--host", default="127.0.0.1", help="TCP address")
    p.add_argument("--watchdog", type=int, default=10, help="watchdog seconds")
    p.add_argument("--peak-power", type=float, default=800.0, help="PV peak W")
    p.add_argument("--battery-wh", type=float, default=2400.0, help="battery Wh")
    p.add_argument("--load-profile", default="200", help="constant W or hour:W steps")
    p.add_argument("--acceleration", type=float, default=1.0,
                   help="simulated seconds per real second")
    p.add_argument("--start-hour", type=float, default=10.0, help="time of day at start")
    return p


def main(argv: list[str] | None = None) -> int:
    """Serve the meters until SIGINT/SIGTERM, printing a line per meter (name, address, URL)."""
    args = build_parser().parse_args(argv)
    specs = []
    for spec in args.meter or [SUPPLY]:
        kind, _, name = spec.partition(":")
        specs.append((kind, name or f"emu-{kind}"))
    try:
        if args.key_file is not None and len(specs) != 1:
            raise ValueError("--key-file serves one meter; use --key-dir for several")
        plant = Plant(pv=SolarArray(peak_w=args.peak_power),
                      battery=LeadAcidBattery(capacity_wh=args.battery_wh),
                      load=LoadProfile.parse(args.load_profile), time_s=args.start_hour * 3600)
        grid = Microgrid(plant, acceleration=args.acceleration)
        meters = []
        for kind, name in specs:
            state = (MeterMemory.open(args.key_file) if args.key_file is not None
                     else MeterMemory.in_directory(args.key_dir, name))
            meters.append(EmulatedMeter(kind, grid, meter_id=name, watchdog_s=args.watchdog,
                                        state=state))
    except (ValueError, OSError) as exc:
        print(f"hardware.emulator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    servers = []
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        for i, meter in enumerate(meters):
            port = args.tcp + i if args.tcp else 0
            server = MeterServer(meter, transport="pty" if args.pty else "tcp", host=args.host,
                                 port=port)
            servers.append(server)
            url = server.start()
            print(f"{meter.kind} meter {meter.meter_id} {meter.address} on {url} "
                  f"(rated {meter.rated_power_w} W)", flush=True)
        stop.wait()
    finally:
        for server in servers:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
