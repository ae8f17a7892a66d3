"""The simulation report: KPIs of a trading run against its no-trading baseline, balances,
`report.json` and an `index.html` with matplotlib plots.

Input: one `RunSeries` per run, i.e. per household a list of `Interval`s (energy in Wh during
the interval, battery state at its end, Ether in wei and gas during it). Both runs must cover
the same households and weather.

Definitions (after Grid Singularity's community KPIs, for an islanded grid where the only
"grid import" is load that had to be shed). Sums run over every household and interval:
    D  = demand (what the loads wanted)           C = consumption (what the loads got)
    U  = unmet demand = D - C                     G = PV generation available
    K  = curtailed PV (batteries full)            L = battery charge and discharge losses
    dS = sum of (stored at end - stored at start) I, E = energy imported / exported over the bus
    B+ = sum over households of max(0, stored at start - stored at end) x discharge efficiency:
         consumption met by running down the charge the batteries had at the start, not by PV
    self_sufficiency = (C - B+) / D   share of the community's demand met by its own PV, directly
                                      through the battery or via trades (null if D = 0)
    self_consumption = (G - K) / G    share of PV generation used locally (consumed, stored or
                                      lost on the way) rather than curtailed (null if G = 0)
    local_pv_use     = (C - B+) / G   share of PV generation that reached a load
    traded_kwh       = E (= I: the bus is lossless)
Balances that must close:
    energy (community): G = C + dS + K + L, to the Wh; per household G + I = C + E + dS + K + L
    energy (demand):    D = C + U
    Ether:              sum of Ether sent to the market (deposits, payments)
                        = sum of Ether that came back (credit, refunds) + Ether still held by the
                        market at the end (`held_wei`), exactly, in wei
Prices are wei per kWh: the trades' prices when the run lists them, else each interval's
payments over its imports. Gas per household per day = all gas used / households / days.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dapp.services.units import WEI_PER_ETHER

WH_PER_KWH = 1000.0
ENERGY_TOLERANCE_WH = 1.0  # "to the Wh"


@dataclass
class Interval:
    """One household during one interval; `t_s` is the interval's end, seconds since the start."""

    t_s: float
    generation_wh: float = 0.0
    demand_wh: float = 0.0
    consumption_wh: float = 0.0
    unmet_wh: float = 0.0
    curtailed_wh: float = 0.0
    losses_wh: float = 0.0
    imported_wh: float = 0.0  # traded in: delivered to this household's load over the bus
    exported_wh: float = 0.0  # traded out: from this household's battery to other loads
    stored_wh: float = 0.0  # battery energy at the end of the interval
    soc: float = 0.0  # battery state of charge (0..1) at the end of the interval
    paid_wei: int = 0  # paid for energy received during the interval (settled)
    ether_out_wei: int = 0  # sent to the market (deposits, payments)
    ether_in_wei: int = 0  # received from the market (seller credit, refunds)
    gas_used: int = 0  # gas of this household's transactions mined during the interval
    transactions: int = 0  # this household's transactions mined during the interval

    @classmethod
    def between(cls, t_s: float, now: Any, then: Any, soc: float, **money: int) -> Interval:
        """The interval ending at `t_s` from a household's counters `then` and `now`
        (hardware.community.Counters); `money` sets the Ether and gas fields."""
        return cls(
            t_s=t_s,
            generation_wh=now.generation_wh - then.generation_wh,
            demand_wh=now.demand_wh - then.demand_wh,
            consumption_wh=now.consumed_wh - then.consumed_wh,
            unmet_wh=now.unmet_wh - then.unmet_wh,
            curtailed_wh=now.curtailed_wh - then.curtailed_wh,
            losses_wh=now.losses_wh - then.losses_wh,
            imported_wh=now.imported_wh - then.imported_wh,
            exported_wh=now.exported_wh - then.exported_wh,
            stored_wh=now.stored_wh,
            soc=soc,
            **money,
        )


@dataclass
class HouseholdSeries:
    """A household's fixed facts and its intervals, in time order."""

    name: str
    pv_peak_w: float
    capacity_wh: float
    initial_stored_wh: float
    discharge_efficiency: float = 1.0
    intervals: list[Interval] = field(default_factory=list)

    @property
    def final_stored_wh(self) -> float:
        """Battery energy at the end of the run."""
        return self.intervals[-1].stored_wh if self.intervals else self.initial_stored_wh

    def total(self, name: str) -> float:
        """The sum of one Interval field over the run."""
        return sum(getattr(i, name) for i in self.intervals)


