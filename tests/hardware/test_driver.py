"""MeterClient against the emulator over a real pseudo-terminal and a real TCP socket."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest
import serial

from hardware.driver import (
    Domain,
    MeterClient,
    MeterDisconnected,
    MeterError,
    MeterProtocolError,
    MeterRefused,
    MeterTimeout,
)
from hardware.emulator import EmulatedMeter, Fault, MeterMemory, MeterServer, Microgrid
from hardware.models import LeadAcidBattery, LoadProfile, Plant, SolarArray
from hardware.protocol import ErrorCode, crc16
from tests.hardware.conftest import VECTOR_BLOCK, VECTOR_DOMAIN

TRANSPORTS = ["tcp", "pty"]


@pytest.fixture
def serve(request):
    """Factory: start an emulated meter on a transport; everything is stopped after the test."""
    started: list = []

    def start(kind: str = "supply", transport: str = "tcp", *, hour: float = 12.0,
              acceleration: float = 1.0, watchdog_s: int = 10, battery_wh: float = 2400,
              load_w: float = 400, provisioned: bool = True) -> MeterServer:
        plant = Plant(pv=SolarArray(peak_w=800), battery=LeadAcidBattery(capacity_wh=battery_wh),
                      load=LoadProfile.constant(load_w), time_s=hour * 3600)
        meter = EmulatedMeter(kind, Microgrid(plant, acceleration=acceleration),
                              watchdog_s=watchdog_s, state=MeterMemory.ephemeral())
        if provisioned:
            meter.provision(VECTOR_DOMAIN)
        server = MeterServer(meter, transport=transport)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def connect(request):
    """Factory: a MeterClient that is closed after the test."""
    clients: list[MeterClient] = []

    def open_client(url_or_port, **kwargs) -> MeterClient:
        client = MeterClient(url_or_port, **kwargs)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_identify_read_and_idempotent_relay(serve, connect, transport):
    server = serve("load", transport, watchdog_s=7)
    meter = connect(server.url, timeout=0.5)

    identity = meter.identify()
    assert (identity.meter_id, identity.kind, identity.rated_power_w, identity.watchdog_s) == \
        ("emu-load", "load", 400, 7)
    assert (identity.address, identity.domain) == (server.meter.address, VECTOR_DOMAIN)
    assert meter.identity == identity

    before = meter.read(VECTOR_BLOCK)
    assert before.relay_closed is False and before.power_w == 0
    assert 23 < before.voltage_v < 26
    assert meter.set_relay(True) is True
    assert meter.set_relay(True) is True  # again: still closed, never toggled open
    assert server.meter.relay_closed and meter.heartbeat() is True
    assert meter.read(VECTOR_BLOCK).relay_closed is True
    assert meter.set_relay(False) is False
    assert meter.set_relay(False) is False
    assert not server.meter.relay_closed and meter.heartbeat() is False
    assert meter.read(VECTOR_BLOCK).samples >= before.samples


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_watchdog_opens_the_relay_when_the_host_goes_silent(serve, connect, transport):
    server = serve("load", transport, watchdog_s=1)
    meter = connect(server.url, timeout=0.5)
    meter.set_relay(True)
    for _ in range(5):  # 1.5 s of heartbeats: longer than the watchdog, the relay stays closed
        time.sleep(0.3)
        assert meter.heartbeat() is True
    silent_since = time.monotonic()
    while server.meter.relay_closed and time.monotonic() - silent_since < 3:
        time.sleep(0.01)
    opened_after = time.monotonic() - silent_since
    assert 0.9 <= opened_after <= 2.0  # the 1 s watchdog, and slack for a busy machine
    assert meter.read(VECTOR_BLOCK).relay_closed is False


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_silent_meter_times_out_within_the_timeout(serve, connect, transport):
    server = serve("supply", transport)
    meter = connect(server.url, timeout=0.3, retries=0)
    meter.read(VECTOR_BLOCK)
    server.fault = Fault.SILENT
    start = time.monotonic()
    with pytest.raises(MeterTimeout) as info:
        meter.read(VECTOR_BLOCK)
    assert 0.3 <= time.monotonic() - start < 0.3 + 0.5  # the timeout, plus one poll and slack
    assert not isinstance(info.value, MeterDisconnected)

    patient = connect(server.url, timeout=0.2, retries=2) if transport == "tcp" else meter
    patient.retries = 2
    start = time.monotonic()
    with pytest.raises(MeterTimeout):
        patient.set_relay(False)
    assert time.monotonic() - start < 3 * patient.timeout + 0.5
    server.fault = Fault.NONE
    assert patient.read(VECTOR_BLOCK).relay_closed is False  # and it answers again


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_garbled_replies_raise_protocol_error_and_are_not_believed(serve, connect, transport):
    server = serve("supply", transport)
    meter = connect(server.url, timeout=0.5, retries=1)
    server.fault = Fault.GARBAGE
    with pytest.raises(MeterProtocolError, match="bad checksum"):
        meter.set_relay(True)
    assert server.meter.relay_closed  # the meter did act: RELAY is idempotent, so retry is safe
    server.fault = Fault.NONE
    assert meter.set_relay(True) is True


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unplugging_mid_session_raises_a_typed_error_at_once(serve, connect, transport):
    server = serve("load", transport)
    meter = connect(server.url, timeout=1.0)
    meter.set_relay(True)
    server.unplug()
    start = time.monotonic()
    with pytest.raises(MeterDisconnected):
        meter.read(VECTOR_BLOCK)
    with pytest.raises(MeterError):  # and again: no hang on a dead port
        meter.heartbeat()
    assert time.monotonic() - start < 1.0


def test_after_unplug_the_watchdog_has_opened_the_relay_and_a_new_client_resumes(serve, connect):
    server = serve("load", "tcp", watchdog_s=1)
    meter = connect(server.url, timeout=0.5)
    meter.set_relay(True)
    server.unplug()
    with pytest.raises(MeterDisconnected):
        connect(server.url, timeout=0.5)  # nobody listening: refused, typed
    time.sleep(1.2)
    server.plug()
    meter = connect(server.url, timeout=0.5)
    assert meter.read(VECTOR_BLOCK).relay_closed is False
    assert meter.set_relay(True) is True


def test_opening_a_missing_port_is_a_typed_error(connect, tmp_path):
    with pytest.raises(MeterDisconnected):
        connect(str(tmp_path / "ttyUSB9"), timeout=0.2)


def test_a_late_reply_to_an_earlier_attempt_is_discarded(serve, connect):
    server = serve("supply", "tcp")
    meter = connect(server.url, timeout=0.3, retries=0)
    server.reply_delay = 0.5
    with pytest.raises(MeterTimeout):
        meter.set_relay(True)  # its reply ("1") is still on the way
    server.reply_delay = 0.0
    # The next reply on the line is the stale "relay 1"; believing it would report closed.
    assert meter.set_relay(False) is False
    assert server.meter.relay_closed is False


def test_an_echoed_request_is_not_mistaken_for_a_reply(connect):
    # loop:// sends our own bytes back, like a terminal with echo on.
    port = serial.serial_for_url("loop://", timeout=0.05)
    meter = connect(port, timeout=0.2, retries=0)
    with pytest.raises(MeterProtocolError, match="not a reply"):
        meter.set_relay(True)
    assert port.timeout is not None


def test_an_error_reply_is_a_refusal_and_not_retried(serve, connect):
    server = serve("supply", "tcp")
    meter = connect(server.url, timeout=1.0, retries=2)
    server.meter.sensor_ok = False
    start = time.monotonic()
    with pytest.raises(MeterRefused) as info:
        meter.read(VECTOR_BLOCK)
    assert info.value.code == ErrorCode.SENSOR_FAULT and time.monotonic() - start < 0.5


def test_supply_energy_grows_with_the_sun_within_the_reported_rating(serve, connect):
    noon = connect(serve("supply", "tcp", hour=11, acceleration=3600,
                         battery_wh=100_000).url, timeout=0.5)
    night = connect(serve("supply", "pty", hour=22, acceleration=3600).url, timeout=0.5)
    rated = noon.identify().rated_power_w
    assert rated == 800 * 3600
    # The longest the meter can have counted: from before the first READ went out to after
    # the second came back (on a busy machine either may wait for the CPU).
    t0 = time.monotonic()
    first, n_first = noon.read(VECTOR_BLOCK), night.read(VECTOR_BLOCK)
    time.sleep(0.6)
    second = noon.read(VECTOR_BLOCK)
    t1 = time.monotonic()
    n_second = night.read(VECTOR_BLOCK)
    gained = second.energy_wh - first.energy_wh
    # 0.6 s at 3600x is 36 simulated minutes of near-peak sun: about 470 Wh.
    assert 300 < gained <= rated * (t1 - t0) / 3600 + 1
    assert 700 < second.power_w <= 800
    assert n_second.energy_wh == n_first.energy_wh and n_second.power_w == 0


def test_load_meter_counts_only_while_closed_and_drains_the_battery(serve, connect):
    server = serve("load", "tcp", hour=21, acceleration=3600, load_w=500)
    meter = connect(server.url, timeout=0.5)
    battery = server.meter.grid.plant.battery
    start = meter.read(VECTOR_BLOCK)
    time.sleep(0.3)
    assert meter.read(VECTOR_BLOCK).energy_wh == start.energy_wh
    soc = battery.soc
    meter.set_relay(True)
    time.sleep(0.4)
    closed = meter.read(VECTOR_BLOCK)
    assert closed.energy_wh - start.energy_wh > 100  # 500 W for ~24 simulated minutes
    assert closed.power_w == pytest.approx(500)
    assert battery.soc < soc
    meter.set_relay(False)
    opened = meter.read(VECTOR_BLOCK)
    time.sleep(0.3)
    assert meter.read(VECTOR_BLOCK).energy_wh == opened.energy_wh
    assert meter.read(VECTOR_BLOCK).power_w == 0


# --------------------------------------------------------------------------- signed readings


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_install_once_then_every_reading_verifies_against_the_id_address(serve, connect,
                                                                          transport):
    server = serve("supply", transport, acceleration=600, provisioned=False)
    meter = connect(server.url, timeout=0.5)
    identity = meter.identify()
    assert identity.provisioned is False
    with pytest.raises(MeterRefused) as info:
        meter.read(VECTOR_BLOCK)
    assert info.value.code == ErrorCode.NOT_PROVISIONED
    assert meter.provision(VECTOR_DOMAIN) == VECTOR_DOMAIN
    assert meter.provision(VECTOR_DOMAIN) == VECTOR_DOMAIN  # idempotent
    assert meter.identity.domain == VECTOR_DOMAIN == meter.identify().domain
    with pytest.raises(MeterRefused) as info:
        meter.provision(Domain(1, VECTOR_DOMAIN.registry))
    assert info.value.code == ErrorCode.ALREADY_PROVISIONED
    readings = []
    for _ in range(3):
        readings.append(meter.read(VECTOR_BLOCK))
        time.sleep(0.1)
    assert all(r.signer(VECTOR_DOMAIN, identity.address) == identity.address for r in readings)
    assert [r.sequence for r in readings] == [1, 2, 3]
    assert readings[0].energy_wh <= readings[1].energy_wh <= readings[2].energy_wh
    assert readings[2].energy_wh > readings[0].energy_wh  # noon sun at 600x


class Tamperer:
    """A man in the middle on TCP: rewrites the counter digits of every READ reply.

    With `fix_crc` it also recomputes the CRC, so only the signature can tell.
    """

    def __init__(self, upstream_port: int, *, fix_crc: bool) -> None:
        self.upstream_port = upstream_port
        self.fix_crc = fix_crc
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.rewritten = 0
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = [self.listener]
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        self._sockets += [client, upstream]
        for args in ((client, upstream, False), (upstream, client, True)):
            thread = threading.Thread(target=self._pump, args=args, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, source: socket.socket, sink: socket.socket, tamper: bool) -> None:
        pending = b""
        while True:
            try:
                data = source.recv(4096)
            except OSError:
                return
            if not data:
                return
            if not tamper:
                sink.sendall(data)
                continue
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                sink.sendall(self._rewrite(line) + b"\n")

    def _rewrite(self, line: bytes) -> bytes:
        body, _, crc = line[1:].rpartition(b"*")
        fields = body.split(b",")
        if fields[1:3] != [b"OK", b"READ"]:
            return line
        fields[3] = str(int(fields[3]) + 500).encode()  # 500 Wh the meter never measured
        self.rewritten += 1
        body = b",".join(fields)
        return b"$" + body + b"*" + (b"%04X" % crc16(body) if self.fix_crc else crc)

    def close(self) -> None:
        """Close every socket of the proxy."""
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def tamperer():
    """Factory: a digit-rewriting proxy in front of a TCP meter; closed after the test."""
    made: list[Tamperer] = []

    def make(server: MeterServer, *, fix_crc: bool) -> Tamperer:
        proxy = Tamperer(server.port, fix_crc=fix_crc)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


def test_a_man_in_the_middle_who_keeps_the_crc_is_caught_by_the_crc(serve, connect, tamperer):
    server = serve("supply", "tcp")
    proxy = tamperer(server, fix_crc=False)
    meter = connect(f"socket://127.0.0.1:{proxy.port}", timeout=0.5, retries=1)
    address = meter.identify().address  # ID passes unchanged
    with pytest.raises(MeterProtocolError, match="bad checksum"):
        meter.read(VECTOR_BLOCK)
    assert proxy.rewritten == 2  # both attempts were rewritten and both refused
    assert server.meter.state.sequence == 2  # the meter did sign two readings, never delivered
    assert address == server.meter.address


def test_a_man_in_the_middle_who_fixes_the_crc_is_caught_by_the_signature(serve, connect,
                                                                           tamperer):
    server = serve("supply", "tcp")
    honest = connect(server.url, timeout=0.5)
    address = honest.identify().address
    genuine = honest.read(VECTOR_BLOCK)
    honest.close()
    proxy = tamperer(server, fix_crc=True)
    meter = connect(f"socket://127.0.0.1:{proxy.port}", timeout=0.5)
    forged = meter.read(VECTOR_BLOCK)  # framing and CRC are fine now
    assert proxy.rewritten == 1
    assert forged.energy_wh >= genuine.energy_wh + 500
    assert forged.signer(VECTOR_DOMAIN, address) != address
    assert forged.verify(VECTOR_DOMAIN, address) is False
    assert genuine.verify(VECTOR_DOMAIN, address) is True


# --------------------------------------------------------------------------- the emulator process


def start_emulator(*args: str) -> tuple[subprocess.Popen, list[tuple[str, str, str]]]:
    """Run `python -m hardware.emulator ARGS`; return it and its (name, address, URL) lines."""
    proc = subprocess.Popen([sys.executable, "-m", "hardware.emulator", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    meters = []
    count = max(1, args.count("--meter"))
    for _ in range(count):
        line = proc.stdout.readline()
        match = re.fullmatch(r"\w+ meter (\S+) (0x[0-9a-fA-F]{40}) on (\S+) .*\n", line)
        assert match, line + proc.stderr.read()
        meters.append(match.groups())
    return proc, meters


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Stop the emulator process (SIGKILL: a power cut) and close its pipes."""
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=10)
    proc.stdout.close()
    proc.stderr.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_killed_and_restarted_emulator_continues_its_counter_and_sequence(tmp_path):
    key_file = tmp_path / "meter.key"
    args = ("--key-file", str(key_file), "--meter", "supply:roof-1", "--acceleration", "600",
            "--start-hour", "11")
    proc, [(name, address, url)] = start_emulator(*args)
    try:
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        with MeterClient(url, timeout=1.0) as meter:
            assert meter.identify().address == address and name == "roof-1"
            meter.provision(VECTOR_DOMAIN)
            before = [meter.read(VECTOR_BLOCK) for _ in range(3)]
    finally:
        stop(proc)  # kill -9: no chance to save anything more
    proc, [(_, address_again, url)] = start_emulator(*args)
    try:
        assert address_again == address
        with MeterClient(url, timeout=1.0) as meter:
            identity = meter.identify()
            assert (identity.address, identity.domain) == (address, VECTOR_DOMAIN)
            after = meter.read(VECTOR_BLOCK)
    finally:
        stop(proc, signal.SIGTERM)
    assert after.sequence == before[-1].sequence + 1  # never reused
    assert after.energy_wh >= before[-1].energy_wh > 0  # never below what was signed
    assert all(r.verify(VECTOR_DOMAIN, address) for r in (*before, after))


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_one_emulator_serves_several_meters_each_with_its_own_key(tmp_path):
    proc, meters = start_emulator("--key-dir", str(tmp_path / "keys"), "--meter",
                                  "supply:roof-1", "--meter", "load:house-1", "--meter",
                                  "load:house-2")
    try:
        assert [m[0] for m in meters] == ["roof-1", "house-1", "house-2"]
        assert len({m[1] for m in meters}) == 3
        for _, address, url in meters:
            with MeterClient(url, timeout=1.0) as meter:
                meter.provision(VECTOR_DOMAIN)
                assert meter.read(VECTOR_BLOCK).verify(VECTOR_DOMAIN, address)
        assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == \
            ["house-1.key", "house-2.key", "roof-1.key"]
    finally:
        stop(proc, signal.SIGTERM)
    assert proc.returncode == 0
