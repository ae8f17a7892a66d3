"""Runs of the community model recorded as the report's time series: the no-trading baseline,
an ideal ("oracle") trader with no chain, and a scenario built for tests.

`simulate` advances a `hardware.community.Community` interval by interval; before each interval
a trader (if any) sets the connections, after it each household's counters are differenced into
one `Interval`. The baseline is the same households and weather with no trader at all: each
household alone with its PV and battery. The chain-backed run (agents, bridge, market) replaces
the trader and fills in the Ether, gas and block figures the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from dapp.simulate.report import HouseholdSeries, Interval, RunSeries
from hardware.community import Community, Household
from hardware.models import LeadAcidBattery, LoadProfile, SolarArray

DEFAULT_INTERVAL_S = 900.0  # a quarter hour, the settlement interval of most energy markets
ORACLE_PRICE_WEI_PER_KWH = 10**15  # 0.001 ETH per kWh


class Trader(Protocol):
    """What `simulate` asks of a trader before each interval."""

    def arrange(self, community: Community, interval_s: float) -> None:
        """Close the connections that should carry energy during the next interval."""

    def price_wei_per_kwh(self, seller: str, buyer: str) -> int:
        """The price of energy delivered from `seller` to `buyer`."""


def simulate(community: Community, seconds: float, interval_s: float = DEFAULT_INTERVAL_S,
             trader: Trader | None = None, label: str = "baseline",
             on_interval: Callable[[int, int], None] | None = None) -> RunSeries:
    """Run `community` for `seconds`, recorded every `interval_s`; no trader = no connections."""
    if seconds <= 0 or interval_s <= 0:
        raise ValueError("need a positive duration and interval")
    series = {name: HouseholdSeries(
        name=name, pv_peak_w=house.pv.peak_w, capacity_wh=house.battery.capacity_wh,
        initial_stored_wh=house.battery.stored_wh,
        discharge_efficiency=house.battery.discharge_efficiency)
        for name, house in community.households.items()}
    steps = max(1, round(seconds / interval_s))
    for step in range(steps):
        dt = interval_s if step < steps - 1 else seconds - step * interval_s  # last takes the rest
        before = {name: house.counters for name, house in community.households.items()}
        delivered = {key: link.delivered_wh for key, link in community.connections.items()}
        if trader is not None:
            trader.arrange(community, dt)
        else:
            community.open_all()
        community.advance(dt)
        money = dict.fromkeys(community.households, (0, 0))
        if trader is not None:
            for (seller, buyer), link in community.connections.items():
                wh = link.delivered_wh - delivered.get((seller, buyer), 0.0)
                wei = round(wh * trader.price_wei_per_kwh(seller, buyer) / 1000)
                money[buyer] = (money[buyer][0] + wei, money[buyer][1])
                money[seller] = (money[seller][0], money[seller][1] + wei)
        t = community.time_s - community.start_s
        for name, house in community.households.items():
            now, then = house.counters, before[name]
            paid, received = money[name]
            series[name].intervals.append(Interval.between(
                t, now, then, house.battery.soc,
                paid_wei=paid, ether_out_wei=paid, ether_in_wei=received))
        if on_interval is not None:
            on_interval(step + 1, steps)
    return RunSeries(label=label, interval_s=interval_s, households=list(series.values()))


class OracleTrader:
    """An ideal trader with perfect knowledge and no chain: each interval it connects every
    household whose own battery cannot cover the coming interval's load to the household with
    the most energy above `seller_reserve`, at one fixed price."""

    def __init__(self, price_wei_per_kwh: int = ORACLE_PRICE_WEI_PER_KWH,
                 seller_reserve: float = 0.5) -> None:
        self.price = price_wei_per_kwh
        self.seller_reserve = seller_reserve

    def arrange(self, community: Community, interval_s: float) -> None:
        """Connect deficit households to surplus households for the next interval."""
        community.open_all()
        t = community.time_s + interval_s / 2
        spare = {name: _spare_wh(house, self.seller_reserve)
                 for name, house in community.households.items()}
        for name, house in community.households.items():
            need_wh = house.demand_w(t) * interval_s / 3600.0
            if _spare_wh(house, house.battery.min_soc) >= need_wh or need_wh <= 0:
                continue
            seller = max((s for s in spare if s != name), key=lambda s: spare[s], default=None)
            if seller is None or spare[seller] <= 0:
                continue
            community.set_connection(seller, name, True)
            spare[seller] -= need_wh

    def price_wei_per_kwh(self, seller: str, buyer: str) -> int:
        """The one fixed price."""
        return self.price


def _spare_wh(house: Household, above_soc: float) -> float:
    """What the household's battery holds above `above_soc`."""
    return (house.battery.soc - above_soc) * house.battery.capacity_wh


def run_baseline(community: Community, seconds: float,
                 interval_s: float = DEFAULT_INTERVAL_S) -> RunSeries:
    """The no-trading baseline: every household alone with its PV and battery."""
    return simulate(community, seconds, interval_s, trader=None, label="baseline")


def run_oracle(community: Community, seconds: float, interval_s: float = DEFAULT_INTERVAL_S,
               trader: OracleTrader | None = None) -> RunSeries:
    """The same community traded by an ideal oracle (no chain, no agents)."""
    return simulate(community, seconds, interval_s, trader=trader or OracleTrader(),
                    label="trading")


def surplus_deficit_scenario() -> Community:
    """Two households on a clear day: "sunny" has a big PV and a small load, "dark" has no PV,
    a low battery and a steady load; alone, one curtails while the other sheds load."""
    sunny = Household("sunny", pv=SolarArray(peak_w=3000.0),
                      battery=LeadAcidBattery(capacity_wh=2400.0, soc=0.9),
                      load=LoadProfile.constant(100.0))
    dark = Household("dark", pv=SolarArray(peak_w=0.0),
                     battery=LeadAcidBattery(capacity_wh=2400.0, soc=0.3),
                     load=LoadProfile.parse("0:150,7:400,9:250,18:600,22:150"))
    return Community([sunny, dark])
