"""Physics of the emulated micro-grid: PV array (sun curve), lead-acid battery, programmable load.

Everything here runs in *simulated* time, so the emulator can accelerate it; nothing reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DAY_S = 86_400.0


@dataclass
class SolarArray:
    """A PV array: a half-sine sun curve between sunrise and sunset, zero at night."""

    peak_w: float = 800.0
    sunrise_h: float = 6.0
    sunset_h: float = 18.0

    def __post_init__(self) -> None:
        if self.peak_w < 0 or not 0 <= self.sunrise_h < self.sunset_h <= 24:
            raise ValueError("need peak_w >= 0 and 0 <= sunrise < sunset <= 24")

    def power_at(self, hour: float) -> float:
        """Output power in W at `hour` (hours since midnight, any real; wrapped to the day)."""
        hour %= 24.0
        if not self.sunrise_h < hour < self.sunset_h:
            return 0.0
        phase = (hour - self.sunrise_h) / (self.sunset_h - self.sunrise_h)
        return self.peak_w * math.sin(math.pi * phase)


EMPTY_CELL_V = 1.95  # a lead-acid cell's open-circuit voltage, empty
FULL_CELL_V = 2.12  # and full


def soc_from_voltage(volts: float, nominal_v: float = 24.0) -> float:
    """State of charge (0-1) of a lead-acid bank from its open-circuit voltage (clamped)."""
    cells = nominal_v / 2.0
    soc = (volts / cells - EMPTY_CELL_V) / (FULL_CELL_V - EMPTY_CELL_V)
    return min(1.0, max(0.0, soc))


@dataclass
class LeadAcidBattery:
    """A lead-acid bank: capacity, state of charge, charge/discharge efficiency, SoC limits.

    Charging stores `charge_efficiency` of the energy offered at the terminals; discharging draws
    1/`discharge_efficiency` of the energy delivered. The SoC stays within [min_soc, max_soc]
    (lead-acid must not be deep-discharged): a full battery accepts nothing, an empty one gives
    nothing. The terminal voltage follows the state of charge.
    """

    capacity_wh: float = 2400.0
    soc: float = 0.6
    charge_efficiency: float = 0.85
    discharge_efficiency: float = 0.95
    min_soc: float = 0.2
    max_soc: float = 1.0
    nominal_v: float = 24.0

    def __post_init__(self) -> None:
        if self.capacity_wh <= 0:
            raise ValueError("battery capacity must be positive")
        if not 0 <= self.min_soc < self.max_soc <= 1:
            raise ValueError("need 0 <= min_soc < max_soc <= 1")
        if not (0 < self.charge_efficiency <= 1 and 0 < self.discharge_efficiency <= 1):
            raise ValueError("efficiencies must be in (0, 1]")
        self.soc = min(max(self.soc, self.min_soc), self.max_soc)

    @property
    def stored_wh(self) -> float:
        """Energy in the battery now."""
        return self.soc * self.capacity_wh

    def voltage(self) -> float:
        """Terminal voltage: about 1.95 V/cell empty to 2.12 V/cell full (open circuit)."""
        cells = self.nominal_v / 2.0
        return cells * (EMPTY_CELL_V + (FULL_CELL_V - EMPTY_CELL_V) * self.soc)

    def charge(self, power_w: float, seconds: float) -> float:
        """Offer `power_w` for `seconds`; return the power accepted at the terminals."""
        if power_w <= 0 or seconds <= 0:
            return 0.0
        room_wh = (self.max_soc - self.soc) * self.capacity_wh
        offered_wh = power_w * seconds / 3600.0
        accepted_wh = min(offered_wh, room_wh / self.charge_efficiency)
        self.soc = min(self.max_soc, self.soc + accepted_wh * self.charge_efficiency
                       / self.capacity_wh)
        return accepted_wh * 3600.0 / seconds

    def discharge(self, power_w: float, seconds: float) -> float:
        """Ask for `power_w` for `seconds`; return the power delivered at the terminals."""
        if power_w <= 0 or seconds <= 0:
            return 0.0
        available_wh = (self.soc - self.min_soc) * self.capacity_wh
        wanted_wh = power_w * seconds / 3600.0
        delivered_wh = min(wanted_wh, available_wh * self.discharge_efficiency)
        self.soc = max(self.min_soc, self.soc - delivered_wh / self.discharge_efficiency
                       / self.capacity_wh)
        return delivered_wh * 3600.0 / seconds


@dataclass
class LoadProfile:
    """A programmable load: a step function of (hour, watts) points over the day, or a constant.

    The load at hour h is the watts of the last point at or before h; before the first point the
    day wraps round to the last point.
    """

    points: tuple[tuple[float, float], ...] = ((0.0, 200.0),)

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a load profile needs at least one point")
        for hour, watts in self.points:
            if not 0 <= hour < 24 or watts < 0:
                raise ValueError(f"bad load point {hour}:{watts} (need 0 <= hour < 24, W >= 0)")
        self.points = tuple(sorted(self.points))

    @classmethod
    def constant(cls, watts: float) -> LoadProfile:
        """The same load all day."""
        return cls(((0.0, watts),))

    @classmethod
    def parse(cls, text: str) -> LoadProfile:
        """`"300"` (constant) or `"0:150,7:400,19:800,23:150"` (hour:watts steps)."""
        text = text.strip()
        try:
            if ":" not in text:
                return cls.constant(float(text))
            points = []
            for item in text.split(","):
                hour, watts = item.split(":")
                points.append((float(hour), float(watts)))
        except ValueError as exc:
            raise ValueError(f"bad load profile {text!r}: use W or hour:W,hour:W,...") from exc
        return cls(tuple(points))

    @property
    def peak_w(self) -> float:
        """The largest load in the profile."""
        return max(watts for _, watts in self.points)

    def power_at(self, hour: float) -> float:
        """The load in W at `hour` (hours since midnight, wrapped to the day)."""
        hour %= 24.0
        current = self.points[-1][1]
        for start, watts in self.points:
            if start > hour:
                break
            current = watts
        return current


@dataclass
class Plant:
    """PV array, battery and load wired together, advanced in simulated seconds.

    PV charges the battery through the supply meter; the battery feeds the load through the load
    meter only while the load is connected (the load meter's relay is closed). `own_load`, if
    any, is the producer's own household: it draws from the battery all the time, behind the
    supply meter and outside any trade (so the battery is rarely full and the supply counter
    keeps growing with the sun). Energy totals are what the two meters count.
    """

    pv: SolarArray = field(default_factory=SolarArray)
    battery: LeadAcidBattery = field(default_factory=LeadAcidBattery)
    load: LoadProfile = field(default_factory=LoadProfile)
    own_load: LoadProfile | None = None
    time_s: float = 12 * 3600.0  # simulated seconds since midnight of day 0
    load_connected: bool = False
    supply_wh: float = 0.0  # PV -> battery, cumulative
    load_wh: float = 0.0  # battery -> consumer, cumulative
    own_wh: float = 0.0  # battery -> the producer's own household, cumulative
    supply_w: float = 0.0  # at the last step
    load_w: float = 0.0  # at the last step
    own_w: float = 0.0  # at the last step

    MAX_STEP_S = 60.0  # integration step; the sun curve changes little in a minute

    @property
    def hour(self) -> float:
        """Simulated hour of the day."""
        return (self.time_s % DAY_S) / 3600.0

    def advance(self, seconds: float) -> None:
        """Run the plant forward by `seconds` of simulated time."""
        while seconds > 0:
            dt = min(seconds, self.MAX_STEP_S)
            mid_hour = ((self.time_s + dt / 2) % DAY_S) / 3600.0
            self.supply_w = self.battery.charge(self.pv.power_at(mid_hour), dt)
            wanted = self.load.power_at(mid_hour) if self.load_connected else 0.0
            self.load_w = self.battery.discharge(wanted, dt)
            own = self.own_load.power_at(mid_hour) if self.own_load is not None else 0.0
            self.own_w = self.battery.discharge(own, dt) if own else 0.0
            self.supply_wh += self.supply_w * dt / 3600.0
            self.load_wh += self.load_w * dt / 3600.0
            self.own_wh += self.own_w * dt / 3600.0
            self.time_s += dt
            seconds -= dt