@dataclass
class RunSeries:
    """One run: every household's series, plus what only the chain knows."""

    label: str
    interval_s: float
    households: list[HouseholdSeries]
    block_transactions: list[int] | None = None  # transactions in each block mined in the run
    trade_prices_wei_per_kwh: list[int] | None = None  # the price of every trade opened
    held_wei: int = 0  # Ether the market still holds at the end (escrow not settled or refunded)
    # Per household account, from chain state: start/end balance, deposits, withdrawals, gas fees
    # and `residual_wei` = start - deposited + withdrawn - fees - end (0 when Ether is conserved).
    ether_accounts: list[dict] | None = None
    operator_gas_used: int = 0  # gas of the accounts that carry readings and finalize auctions
    extra: dict = field(default_factory=dict)  # run facts for report.json's "run" object

    @property
    def duration_s(self) -> float:
        """Simulated seconds the run covers."""
        ends = [h.intervals[-1].t_s for h in self.households if h.intervals]
        return max(ends, default=0.0)


def _fraction(numerator: float, denominator: float) -> float | None:
    if denominator <= 0:
        return None
    return min(1.0, max(0.0, numerator / denominator))


def _kwh(wh: float) -> float:
    return round(wh / WH_PER_KWH, 6)


def _borrowed_wh(house: HouseholdSeries) -> float:
    """Consumption met by the battery's starting charge (B+ for one household)."""
    drained = max(0.0, house.initial_stored_wh - house.final_stored_wh)
    return drained * house.discharge_efficiency


def _price_stats(run: RunSeries) -> dict:
    """mean (energy-weighted when derived from intervals), min and max price in wei per kWh."""
    if run.trade_prices_wei_per_kwh:
        prices = run.trade_prices_wei_per_kwh
        return {"mean": sum(prices) / len(prices), "min": min(prices), "max": max(prices),
                "source": "trades"}
    per_interval = [i.paid_wei * WH_PER_KWH / i.imported_wh
                    for h in run.households for i in h.intervals if i.imported_wh >= 1.0]
    imported = sum(h.total("imported_wh") for h in run.households)
    if not per_interval or imported <= 0:
        return {"mean": None, "min": None, "max": None, "source": "intervals"}
    paid = sum(h.total("paid_wei") for h in run.households)
    return {"mean": paid * WH_PER_KWH / imported, "min": min(per_interval),
            "max": max(per_interval), "source": "intervals"}


def kpis(run: RunSeries) -> dict:
    """The run's KPIs, per household and for the community (see the module docstring)."""
    houses = run.households
    demand = sum(h.total("demand_wh") for h in houses)
    consumed = sum(h.total("consumption_wh") for h in houses)
    generation = sum(h.total("generation_wh") for h in houses)
    curtailed = sum(h.total("curtailed_wh") for h in houses)
    from_pv = max(0.0, consumed - sum(_borrowed_wh(h) for h in houses))
    days = run.duration_s / 86_400.0
    household_gas = sum(h.total("gas_used") for h in houses)
    gas = household_gas + run.operator_gas_used
    blocks = run.block_transactions
    per_household = []
    for h in houses:
        own_pv = max(0.0, h.total("consumption_wh") - _borrowed_wh(h))
        per_household.append({
            "name": h.name,
            "pv_peak_kw": h.pv_peak_w / 1000.0,
            "battery_kwh": h.capacity_wh / WH_PER_KWH,
            "generation_kwh": _kwh(h.total("generation_wh")),
            "demand_kwh": _kwh(h.total("demand_wh")),
            "consumption_kwh": _kwh(h.total("consumption_wh")),
            "unmet_demand_kwh": _kwh(h.total("unmet_wh")),
            "curtailed_kwh": _kwh(h.total("curtailed_wh")),
            "imported_kwh": _kwh(h.total("imported_wh")),
            "exported_kwh": _kwh(h.total("exported_wh")),
            "self_sufficiency": _fraction(own_pv, h.total("demand_wh")),
            "ether_out_wei": int(h.total("ether_out_wei")),
            "ether_in_wei": int(h.total("ether_in_wei")),
            "ether_net_wei": int(h.total("ether_in_wei") - h.total("ether_out_wei")),
            "paid_wei": int(h.total("paid_wei")),
            "gas_used": int(h.total("gas_used")),
            "gas_per_day": h.total("gas_used") / days if days else None,
            "transactions": int(h.total("transactions")),
        })
    return {
        "households": len(houses),
        "days": days,
        "self_sufficiency": _fraction(from_pv, demand),
        "self_consumption": _fraction(generation - curtailed, generation),
        "local_pv_use": _fraction(from_pv, generation),
        "local_pv_use_kwh": _kwh(from_pv),
        "demand_kwh": _kwh(demand),
        "consumption_kwh": _kwh(consumed),
        "generation_kwh": _kwh(generation),
        "unmet_demand_kwh": _kwh(sum(h.total("unmet_wh") for h in houses)),
        "curtailed_kwh": _kwh(curtailed),
        "losses_kwh": _kwh(sum(h.total("losses_wh") for h in houses)),
        "traded_kwh": _kwh(sum(h.total("exported_wh") for h in houses)),
        "prices_wei_per_kwh": _price_stats(run),
        "chain": {
            "gas_used": int(gas),
            "household_gas_used": int(household_gas),
            "operator_gas_used": int(run.operator_gas_used),
            "gas_per_household_per_day": gas / len(houses) / days if houses and days else None,
            "transactions": int(sum(h.total("transactions") for h in houses)),
            "blocks": len(blocks) if blocks is not None else None,
            "transactions_per_block_mean": sum(blocks) / len(blocks) if blocks else None,
            "transactions_per_block_max": max(blocks) if blocks else None,
        },
        "per_household": per_household,
    }


