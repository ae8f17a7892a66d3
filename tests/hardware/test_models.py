"""Physics of the emulator (PV, lead-acid battery, load profile) and the emulated meter's logic."""

from __future__ import annotations

import math

import pytest

from hardware.emulator import EmulatedMeter, Microgrid
from hardware.models import LeadAcidBattery, LoadProfile, Plant, SolarArray
from hardware.protocol import (
    ErrorCode,
    Identity,
    ReadReply,
    Request,
    encode_frame,
    parse_reply,
)
from tests.hardware.conftest import VECTOR_BLOCK, VECTOR_DOMAIN


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- PV


def test_sun_curve_is_zero_at_night_and_peaks_at_noon():
    pv = SolarArray(peak_w=800, sunrise_h=6, sunset_h=18)
    assert [pv.power_at(h) for h in (0, 3, 5.99, 6, 18, 21, 23.9)] == [0.0] * 7
    assert pv.power_at(12) == pytest.approx(800)
    assert pv.power_at(9) == pytest.approx(pv.power_at(15))
    assert 0 < pv.power_at(7) < pv.power_at(9) < pv.power_at(12)
    assert pv.power_at(36) == pytest.approx(800)  # the next day's noon


def test_a_day_of_sun_into_a_big_battery_is_the_integral_of_the_curve():
    plant = Plant(pv=SolarArray(peak_w=800), battery=LeadAcidBattery(capacity_wh=1e6, soc=0.2),
                  time_s=0.0)
    plant.advance(24 * 3600)
    assert plant.supply_wh == pytest.approx(800 * 12 * 2 / math.pi, rel=1e-3)  # ~6112 Wh
    assert plant.battery.stored_wh == pytest.approx(0.2e6 + plant.supply_wh * 0.85, rel=1e-6)


# --------------------------------------------------------------------------- battery


def test_battery_charge_is_lossy_and_stops_when_full():
    battery = LeadAcidBattery(capacity_wh=1000, soc=0.5, charge_efficiency=0.8)
    assert battery.charge(400, 3600) == pytest.approx(400)
    assert battery.stored_wh == pytest.approx(500 + 320)
    # Room for 180 Wh stored = 225 Wh at the terminals; the rest is refused.
    accepted = battery.charge(400, 3600)
    assert accepted == pytest.approx(225)
    assert battery.soc == pytest.approx(1.0)
    assert battery.charge(400, 60) == 0.0


def test_battery_discharge_is_lossy_and_stops_at_the_lead_acid_floor():
    battery = LeadAcidBattery(capacity_wh=1000, soc=0.5, discharge_efficiency=0.9, min_soc=0.2)
    assert battery.discharge(90, 3600) == pytest.approx(90)
    assert battery.stored_wh == pytest.approx(400)
    # 200 Wh above the floor deliver 180 Wh, then nothing.
    assert battery.discharge(1000, 3600) == pytest.approx(180)
    assert battery.soc == pytest.approx(0.2)
    assert battery.discharge(100, 60) == 0.0


def test_battery_voltage_rises_with_charge():
    low, high = LeadAcidBattery(soc=0.2), LeadAcidBattery(soc=1.0)
    assert 23.0 < low.voltage() < high.voltage() < 26.0


@pytest.mark.parametrize("kwargs", [{"capacity_wh": 0}, {"min_soc": 0.9, "max_soc": 0.5},
                                    {"charge_efficiency": 0}, {"discharge_efficiency": 1.5}])
def test_impossible_batteries_are_refused(kwargs):
    with pytest.raises(ValueError):
        LeadAcidBattery(**kwargs)


# --------------------------------------------------------------------------- load


def test_load_profile_steps_and_wraps_round_midnight():
    load = LoadProfile.parse("7:400, 19:800, 23:150")
    assert load.power_at(6.9) == 150  # before the first point: yesterday's last one
    assert load.power_at(7) == 400
    assert load.power_at(18.99) == 400
    assert load.power_at(20) == 800
    assert load.power_at(23.5) == 150
    assert load.peak_w == 800
    assert LoadProfile.parse("250").power_at(3) == 250


