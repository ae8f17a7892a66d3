"""Many households on one DC bus: each with its own PV, lead-acid battery, load and meters.

Every household's PV charges its own battery (what a full battery cannot take is curtailed), and
its battery feeds its own load. Energy crosses the bus only through a *connection* from a seller
to a buyer, and only while both relays of that connection are closed (the seller's export relay
and the buyer's import relay, which the bridge drives from the chain's trades). While connected,
the buyer's load is fed from the seller's battery first; what the seller cannot give comes from
the buyer's own battery, and what neither can give is shed (unmet demand).

Order inside one integration step (at most `MAX_STEP_S` simulated seconds, sampled mid-step):
1. every household's PV charges its battery; the rest is curtailed;
2. every closed connection feeds its buyer's load from its seller's battery (in the order the
   connections were first made);
3. every household feeds the rest of its load from its own battery; the rest is unmet.

Accounting is exact per household, to float precision:
    generation + imported = consumed + exported + delta stored + curtailed + losses
    demand = consumed + unmet
and, summed over the community (imports equal exports), generation = consumed + delta stored +
curtailed + losses. Losses are the batteries' charge and discharge losses.

Profiles and weather come from a seed (`Community.generate`), so the same seed gives the same
households, loads and skies. Everything runs in simulated time; nothing reads a clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from hardware.models import DAY_S, LeadAcidBattery, LoadProfile, SolarArray

SELLER = "seller"
BUYER = "buyer"


@dataclass(frozen=True)
class Weather:
    """A day-by-day cloudiness factor (0..1) on the clear-sky PV curve; `seed=None` is always clear.

    The factor of day d depends only on (seed, d), so any household, run or baseline that uses the
    same seed sees the same sky.
    """

    seed: int | None = 0
    low: float = 0.15  # an overcast day still gives this share of the clear-sky output

    def clearness(self, day: int) -> float:
        """The share (low..1) of clear-sky output that reaches the panels on `day`."""
        if self.seed is None:
            return 1.0
        rng = random.Random(f"weather:{self.seed}:{day}")  # noqa: S311 (a reproducible sky)
        return self.low + (1.0 - self.low) * rng.betavariate(2.0, 1.2)


@dataclass(frozen=True)
class Counters:
    """A household's cumulative energy totals in Wh since the start of the run."""

    generation_wh: float = 0.0  # PV output available (clear-sky curve x cloudiness)
    charged_wh: float = 0.0  # PV -> battery at the terminals: what the supply meter counts
    curtailed_wh: float = 0.0  # PV output the full battery could not take
    demand_wh: float = 0.0  # what the load wanted
    consumed_wh: float = 0.0  # what the load got (own battery + imported)
    own_wh: float = 0.0  # own battery -> own load
    imported_wh: float = 0.0  # other batteries -> own load over the bus (the load meter)
    exported_wh: float = 0.0  # own battery -> other loads over the bus (the export meter)
    unmet_wh: float = 0.0  # demand shed: neither a trade nor the own battery could give it
    losses_wh: float = 0.0  # battery charge and discharge losses
    stored_wh: float = 0.0  # energy in the battery now (not cumulative)