def balance(run: RunSeries) -> dict:
    """The run's energy and Ether balances, their residuals and whether they close."""
    houses = run.households
    worst = 0.0
    for h in houses:
        ins = h.total("generation_wh") + h.total("imported_wh")
        outs = (h.total("consumption_wh") + h.total("exported_wh") + h.total("curtailed_wh")
                + h.total("losses_wh") + h.final_stored_wh - h.initial_stored_wh)
        worst = max(worst, abs(ins - outs))
    produced = sum(h.total("generation_wh") for h in houses)
    consumed = sum(h.total("consumption_wh") for h in houses)
    stored = sum(h.final_stored_wh - h.initial_stored_wh for h in houses)
    curtailed = sum(h.total("curtailed_wh") for h in houses)
    losses = sum(h.total("losses_wh") for h in houses)
    demand = sum(h.total("demand_wh") for h in houses)
    unmet = sum(h.total("unmet_wh") for h in houses)
    imported = sum(h.total("imported_wh") for h in houses)
    exported = sum(h.total("exported_wh") for h in houses)
    residual = produced - (consumed + stored + curtailed + losses)
    energy_closes = (abs(residual) < ENERGY_TOLERANCE_WH and worst < ENERGY_TOLERANCE_WH
                     and abs(demand - consumed - unmet) < ENERGY_TOLERANCE_WH
                     and abs(imported - exported) < ENERGY_TOLERANCE_WH)
    ether_out = int(sum(h.total("ether_out_wei") for h in houses))
    ether_in = int(sum(h.total("ether_in_wei") for h in houses))
    ether_residual = ether_out - ether_in - run.held_wei
    accounts = run.ether_accounts
    accounts_close = accounts is None or all(a["residual_wei"] == 0 for a in accounts)
    ether = {
        "sent_to_market_wei": ether_out, "returned_wei": ether_in,
        "held_by_market_wei": run.held_wei, "residual_wei": ether_residual,
        "equation": "sent to the market = returned + held by the market",
        "closes": ether_residual == 0 and accounts_close,
    }
    if accounts is not None:
        ether["accounts"] = accounts
        ether["accounts_equation"] = ("per household: balance at start - deposits sent + "
                                      "withdrawals - gas fees = balance at end")
        ether["accounts_close"] = accounts_close
        ether["gas_fees_wei"] = sum(a["gas_fees_wei"] for a in accounts)
    return {
        "energy": {
            "produced_kwh": _kwh(produced), "consumed_kwh": _kwh(consumed),
            "stored_kwh": _kwh(stored), "curtailed_kwh": _kwh(curtailed),
            "losses_kwh": _kwh(losses), "demand_kwh": _kwh(demand), "unmet_kwh": _kwh(unmet),
            "imported_kwh": _kwh(imported), "exported_kwh": _kwh(exported),
            "residual_wh": residual, "worst_household_residual_wh": worst,
            "equation": "produced = consumed + stored + curtailed + losses",
            "closes": energy_closes,
        },
        "ether": ether,
    }


