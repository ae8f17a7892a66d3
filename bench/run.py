"""`make bench`: every benchmark, each writing its JSON to bench/results/.

Quick mode (the default) fits in a few minutes; `--full` (`make bench FULL=1`) runs the sizes
the README's targets name (500 clients, more rounds and auctions).
"""

from __future__ import annotations

import argparse
import time

from bench import figures, finalize, live, meters, throughput


def main() -> int:
    """Run the live-chain benchmarks in turn."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="full sizes (takes longer)")
    full = parser.parse_args().full
    started = time.monotonic()
    for bench in (throughput, finalize, live, meters):
        bench.main(full)
    figures.write_readme()
    print(f"bench: done in {time.monotonic() - started:.0f} s (results in bench/results/)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
