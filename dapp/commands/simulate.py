"""`microgrid simulate`: N households trading by themselves on the real chain, against a baseline.

Starts its own anvil (temporary data directory, free port), deploys the contracts, gives every
household an account, two meters with their own keys (offered and accepted) and a trading
agent, runs them for the simulated days through one real meter bridge, then runs the same
households and weather without trading and writes report.json and index.html (with plots) to
--out. Ctrl-C stops the run and writes the report of what was simulated so far.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dapp.commands.common import option, setup_logging, stop_on_signal


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def summary_lines(report: dict) -> list[str]:
    """The few figures printed at the end of a run."""
    t, b = report["trading"], report["baseline"]

    def pct(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.1f} %"

    readings = report["run"]["readings"]
    return [
        f"{report['households']} households, {report['days']:.2f} simulated days"
        + (" (stopped early: partial report)" if report["run"]["stopped_early"] else ""),
        f"self-sufficiency  {pct(t['self_sufficiency'])} with trading, "
        f"{pct(b['self_sufficiency'])} without",
        f"self-consumption  {pct(t['self_consumption'])} with trading, "
        f"{pct(b['self_consumption'])} without",
        f"unmet demand      {t['unmet_demand_kwh']:.2f} kWh with trading, "
        f"{b['unmet_demand_kwh']:.2f} kWh without",
        f"curtailed PV      {t['curtailed_kwh']:.2f} kWh with trading, "
        f"{b['curtailed_kwh']:.2f} kWh without",
        f"traded            {t['traded_kwh']:.2f} kWh in {report['run']['trades_opened']} trades",
        f"readings          {readings['readings_recorded']} on chain, oldest at mining "
        f"{readings['age_blocks_max']} block(s)",
        report["balance"]["statement"],
    ]


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run the simulation and write the report directory."""
    from tqdm import tqdm

    from dapp.simulate.chain_run import ChainSimulation, SimulationSettings

    try:
        settings = SimulationSettings(households=args.households, days=args.days,
                                      seed=args.seed, block_s=args.block_seconds)
    except ValueError as exc:
        print(f"microgrid simulate: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level)
    out = Path(args.out)
    print(f"simulating {settings.households} households for {settings.days:g} days "
          f"(seed {settings.seed}) on a private anvil; Ctrl-C writes a partial report",
          file=sys.stderr, flush=True)

    bar = tqdm(total=1, unit="block", disable=args.quiet, dynamic_ncols=True,
               desc=f"{settings.households} households")

    def progress(done: int, total: int, status: str) -> None:
        if bar.total != total:
            bar.total = total
        bar.set_postfix_str(status, refresh=False)
        bar.update(done - bar.n)

    sim = ChainSimulation(settings, progress=progress)
    with stop_on_signal() as stop:
        try:
            sim.run(stop)
        finally:
            bar.close()
    if sim.time_s <= 0:
        print("microgrid simulate: stopped before the first block; no report", file=sys.stderr)
        return 130
    report = sim.write(out)
    for line in summary_lines(report):
        print(line)
    print(f"report: {out / 'index.html'} ({sim.wall_s:.0f} s wall time)")
    return 130 if sim.stopped_early else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `simulate` to the CLI."""
    p = sub.add_parser("simulate", help="N households trading by themselves on a private chain, "
                       "with a report against the no-trading baseline")
    option(p, "--households", env="SIM_HOUSEHOLDS", type=_positive_int, default=12,
           help="number of households")
    option(p, "--days", env="SIM_DAYS", type=_positive_float, default=1.0,
           help="simulated days")
    option(p, "--seed", env="SIM_SEED", type=_int, default=1,
           help="seed of the households, their loads and the weather")
    option(p, "--out", env="SIM_OUT", default="simulation-report",
           help="report directory (report.json, index.html, plots)")
    option(p, "--block-seconds", env="SIM_BLOCK_SECONDS", type=_positive_int, default=60,
           help="simulated seconds per block")
    option(p, "--log-level", env="SIM_LOG_LEVEL", default="ERROR",
           help="what the bridge and chain layers log to stderr (DEBUG, INFO, WARNING, ERROR)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_simulate)