def build_report(trading: RunSeries, baseline: RunSeries) -> dict:
    """report.json's content for a trading run and its baseline."""
    if sorted(h.name for h in trading.households) != sorted(h.name for h in baseline.households):
        raise ValueError("the trading run and the baseline must cover the same households")
    balances = {"trading": balance(trading), "baseline": balance(baseline)}
    closes = all(b[kind]["closes"] for b in balances.values() for kind in ("energy", "ether"))
    statement = ("Energy and Ether balances close in both runs." if closes else
                 "A balance does NOT close: see the residuals.")
    return {
        "households": len(trading.households),
        "days": trading.duration_s / 86_400.0,
        "interval_s": trading.interval_s,
        "trading": kpis(trading),
        "baseline": kpis(baseline),
        "balance": {**balances, "closes": closes, "statement": statement},
        "run": trading.extra,
        "definitions": {
            "self_sufficiency": "(consumption - consumption met by the batteries' starting "
                                "charge) / demand",
            "self_consumption": "(PV generation - curtailed PV) / PV generation",
            "local_pv_use": "(consumption - consumption met by the batteries' starting charge) "
                            "/ PV generation",
        },
    }


def write_report(out_dir: Path, trading: RunSeries, baseline: RunSeries) -> dict:
    """Write report.json, index.html and the PNG plots into `out_dir`; return the report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(trading, baseline)
    plots = _plots(out_dir, trading, baseline)
    report["plots"] = plots
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=_json) + "\n",
                                         encoding="utf-8")
    (out_dir / "index.html").write_text(_html(report, plots), encoding="utf-8")
    return report


def _json(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return asdict(value) if hasattr(value, "__dataclass_fields__") else str(value)


# ------------------------------------------------------------------------- plots


def _hours(house: HouseholdSeries) -> list[float]:
    return [i.t_s / 3600.0 for i in house.intervals]


def _community(run: RunSeries, name: str) -> list[float]:
    """Community sum of Interval field `name`, per interval, as mean power in kW."""
    count = min(len(h.intervals) for h in run.households)
    hours = run.interval_s / 3600.0
    return [sum(getattr(h.intervals[k], name) for h in run.households) / 1000.0 / hours
            for k in range(count)]


def _plots(out_dir: Path, trading: RunSeries, baseline: RunSeries) -> list[dict]:
    """Draw every figure; return [{file, title}] in page order."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    made: list[dict] = []

    def save(fig, file: str, title: str) -> None:
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out_dir / file, dpi=80)
        plt.close(fig)
        made.append({"file": file, "title": title})

    count = min(len(h.intervals) for run in (trading, baseline) for h in run.households)
    x = _hours(trading.households[0])[:count]
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True, sharey=True)
    for ax, run in zip(axes, (trading, baseline), strict=True):
        for name, label in (("generation_wh", "PV generation"), ("consumption_wh", "consumption"),
                            ("unmet_wh", "unmet demand"), ("curtailed_wh", "curtailed PV")):
            ax.plot(x, _community(run, name)[: len(x)], label=label)
        ax.set_title(run.label)
        ax.set_ylabel("kW (interval mean)")
    axes[0].legend(loc="upper right", fontsize="small")
    axes[-1].set_xlabel("hours since start")
    save(fig, "community.png", "Community: generation, consumption, unmet demand, curtailment")

    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True, sharey=True)
    for ax, run in zip(axes, (trading, baseline), strict=True):
        for h in run.households:
            ax.plot(_hours(h), [100 * i.soc for i in h.intervals], linewidth=0.8, label=h.name)
        ax.set_title(run.label)
        ax.set_ylabel("battery SoC (%)")
        ax.set_ylim(0, 100)
    if len(trading.households) <= 12:
        axes[0].legend(loc="upper right", fontsize="x-small", ncol=4)
    axes[-1].set_xlabel("hours since start")
    save(fig, "battery.png", "Battery state of charge per household")

    fig, ax = plt.subplots(figsize=(10, 4))
    traded = _community(trading, "exported_wh")[: len(x)]
    ax.bar(x, traded, width=-trading.interval_s / 3600.0, align="edge", color="tab:green",
           label="traded")  # each bar spans its interval, which ends at x
    ax.set_ylabel("traded power (kW)")
    ax.set_xlabel("hours since start")
    prices = [(i.t_s / 3600.0, i.paid_wei * WH_PER_KWH / i.imported_wh / WEI_PER_ETHER)
              for h in trading.households for i in h.intervals if i.imported_wh >= 1.0]
    if prices:
        twin = ax.twinx()
        twin.scatter([p[0] for p in prices], [p[1] for p in prices], s=8, color="tab:red",
                     label="price paid")
        twin.set_ylabel("price paid (ETH/kWh)")
        twin.set_ylim(0, 1.2 * max(p[1] for p in prices) or 1)  # from zero: wei rounding is noise
        twin.ticklabel_format(axis="y", style="plain", useOffset=False)
    save(fig, "trades.png", "Energy traded and prices paid")

    names = [h.name for h in trading.households]
    fields = (("generation_wh", "generation"), ("consumption_wh", "consumption"),
              ("unmet_wh", "unmet"), ("curtailed_wh", "curtailed"),
              ("imported_wh", "bought"), ("exported_wh", "sold"))
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(names) + 2), 4))
    width = 0.8 / len(fields)
    for k, (name, label) in enumerate(fields):
        ax.bar([p + k * width for p in range(len(names))],
               [h.total(name) / WH_PER_KWH for h in trading.households], width, label=label)
    ax.set_xticks([p + 0.4 - width / 2 for p in range(len(names))], names, rotation=90)
    ax.set_ylabel("kWh")
    ax.legend(fontsize="small", ncol=3)
    save(fig, "households.png", "Per household, with trading")

    base = {h.name: h for h in baseline.households}
    for h in trading.households:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 4), sharex=True)
        hours = _hours(h)
        per_kw = trading.interval_s / 3600.0 * 1000.0
        top.plot(hours, [i.generation_wh / per_kw for i in h.intervals], label="PV")
        top.plot(hours, [i.consumption_wh / per_kw for i in h.intervals], label="consumption")
        top.plot(hours, [i.imported_wh / per_kw for i in h.intervals], label="bought")
        top.plot(hours, [i.exported_wh / per_kw for i in h.intervals], label="sold")
        top.set_ylabel("kW")
        top.legend(loc="upper right", fontsize="x-small", ncol=4)
        bottom.plot(hours, [100 * i.soc for i in h.intervals], label="trading")
        bottom.plot(_hours(base[h.name]), [100 * i.soc for i in base[h.name].intervals],
                    linestyle="--", label="baseline")
        bottom.set_ylabel("SoC (%)")
        bottom.set_ylim(0, 100)
        bottom.set_xlabel("hours since start")
        bottom.legend(loc="upper right", fontsize="x-small")
        save(fig, f"household-{_slug(h.name)}.png", f"Household {h.name}")
    return made


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


