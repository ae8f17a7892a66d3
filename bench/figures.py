"""Print the README's "Figures" tables from bench/results/{live,finalize,throughput,meters}.json.

`make bench` writes them into the README (`--readme`); tests/test_figures.py checks that the README
quotes exactly what the result files hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- figures: begin"
END = "<!-- figures: end -->"


def _load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f} ms"


def figures() -> str:
    """The markdown of the live, finalize and throughput figures, with machine and date."""
    live, fin, thr = _load("live.json"), _load("finalize.json"), _load("throughput.json")
    met = _load("meters.json")
    where = live["machine"]
    lines = [
        f"Measured {where['date']} on {where['cores']} cores ({where['cpu']}), Python "
        f"{where['python']}, anvil with {live['block_time_s']:g} s blocks; live: "
        f"{live['mode']}.",
        "",
        "| open pages | p50 | p95 | p99 | server CPU | clients' CPU | server memory |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in live["runs"]:
        lines.append(
            f"| {run['clients']} | {_ms(run['p50_ms'])} | {_ms(run['p95_ms'])} | "
            f"{_ms(run['p99_ms'])} | {run['server_cpu_pct']:g} % | "
            f"{run.get('clients_cpu_pct', 0):g} % | {run['server_rss_mb']:g} MB |")
    first, last = live["runs"][0], live["runs"][-1]
    if last["clients"] > first["clients"]:
        per_page = ((last["server_rss_mb"] - first["server_rss_mb"]) * 1024
                    / (last["clients"] - first["clients"]))
        lines += ["", f"Server memory per open page: about {per_page:,.0f} KB (resident memory "
                  f"from {first['clients']} to {last['clients']} logged-in pages)."]
    trade = fin["deadline_to_trade_ms"]
    relay = fin["deadline_to_relay_ms"]
    lines += [
        "",
        "| auction deadline → | median | p95 |",
        "| --- | ---: | ---: |",
        f"| block with `TradeOpened` ({fin['auctions']} auctions) | {_ms(trade['median'])} | "
        f"{_ms(trade['p95'])} |",
        "| bridge commands both relays | "
        + (f"{_ms(relay['median'])} | {_ms(relay['p95'])} |" if relay else "pending | pending |"),
        "",
        f"Raw node limit: {thr['raw_tx_per_s']:,.0f} signed transfers a second "
        f"({thr['raw']['max_per_block']:,} in a full block); end-to-end readings a second: "
        + ("pending (the new meter bridge)." if thr["readings_per_s"] is None else
           f"{thr['readings_per_s']:,.0f} ({thr['ratio']:.0%} of the raw rate, same run; "
           f"{thr['readings']['meters']:,} meters READ every second by one bridge)."),
    ]
    return "\n".join(lines + _meters(met))


def _meters(met: dict[str, Any]) -> list[str]:
    """The meters table: one bridge process carrying N meters, and its memory per meter."""
    lines = [
        "",
        f"One meter bridge process, a reading every {met['cadence_s']:g} s per meter "
        f"({met['mode']}):",
        "",
        "| meters | driver | expected/s | accepted/s | backlog p50 | backlog p95 | CPU | "
        "memory | threads |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in met["runs"]:
        driver = "TCP emulator" if run["driver"].startswith("emulator") else "in-process"
        lines.append(
            f"| {run['meters']:,} | {driver} | {run['expected_per_s']:g} | "
            f"{run['accepted_per_s']:g} | {_s(run['backlog_p50_s'])} | "
            f"{_s(run['backlog_p95_s'])} | {run['cpu_pct']:g} % | {run['rss_mb']:g} MB | "
            f"{run['threads']} |")
    tcp = [r for r in met["runs"] if r["driver"].startswith("emulator")]
    if len(tcp) < 2:
        tcp = met["runs"]  # across drivers: the bridge's own state per meter
    if len(tcp) > 1 and tcp[-1]["meters"] > tcp[0]["meters"]:
        per_meter = ((tcp[-1]["rss_mb"] - tcp[0]["rss_mb"]) * 1024
                     / (tcp[-1]["meters"] - tcp[0]["meters"]))
        lines += ["", f"Bridge memory per meter: about {per_meter:,.0f} KB (resident memory "
                  f"from {tcp[0]['meters']:,} to {tcp[-1]['meters']:,} meters); the "
                  f"thread count does not grow with the meters (a fixed pool)."]
    return lines


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"


def write_readme(path: Path = README) -> None:
    """Put the figures between the README's figure markers (the rest is left as it is)."""
    text = path.read_text(encoding="utf-8")
    start = text.index("\n", text.index(BEGIN)) + 1
    end = text.index(END)
    path.write_text(text[:start] + "\n" + figures() + "\n\n" + text[end:], encoding="utf-8")


if __name__ == "__main__":
    import sys

    if "--readme" in sys.argv:
        write_readme()
    else:
        print(figures())
