"""MeterClient against the emulator over a real pseudo-terminal and a real TCP socket."""

from __future__ import annotations

import time

import pytest
import serial

from dapp.errors import MeterError
from hardware.driver import (
    MeterClient,
    MeterDisconnected,
    MeterProtocolError,
    MeterRefused,
    MeterTimeout,
)
from hardware.emulator import EmulatedMeter, Fault, MeterServer, Microgrid
from hardware.models import LeadAcidBattery, LoadProfile, Plant, SolarArray
from hardware.protocol import ErrorCode

TRANSPORTS = ["tcp", "pty"]


@pytest.fixture
def serve(request):
    """Factory: start an emulated meter on a transport; everything is stopped after the test."""
    started: list = []

    def start(kind: str = "supply", transport: str = "tcp", *, hour: float = 12.0,
              acceleration: float = 1.0, watchdog_s: int = 10, battery_wh: float = 2400,
              load_w: float = 400) -> MeterServer:
        plant = Plant(pv=SolarArray(peak_w=800), battery=LeadAcidBattery(capacity_wh=battery_wh),
                      load=LoadProfile.constant(load_w), time_s=hour * 3600)
        meter = EmulatedMeter(kind, Microgrid(plant, acceleration=acceleration),
                              watchdog_s=watchdog_s)
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
    assert meter.identity == identity

    before = meter.read()
    assert before.relay_closed is False and before.power_w == 0
    assert 23 < before.voltage_v < 26
    assert meter.set_relay(True) is True
    assert meter.set_relay(True) is True  # again: still closed, never toggled open
    assert server.meter.relay_closed and meter.heartbeat() is True
    assert meter.read().relay_closed is True
    assert meter.set_relay(False) is False
    assert meter.set_relay(False) is False
    assert not server.meter.relay_closed and meter.heartbeat() is False
    assert meter.read().samples >= before.samples


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
    assert 0.9 <= opened_after <= 1.5
    assert meter.read().relay_closed is False


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_silent_meter_times_out_within_the_timeout(serve, connect, transport):
    server = serve("supply", transport)
    meter = connect(server.url, timeout=0.3, retries=0)
    meter.read()
    server.fault = Fault.SILENT
    start = time.monotonic()
    with pytest.raises(MeterTimeout) as info:
        meter.read()
    assert 0.3 <= time.monotonic() - start < 0.3 + 0.25  # the timeout, plus one poll and slack
    assert not isinstance(info.value, MeterDisconnected)

    patient = connect(server.url, timeout=0.2, retries=2) if transport == "tcp" else meter
    patient.retries = 2
    start = time.monotonic()
    with pytest.raises(MeterTimeout):
        patient.set_relay(False)
    assert time.monotonic() - start < 3 * patient.timeout + 0.2
    server.fault = Fault.NONE
    assert patient.read().relay_closed is False  # and it answers again


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
        meter.read()
    with pytest.raises(MeterError):  # and again: no hang on a dead port
        meter.heartbeat()
    assert time.monotonic() - start < 1.0


def test_after_unplug_the_watchdog_has_opened_the_relay_and_reconnect_resumes(serve, connect):
    server = serve("load", "tcp", watchdog_s=1)
    meter = connect(server.url, timeout=0.5)
    meter.set_relay(True)
    server.unplug()
    with pytest.raises(MeterDisconnected):
        meter.reconnect()  # nobody listening: refused, typed
    time.sleep(1.2)
    server.plug()
    meter.reconnect()
    assert meter.read().relay_closed is False
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
        meter.read()
    assert info.value.code == ErrorCode.SENSOR_FAULT and time.monotonic() - start < 0.5


def test_supply_energy_grows_with_the_sun_within_the_reported_rating(serve, connect):
    noon = connect(serve("supply", "tcp", hour=11, acceleration=3600,
                         battery_wh=100_000).url, timeout=0.5)
    night = connect(serve("supply", "pty", hour=22, acceleration=3600).url, timeout=0.5)
    rated = noon.identify().rated_power_w
    assert rated == 800 * 3600
    first, n_first, t0 = noon.read(), night.read(), time.monotonic()
    time.sleep(0.6)
    second, n_second, t1 = noon.read(), night.read(), time.monotonic()
    gained = second.energy_wh - first.energy_wh
    # 0.6 s at 3600x is 36 simulated minutes of near-peak sun: about 470 Wh.
    assert 300 < gained <= rated * (t1 - t0) / 3600 + 1
    assert 700 < second.power_w <= 800
    assert n_second.energy_wh == n_first.energy_wh and n_second.power_w == 0


def test_load_meter_counts_only_while_closed_and_drains_the_battery(serve, connect):
    server = serve("load", "tcp", hour=21, acceleration=3600, load_w=500)
    meter = connect(server.url, timeout=0.5)
    battery = server.meter.grid.plant.battery
    start = meter.read()
    time.sleep(0.3)
    assert meter.read().energy_wh == start.energy_wh
    soc = battery.soc
    meter.set_relay(True)
    time.sleep(0.4)
    closed = meter.read()
    assert closed.energy_wh - start.energy_wh > 100  # 500 W for ~24 simulated minutes
    assert closed.power_w == pytest.approx(500)
    assert battery.soc < soc
    meter.set_relay(False)
    opened = meter.read()
    time.sleep(0.3)
    assert meter.read().energy_wh == opened.energy_wh
    assert meter.read().power_w == 0
