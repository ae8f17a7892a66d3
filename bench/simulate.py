"""Simulation benchmark: `microgrid simulate`'s engine on 40 households, wall time and outcome.

Runs N households (MICROGRID_BENCH_SIM_HOUSEHOLDS, default 40) for D simulated days
(MICROGRID_BENCH_SIM_DAYS, default 1) with the default settings and seed 1, and writes
bench/results/simulate.json: the wall time, the wall time per block and per simulated day,
the week extrapolated from it (the target is 40 households x 7 days in under 2 hours; a
full week takes too long for `make bench`, so a shorter run is measured and scaled, which the
file says), the age of every reading at mining ("no backlog": every reading a bridge takes is
on chain within two blocks), and the outcome figures with and without trading. Set
MICROGRID_BENCH_SIM_DAYS=7 to measure the week itself (written to
bench/results/simulate-week.json, so `make bench`'s day does not replace it). The report
directory goes to bench/results/simulate-report/ (not committed).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from dapp.commands.common import stop_on_signal
from dapp.simulate.chain_run import ChainSimulation, SimulationSettings

RESULTS = Path(__file__).resolve().parent / "results" / "simulate.json"
WEEK_RESULTS = RESULTS.with_name("simulate-week.json")  # a measured week (7 days or more)
REPORT_DIR = Path(__file__).resolve().parent / "results" / "simulate-report"
TARGET_WEEK_S = 2 * 3600.0
KPIS = ("self_sufficiency", "self_consumption", "local_pv_use", "unmet_demand_kwh",
        "curtailed_kwh", "traded_kwh", "demand_kwh", "generation_kwh")


def main() -> int:
    """Run, measure, write the results file; exit 1 when a promise is broken."""
    households = int(os.environ.get("MICROGRID_BENCH_SIM_HOUSEHOLDS", "40"))
    days = float(os.environ.get("MICROGRID_BENCH_SIM_DAYS", "1"))
    settings = SimulationSettings(households=households, days=days, seed=1)
    started = time.monotonic()
    last = [started]

    def progress(done: int, total: int, status: str) -> None:
        if time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            print(f"  block {done}/{total} ({status}), {last[0] - started:.0f} s", flush=True)

    print(f"simulating {households} households x {days:g} days ...", flush=True)
    sim = ChainSimulation(settings, progress=progress)
    with stop_on_signal() as stop:  # SIGTERM or Ctrl-C: stop cleanly (the node too)
        sim.run(stop)
    report = sim.write(REPORT_DIR)
    run = report["run"]
    wall = sim.wall_s
    per_day = wall / days
    week = per_day * 7 if days < 7 else wall * 7 / days
    readings = run["readings"]
    result = {
        "households": households,
        "simulated_days": days,
        "seed": settings.seed,
        "block_s": settings.block_s,
        "poll_s": settings.poll_s,
        "blocks": run["blocks"],
        "wall_s": round(wall, 1),
        "wall_s_per_block": round(wall / max(1, run["blocks"]), 4),
        "wall_s_per_simulated_day": round(per_day, 1),
        "week_wall_s": round(week, 1),
        "week_measured": days >= 7,
        "week_note": ("measured" if days >= 7 else
                      f"extrapolated: {days:g} simulated day(s) measured, scaled to 7 (anvil's "
                      "per-block cost grows with chain length, so the week may take longer)"),
        "week_target_s": TARGET_WEEK_S,
        "week_within_target": week < TARGET_WEEK_S,
        "stopped_early": run["stopped_early"],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_end": list(os.getloadavg())},
        "readings": readings,
        "no_backlog": bool(readings["within_two_blocks"]),
        "outcome": {
            "trading": {k: report["trading"][k] for k in KPIS},
            "baseline": {k: report["baseline"][k] for k in KPIS},
            "prices_wei_per_kwh": report["trading"]["prices_wei_per_kwh"],
            "trades_opened": run["trades_opened"],
            "gas_per_household_per_day": report["trading"]["chain"]["gas_per_household_per_day"],
            "transactions_per_block_mean":
                report["trading"]["chain"]["transactions_per_block_mean"],
        },
        "balances_close": report["balance"]["closes"],
    }
    out = WEEK_RESULTS if days >= 7 else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("wall_s", "week_wall_s", "week_note", "no_backlog",
                                             "balances_close")}, indent=2))
    print(json.dumps(result["outcome"], indent=2))
    ok = result["no_backlog"] and result["balances_close"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