@dataclass
class Household:
    """One household: PV array, lead-acid battery, load profile and its meters' counters.

    `load_variation` scales each day's load by a factor in [1 - v, 1 + v] drawn from
    (`variation_seed`, name, day); 0 keeps every day the same.
    """

    name: str
    pv: SolarArray = field(default_factory=lambda: SolarArray(peak_w=0.0))
    battery: LeadAcidBattery = field(default_factory=LeadAcidBattery)
    load: LoadProfile = field(default_factory=LoadProfile)
    load_variation: float = 0.0
    variation_seed: int = 0
    counters: Counters = field(init=False)
    _day_factors: dict[int, float] = field(init=False, repr=False, default_factory=dict)
    _sums: dict[str, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a household needs a name")
        if not 0 <= self.load_variation < 1:
            raise ValueError("load_variation must be in [0, 1)")
        self.initial_stored_wh = self.battery.stored_wh
        self._sums = dict.fromkeys(
            ("generation_wh", "charged_wh", "curtailed_wh", "demand_wh", "consumed_wh", "own_wh",
             "imported_wh", "exported_wh", "unmet_wh", "losses_wh"), 0.0)
        self.counters = self._snapshot()

    def day_factor(self, day: int) -> float:
        """How much more (or less) than its profile the household uses on `day`."""
        if self.load_variation == 0:
            return 1.0
        if day not in self._day_factors:
            rng = random.Random(f"load:{self.variation_seed}:{self.name}:{day}")  # noqa: S311
            self._day_factors[day] = 1.0 + self.load_variation * (2 * rng.random() - 1)
        return self._day_factors[day]

    def demand_w(self, time_s: float) -> float:
        """The load's wanted power in W at simulated time `time_s`."""
        day = int(time_s // DAY_S)
        return self.load.power_at((time_s % DAY_S) / 3600.0) * self.day_factor(day)

    def _snapshot(self) -> Counters:
        return Counters(stored_wh=self.battery.stored_wh, **self._sums)

    def _add(self, name: str, wh: float) -> None:
        self._sums[name] += wh

    def _discharge(self, wanted_w: float, dt: float) -> float:
        """Draw from the battery; book the discharge loss; return the Wh delivered."""
        before = self.battery.stored_wh
        delivered_wh = self.battery.discharge(wanted_w, dt) * dt / 3600.0
        self._add("losses_wh", (before - self.battery.stored_wh) - delivered_wh)
        return delivered_wh


@dataclass
class Connection:
    """A seller -> buyer path over the bus; energy flows only while both relays are closed."""

    seller: str
    buyer: str
    seller_relay: bool = False
    buyer_relay: bool = False
    delivered_wh: float = 0.0  # cumulative, over every time the connection was closed

    @property
    def closed(self) -> bool:
        """True while both relays are closed."""
        return self.seller_relay and self.buyer_relay


class Community:
    """N households on one DC bus, advanced in simulated seconds."""

    MAX_STEP_S = 60.0

    def __init__(self, households: Iterable[Household], weather: Weather | None = None,
                 time_s: float = 0.0) -> None:
        self.households: dict[str, Household] = {}
        for household in households:
            if household.name in self.households:
                raise ValueError(f"two households are called {household.name!r}")
            self.households[household.name] = household
        if not self.households:
            raise ValueError("a community needs at least one household")
        self.weather = weather or Weather(seed=None)
        self.time_s = time_s
        self.start_s = time_s
        self.connections: dict[tuple[str, str], Connection] = {}

    @classmethod
    def generate(cls, households: int, seed: int, time_s: float = 0.0) -> Community:
        """`households` varied households and a varying sky, all reproducible from `seed`."""
        if households < 1:
            raise ValueError("a community needs at least one household")
        rng = random.Random(f"community:{seed}")  # noqa: S311 (reproducible, not secret)
        members = [random_household(f"h{i + 1:02d}", rng, seed) for i in range(households)]
        return cls(members, Weather(seed=seed), time_s=time_s)

    # ----------------------------------------------------------------- relays

    def connection(self, seller: str, buyer: str) -> Connection:
        """The connection from `seller` to `buyer` (created open on first use)."""
        for name in (seller, buyer):
            if name not in self.households:
                raise KeyError(f"no household {name!r}")
        if seller == buyer:
            raise ValueError("a household cannot trade with itself")
        key = (seller, buyer)
        if key not in self.connections:
            self.connections[key] = Connection(seller, buyer)
        return self.connections[key]

    def set_relay(self, seller: str, buyer: str, side: str, closed: bool) -> None:
        """Close or open one relay of a trade: `side` is "seller" (export) or "buyer" (import)."""
        link = self.connection(seller, buyer)
        if side == SELLER:
            link.seller_relay = closed
        elif side == BUYER:
            link.buyer_relay = closed
        else:
            raise ValueError(f"side must be {SELLER!r} or {BUYER!r}, not {side!r}")

    def set_connection(self, seller: str, buyer: str, closed: bool) -> None:
        """Close (or open) both relays of the trade from `seller` to `buyer`."""
        link = self.connection(seller, buyer)
        link.seller_relay = link.buyer_relay = closed

    def open_all(self) -> None:
        """Open every relay (no energy crosses the bus)."""
        for link in self.connections.values():
            link.seller_relay = link.buyer_relay = False

    # ----------------------------------------------------------------- physics

    @property
    def hour(self) -> float:
        """Simulated hour of the day."""
        return (self.time_s % DAY_S) / 3600.0

    def advance(self, seconds: float) -> None:
        """Run every household and connection forward by `seconds` of simulated time."""
        if seconds < 0:
            raise ValueError("time only runs forward")
        while seconds > 1e-9:
            dt = min(seconds, self.MAX_STEP_S)
            self._step(dt)
            self.time_s += dt
            seconds -= dt
        for household in self.households.values():
            household.counters = household._snapshot()

    def _step(self, dt: float) -> None:
        mid = self.time_s + dt / 2
        hour = (mid % DAY_S) / 3600.0
        sky = self.weather.clearness(int(mid // DAY_S))
        hours = dt / 3600.0
        wanted: dict[str, float] = {}
        for house in self.households.values():
            pv_w = house.pv.power_at(hour) * sky
            before = house.battery.stored_wh
            charged_wh = house.battery.charge(pv_w, dt) * hours
            house._add("generation_wh", pv_w * hours)
            house._add("charged_wh", charged_wh)
            house._add("curtailed_wh", pv_w * hours - charged_wh)
            house._add("losses_wh", charged_wh - (house.battery.stored_wh - before))
            demand_w = house.demand_w(mid)
            house._add("demand_wh", demand_w * hours)
            wanted[house.name] = demand_w
        for link in self.connections.values():
            if not link.closed or wanted[link.buyer] <= 0:
                continue
            seller, buyer = self.households[link.seller], self.households[link.buyer]
            got_wh = seller._discharge(wanted[link.buyer], dt)
            wanted[link.buyer] = max(0.0, wanted[link.buyer] - got_wh / hours)
            link.delivered_wh += got_wh
            seller._add("exported_wh", got_wh)
            buyer._add("imported_wh", got_wh)
            buyer._add("consumed_wh", got_wh)
        for house in self.households.values():
            own_wh = house._discharge(wanted[house.name], dt) if wanted[house.name] > 0 else 0.0
            house._add("own_wh", own_wh)
            house._add("consumed_wh", own_wh)
            house._add("unmet_wh", wanted[house.name] * hours - own_wh)

    # ----------------------------------------------------------------- totals

    def totals(self) -> Counters:
        """The community's counters: the sum over its households."""
        sums = dict.fromkeys(Counters.__dataclass_fields__, 0.0)
        for house in self.households.values():
            for name in sums:
                sums[name] += getattr(house.counters, name)
        return Counters(**sums)

    @property
    def initial_stored_wh(self) -> float:
        """Energy in all batteries when the run started."""
        return sum(house.initial_stored_wh for house in self.households.values())


def random_household(name: str, rng: random.Random, seed: int = 0) -> Household:
    """A household drawn from `rng`: PV 0.5..3.5 kWp (about a third have none), a 2.4..9.6 kWh bank,
    a night base load, morning and evening peaks and, for some, a midday presence."""
    has_pv = rng.random() > 0.3
    pv_w = round(rng.uniform(0.5, 3.5), 1) * 1000.0 if has_pv else 0.0
    sunrise = rng.uniform(5.5, 6.5)
    pv = SolarArray(peak_w=pv_w, sunrise_h=sunrise, sunset_h=sunrise + rng.uniform(11.5, 13.0))
    capacity = rng.choice((2400.0, 4800.0, 7200.0, 9600.0))
    battery = LeadAcidBattery(capacity_wh=capacity, soc=round(rng.uniform(0.4, 0.8), 2))
    return Household(name=name, pv=pv, battery=battery, load=random_load(rng),
                     load_variation=0.15, variation_seed=seed)


def random_load(rng: random.Random) -> LoadProfile:
    """A household's daily load shape: base, morning peak, optional midday, evening peak."""
    quarter = 0.25
    base = round(rng.uniform(60, 150))
    morning_start = round(rng.uniform(5.75, 7.5) / quarter) * quarter
    morning_end = morning_start + round(rng.uniform(1.0, 2.5) / quarter) * quarter
    evening_start = round(rng.uniform(17.0, 19.0) / quarter) * quarter
    evening_end = min(23.5, evening_start + round(rng.uniform(3.0, 5.0) / quarter) * quarter)
    points = [(0.0, base), (morning_start, round(rng.uniform(300, 900))), (morning_end, base)]
    if rng.random() < 0.4:  # someone at home during the day
        midday_start = max(morning_end, 10.0)
        points += [(midday_start, round(rng.uniform(150, 400))), (16.0, base)]
    points += [(evening_start, round(rng.uniform(400, 1200))),
               (evening_start + 1.5, round(rng.uniform(300, 700))), (evening_end, base)]
    merged: dict[float, float] = {}
    for hour, watts in points:
        merged[hour] = float(watts)
    return LoadProfile(tuple(sorted(merged.items())))