# ------------------------------------------------------------------------- HTML


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _html(report: dict, plots: list[dict]) -> str:
    """A self-contained page: the KPI table, the balances and the plots."""
    rows = ["self_sufficiency", "self_consumption", "local_pv_use", "local_pv_use_kwh",
            "demand_kwh", "consumption_kwh", "generation_kwh", "unmet_demand_kwh",
            "curtailed_kwh", "losses_kwh", "traded_kwh"]
    table = "".join(
        f"<tr><th>{html.escape(r)}</th><td>{_cell(report['trading'][r])}</td>"
        f"<td>{_cell(report['baseline'][r])}</td></tr>" for r in rows)
    prices = report["trading"]["prices_wei_per_kwh"]
    chain = report["trading"]["chain"]
    money = "".join(
        f"<tr><th>{html.escape(h['name'])}</th><td>{h['ether_out_wei']}</td>"
        f"<td>{h['ether_in_wei']}</td><td>{h['ether_net_wei']}</td><td>{h['gas_used']}</td></tr>"
        for h in report["trading"]["per_household"])
    figures = "".join(
        f'<figure><img src="{html.escape(p["file"])}" alt="{html.escape(p["title"])}">'
        f"<figcaption>{html.escape(p['title'])}</figcaption></figure>" for p in plots)
    bal = report["balance"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Micro-grid simulation report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}td,th{{padding:2px 8px;
text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>Micro-grid simulation: {report['households']} households, {report['days']:.2f} days</h1>
<h2>Outcome</h2>
<table><tr><th></th><th>trading</th><th>baseline</th></tr>{table}</table>
<p>Prices paid (wei/kWh): mean {_cell(prices['mean'])}, min {_cell(prices['min'])},
max {_cell(prices['max'])}. Chain: gas per household per day
{_cell(chain['gas_per_household_per_day'])}, transactions per block (mean)
{_cell(chain['transactions_per_block_mean'])}.</p>
<h2>Balances</h2>
<p>{html.escape(bal['statement'])} Energy residual (trading):
{bal['trading']['energy']['residual_wh']:.6f} Wh; Ether residual (trading):
{bal['trading']['ether']['residual_wei']} wei.</p>
<h2>Ether per household (trading)</h2>
<table><tr><th></th><th>sent (wei)</th><th>received (wei)</th><th>net (wei)</th><th>gas</th></tr>
{money}</table>
<h2>Plots</h2>{figures}
</body></html>
"""