@pytest.mark.parametrize("text", ["", "abc", "7:", "25:100", "7:-5", "1:2:3"])
def test_bad_load_profiles_are_refused(text):
    with pytest.raises(ValueError):
        LoadProfile.parse(text)


def test_load_draws_only_while_connected_and_drains_the_battery():
    plant = Plant(pv=SolarArray(peak_w=0), battery=LeadAcidBattery(capacity_wh=2400, soc=0.8),
                  load=LoadProfile.constant(300))
    plant.advance(3600)
    assert plant.load_wh == 0 and plant.battery.soc == pytest.approx(0.8)
    plant.load_connected = True
    plant.advance(3600)
    assert plant.load_wh == pytest.approx(300)
    assert plant.battery.stored_wh == pytest.approx(0.8 * 2400 - 300 / 0.95)


# --------------------------------------------------------------------------- emulated meter


def make_meter(kind: str, *, acceleration: float = 1.0, hour: float = 12.0,
               battery_wh: float = 2400, provisioned: bool = True, **kwargs):
    """An EmulatedMeter (provisioned unless told) on a fresh plant with a hand-moved clock."""
    clock = FakeClock()
    plant = Plant(pv=SolarArray(peak_w=800),
                  battery=LeadAcidBattery(capacity_wh=battery_wh, soc=0.6),
                  load=LoadProfile.constant(400), time_s=hour * 3600)
    grid = Microgrid(plant, acceleration=acceleration, clock=clock)
    meter = EmulatedMeter(kind, grid, **kwargs)
    if provisioned:
        assert meter.provision(VECTOR_DOMAIN)
    return meter, clock


def ask(meter: EmulatedMeter, request: Request):
    """Send one request line to the meter and decode its reply."""
    return parse_reply(meter.handle_line(request.encode()[:-1]))


def test_identify_reports_the_rating_times_the_acceleration():
    meter, _ = make_meter("supply", acceleration=60, meter_id="roof-1", watchdog_s=7,
                          provisioned=False)
    identity = Identity.from_fields(ask(meter, Request(1, "ID")).values)
    assert identity == Identity("roof-1", "emulator-2.0", "supply", 800 * 60, 7, meter.address)
    assert identity.provisioned is False
    assert ask(meter, Request(2, "INSTALL", domain=VECTOR_DOMAIN)).ok
    identity = Identity.from_fields(ask(meter, Request(3, "ID")).values)
    assert identity.domain == VECTOR_DOMAIN and identity.address == meter.address


def test_a_rating_below_the_peak_power_is_refused():
    with pytest.raises(ValueError):
        make_meter("supply", rated_power_w=500)
    with pytest.raises(ValueError):
        make_meter("load", rated_power_w=300)


def test_supply_counter_follows_the_sun_within_the_rated_power():
    meter, clock = make_meter("supply", acceleration=60, hour=4.0, battery_wh=50_000)
    rated = meter.identity.rated_power_w
    last = ReadReply.from_fields(ask(meter, Request(1, "READ", block=VECTOR_BLOCK)).values,
                                     VECTOR_BLOCK)
    gains = []
    for i in range(2, 2 + 24 * 6):  # ten simulated minutes per 10 s step, a whole day
        clock.now += 10
        meter.tick()
        reply = ask(meter, Request(i, "READ", block=VECTOR_BLOCK))
        reading = ReadReply.from_fields(reply.values, VECTOR_BLOCK)
        gain = reading.energy_wh - last.energy_wh
        assert 0 <= gain <= rated * 10 / 3600 + 1  # what the registry will check
        gains.append((meter.grid.plant.hour, gain))
        last = reading
    assert sum(g for h, g in gains if h < 6 or h > 18.5) == 0  # night
    morning, noon = (sum(g for h, g in gains if a < h <= b) for a, b in ((6, 8), (11, 13)))
    assert 0 < 2 * morning < noon
    assert last.energy_wh == pytest.approx(800 * 12 * 2 / math.pi, abs=2)


