"""live.json: from a block's arrival at the node to each logged-in client's `market` event.

One managed anvil (1 s blocks), one real `microgrid serve`, K users logged in through the JSON
API, each with a Socket.IO client (WebSocket transport, session cookie). Each round the bench
sends either a bid on an open listing or a new listing from its own keys (foreign clients, like a
wallet elsewhere on the grid), finds the block that mined it, and measures for every client the
time from that block's arrival at the node (`eth_subscribe newHeads` in this process) to the
first `market` event carrying the change. The server's CPU is sampled over the rounds.
"""

from __future__ import annotations

import argparse
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.world import (
    AsyncPages,
    BenchWorld,
    HeadClock,
    Server,
    cpu_seconds,
    login,
    machine,
    percentile,
    rss_mb,
    write_result,
)

QUICK_CLIENTS = (1, 50, 200)
FULL_CLIENTS = (1, 50, 500)
START_PRICE = 10**15  # wei per kWh
STEP = 10**14
ROUND_TIMEOUT = 15.0


class Page:
    """One logged-in client: the times and contents of the `market` events it received."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, dict[int, str | None]]] = []
        self.transit: dict[float, float] = {}  # receipt stamp -> seconds since the snapshot
        self._lock = threading.Lock()

    def on_market(self, data: dict[str, Any]) -> None:
        """Stamp a `market` event: listing id -> highest bid (wei text) or None."""
        now = time.monotonic()
        # The snapshot's server_time: how much of the delay is the server's, how much transport.
        transit = time.time() - float(data.get("server_time") or 0)
        listings = {item["id"]: item.get("highest_bid_wei")
                    for item in data.get("listings", [])}
        with self._lock:
            self.seen.append((now, listings))
            self.transit[now] = transit

    def first(self, since: float, test: Any) -> float | None:
        """When the first event after `since` satisfying `test(listings)` arrived."""
        with self._lock:
            for stamp, listings in self.seen:
                if stamp >= since and test(listings):
                    return stamp
        return None


def run_clients(world: BenchWorld, server: Server, heads: HeadClock, clients: int,
                rounds: int) -> dict[str, Any]:
    """Log in `clients` users, open their sockets, run the rounds; the run's figures."""
    rss_before = rss_mb(server.pid)
    users = world.users[:clients]
    with ThreadPoolExecutor(16) as pool:
        cookies = list(pool.map(lambda a: login(server.url, a), users))
    pages = [Page() for _ in users]
    sockets = AsyncPages()
    sockets.connect(server.url, [(cookie, {"market": page.on_market})
                                 for cookie, page in zip(cookies, pages, strict=True)])
    # Steady state: every page has its greeting (full state) before the rounds start.
    settle = time.monotonic() + 180
    while not all(page.seen for page in pages) and time.monotonic() < settle:
        time.sleep(0.1)
    time.sleep(2 * world.block_time)
    rss_after = rss_mb(server.pid)
    client = world.client
    lot_id = None
    price = START_PRICE
    latencies: list[float] = []
    transits: list[float] = []
    per_round: list[float | None] = []  # median of each round (bid or listing, alternately)
    missed = 0
    cpu0, wall0 = cpu_seconds(server.pid), time.monotonic()
    own0 = cpu_seconds(os.getpid())
    for number in range(rounds):
        since = time.monotonic()
        if lot_id is None or number % 2 == 0:
            tx_hash = client.sell(world.seller, 100, START_PRICE, 80_000)
            receipt = client.wait(tx_hash)
            lot_id = client.lot_count()
            price = START_PRICE

            def test(listings: dict[int, str | None], lot: int = lot_id) -> bool:
                return lot in listings
        else:
            bidder = world.bidders[number % 2]
            receipt = client.wait(client.bid(bidder, lot_id, price))
            wanted = str(price)
            price += STEP

            def test(listings: dict[int, str | None], lot: int = lot_id,
                     wanted: str = wanted) -> bool:
                return listings.get(lot) == wanted
        arrived = heads.arrival(receipt["blockNumber"])
        deadline = time.monotonic() + ROUND_TIMEOUT
        stamps: list[float | None] = []
        while time.monotonic() < deadline:
            stamps = [page.first(since, test) for page in pages]
            if all(s is not None for s in stamps):
                break
            time.sleep(0.05)
        this_round: list[float] = []
        for page, stamp in zip(pages, stamps, strict=True):
            if stamp is None:
                missed += 1
            else:
                this_round.append((stamp - arrived) * 1000)
                transits.append(page.transit[stamp] * 1000)
        latencies += this_round
        per_round.append(_round(percentile(this_round, 50)))
        time.sleep(random.uniform(0, world.block_time))  # noqa: S311 - not cryptographic
    wall = time.monotonic() - wall0
    cpu = (cpu_seconds(server.pid) - cpu0) / wall * 100
    own = (cpu_seconds(os.getpid()) - own0) / wall * 100
    sockets.close()
    return {
        "clients": clients,
        "rounds": rounds,
        "samples": len(latencies),
        "missed": missed,
        "p50_ms": _round(percentile(latencies, 50)),
        "p95_ms": _round(percentile(latencies, 95)),
        "p99_ms": _round(percentile(latencies, 99)),
        "max_ms": _round(max(latencies) if latencies else None),
        # Of which: from the snapshot's computation on the server to the client's handler.
        "snapshot_to_client_p50_ms": _round(percentile(transits, 50)),
        "snapshot_to_client_p95_ms": _round(percentile(transits, 95)),
        "round_p50_ms": per_round,
        "server_cpu_pct": round(cpu, 1),
        # The clients' own process (the Python clients share one interpreter lock).
        "clients_cpu_pct": round(own, 1),
        "server_rss_mb": round(rss_after, 1),
        "memory_per_client_kb": round((rss_after - rss_before) * 1024 / clients, 1),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def main(full: bool = False) -> dict[str, Any]:
    """Run the live benchmark and write bench/results/live.json."""
    counts = FULL_CLIENTS if full else QUICK_CLIENTS
    rounds = 20 if full else 8
    world = BenchWorld(users=max(counts))
    heads = HeadClock(world.ws_url)
    server = Server(world)
    try:
        runs = []
        for count in counts:
            run = run_clients(world, server, heads, count, rounds)
            print(f"live: {count} clients: p50 {run['p50_ms']} ms, p95 {run['p95_ms']} ms, "
                  f"p99 {run['p99_ms']} ms, server CPU {run['server_cpu_pct']} %", flush=True)
            runs.append(run)
            time.sleep(1)
    finally:
        server.stop()
        heads.close()
        world.close()
    result = {
        "mode": "full" if full else "quick (200 clients instead of 500; `make bench FULL=1`)",
        "block_time_s": world.block_time,
        "event": "a listing or a bid sent by a foreign client; the `market` event carrying it",
        "machine": machine(),
        "runs": runs,
    }
    write_result("live.json", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="1, 50 and 500 clients")
    main(parser.parse_args().full)
