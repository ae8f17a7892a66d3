"""Print the README's gas table from bench/results/gas.json (keeps the README's figures true)."""

from __future__ import annotations

import json
from pathlib import Path

LABELS = {
    "supply_reading": "`supply_reading` (signed, mint)",
    "load_reading": "`load_reading` (signed, settle a Wh-batch)",
    "batch_reading": "`batch_reading` (per reading, batch of 20 signed mints)",
    "list": "`list`",
    "bid_first": "`bid_first`",
    "bid_outbid": "`bid_outbid`",
    "finalize": "`finalize`",
    "close_request": "`close_request` (buyer, phase one)",
    "close_connection": "`close_connection` (the next reading closes)",
    "withdraw": "`withdraw`",
}


def table() -> str:
    """The markdown table of gas figures and targets."""
    ops = json.loads((Path(__file__).parent / "results" / "gas.json").read_text())["operations"]
    lines = ["| operation | gas | target |", "| --- | ---: | ---: |"]
    for key, label in LABELS.items():
        target = ops[key]["target"]
        lines.append(f"| {label} | {ops[key]['gas']:,} | {f'≤ {target:,}' if target else ''} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