def test_supply_counter_stops_when_the_battery_is_full():
    meter, clock = make_meter("supply", acceleration=3600, battery_wh=1000)  # 400 Wh of room
    clock.now += 2  # two simulated hours of noon sun
    meter.tick()
    assert meter.reading(VECTOR_BLOCK).energy_wh == pytest.approx(400 / 0.85, abs=1)
    assert meter.reading(VECTOR_BLOCK).power_w == 0
    assert meter.grid.plant.battery.soc == pytest.approx(1.0)


def test_load_meter_counts_only_while_its_relay_is_closed():
    meter, clock = make_meter("load", acceleration=3600, hour=20.0)  # no sun: only the load
    plant = meter.grid.plant
    clock.now += 1  # one simulated hour, relay open
    assert meter.reading(VECTOR_BLOCK).energy_wh == 0
    soc = plant.battery.soc
    assert ask(meter, Request(2, "RELAY", True)).values == ("1",)
    clock.now += 1
    meter.tick()
    reading = meter.reading(VECTOR_BLOCK)
    assert reading.energy_wh == 400 and reading.power_w == pytest.approx(400)
    assert reading.current_a == pytest.approx(400 / reading.voltage_v)
    assert plant.battery.soc < soc
    assert ask(meter, Request(3, "RELAY", False)).values == ("0",)
    clock.now += 1
    assert meter.reading(VECTOR_BLOCK).energy_wh == 400
    assert meter.reading(VECTOR_BLOCK).power_w == 0


def test_watchdog_opens_the_relay_after_exactly_the_configured_silence():
    meter, clock = make_meter("load", watchdog_s=10)
    ask(meter, Request(1, "RELAY", True))
    for seq in range(2, 6):  # heartbeats every 9 s keep it closed for 36 s
        clock.now += 9
        meter.tick()
        assert meter.relay_closed
        ask(meter, Request(seq, "HB"))
    clock.now += 9.99
    meter.tick()
    assert meter.relay_closed
    clock.now += 0.01
    meter.tick()
    assert not meter.relay_closed
    assert meter.grid.plant.load_connected is False
    assert meter.watchdog_trips == 1


def test_invalid_frames_do_not_feed_the_watchdog():
    meter, clock = make_meter("supply", watchdog_s=5)
    ask(meter, Request(1, "RELAY", True))
    for _ in range(6):
        clock.now += 1
        assert meter.handle_line(b"$2,HB*0000")  # bad checksum: answered, not trusted
        assert meter.handle_line(b"$3,TOGGLE*" + b"%04X" % 0)
        meter.tick()
    assert not meter.relay_closed


def test_errors_are_answered_with_code_and_echoed_sequence_number():
    meter, _ = make_meter("supply")
    bad = parse_reply(meter.handle_line(b"$9,RELAY,1*0000"))
    assert (bad.seq, bad.ok, bad.code, bad.message) == (0, False, 1, "bad checksum")
    unknown = parse_reply(meter.handle_line(encode_frame(9, ("TOGGLE",))[:-1]))
    assert (unknown.seq, unknown.code, unknown.message) == (9, 4, "unknown command")
    relay2 = parse_reply(meter.handle_line(encode_frame(10, ("RELAY", "2"))[:-1]))
    assert (relay2.seq, relay2.code, meter.relay_closed) == (10, 5, False)
    too_long = parse_reply(meter.handle_line(None))
    assert (too_long.seq, too_long.code) == (0, ErrorCode.LINE_TOO_LONG)
    meter.sensor_ok = False
    fault = ask(meter, Request(12, "READ", block=VECTOR_BLOCK))
    assert (fault.seq, fault.ok, fault.code) == (12, False, ErrorCode.SENSOR_FAULT)
