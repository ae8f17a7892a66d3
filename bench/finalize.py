"""finalize.json: from an auction's deadline to the block with `TradeOpened` (and to the relays).

One managed anvil (1 s blocks) and a real `microgrid serve` with a finalizer account. For each
auction the bench lists a few Wh with a short duration and bids on it at once, from its own keys.
The deadline is chain time; its moment is the arrival at the node of the first block whose
timestamp reaches it (from then on `finalize` is allowed). The figure is the time from that
block's arrival to the arrival of the block holding the listing's `TradeOpened`.

The relay half: every auction has its own seller and buyer, each with an emulated meter on TCP
(the real serial protocol) that the server's meter bridge serves (`--meter`); the figure is
the time from the deadline block's arrival to the later of the two relays being commanded
closed, as the meters themselves stamp it.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from eth_account import Account
from web3 import Web3

from bench.world import (
    ETHER,
    BenchWorld,
    HeadClock,
    Server,
    machine,
    median,
    percentile,
    write_result,
)
from dapp.chain.contracts import load_artifact
from dapp.chain.deploy import MarketParameters

DURATION_S = 3
PRICE = 10**15


def trade_block(w3: Web3, market: str, lot_id: int, from_block: int, timeout: float = 30.0) -> int:
    """The number of the block holding `TradeOpened(lot_id)` (waits for it)."""
    contract = w3.eth.contract(address=market, abi=load_artifact("EnergyMarket").abi)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = contract.events.TradeOpened().get_logs(
            from_block=from_block, argument_filters={"tradeId": lot_id})
        if logs:
            return int(logs[0]["blockNumber"])
        time.sleep(0.05)
    raise TimeoutError(f"lot {lot_id} did not open a trade within {timeout:g} s")


class RelayMeters:
    """Emulated meters on TCP (the real protocol) for each auction's seller and buyer.

    Every auction has its own pair, so both relays start open; each meter stamps
    (time.monotonic) the moment its relay is commanded closed.
    """

    def __init__(self, world: BenchWorld, pairs: int) -> None:
        from hardware.emulator import EmulatedMeter, MeterServer, Microgrid
        from hardware.models import LeadAcidBattery, LoadProfile, Plant, SolarArray

        self.grid = Microgrid(
            Plant(pv=SolarArray(peak_w=800.0),
                  battery=LeadAcidBattery(capacity_wh=20_000, soc=0.5),
                  load=LoadProfile.constant(400.0), time_s=12 * 3600.0), acceleration=4.0)

        class Stamped(EmulatedMeter):
            closed_at: float | None = None

            def set_relay(self, closed: bool) -> None:
                if closed and not self.relay_closed and self.closed_at is None:
                    self.closed_at = time.monotonic()
                super().set_relay(closed)

        self.pairs: list[tuple[Any, Any, Any, Any]] = []  # seller, buyer, their servers
        self.servers: list[Any] = []
        for i in range(pairs):
            seller, buyer = Account.create(), Account.create()
            for account in (seller, buyer):
                world.fund(account.address, 1_000 * ETHER)
            world.mint(seller, 1_000)
            ends = []
            for kind, owner in (("supply", seller), ("load", buyer)):
                meter = Stamped(kind, self.grid, meter_id=f"bench-{kind}-{i}", watchdog_s=30,
                                rated_power_w=1200.0)
                server = MeterServer(meter)
                server.start()
                world.give_meter(owner, meter.address, kind, meter.identity.rated_power_w)
                self.servers.append(server)
                ends.append(server)
            self.pairs.append((seller, buyer, ends[0], ends[1]))

    def args(self) -> list[str]:
        """`microgrid serve` options bridging every meter."""
        return [arg for server in self.servers for arg in ("--meter", server.url)]

    def stop(self) -> None:
        """Stop every meter."""
        for server in self.servers:
            server.stop()


def relay_times(heads: HeadClock, meters: RelayMeters, reached: list[int],
                timeout: float = 20.0) -> list[float]:
    """Deadline-to-both-relays times (ms): the later relay close of each pair minus the
    arrival of the auction's deadline block (waits for the relays)."""
    times = []
    for (_, _, supply, load), block in zip(meters.pairs, reached, strict=False):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (
                supply.meter.closed_at is None or load.meter.closed_at is None):
            time.sleep(0.05)
        if supply.meter.closed_at is None or load.meter.closed_at is None:
            raise TimeoutError(f"the relays of the trade after block {block} did not close")
        both = max(supply.meter.closed_at, load.meter.closed_at)
        times.append((both - heads.arrival(block)) * 1000)
        print(f"finalize: relays after block {block}: supply "
              f"{(supply.meter.closed_at - heads.arrival(block)) * 1000:.0f} ms, load "
              f"{(load.meter.closed_at - heads.arrival(block)) * 1000:.0f} ms", flush=True)
    return times


def main(full: bool = False) -> dict[str, Any]:
    """Run the finalize benchmark and write bench/results/finalize.json."""
    auctions = 15 if full else 6
    world = BenchWorld(params=MarketParameters(min_duration=2, max_duration=86_400),
                       tokens_wh=0, load_meters=False)
    heads = HeadClock(world.ws_url)
    meters = RelayMeters(world, auctions)
    server = Server(world, finalizer=True, args=meters.args())
    client = world.client
    w3 = client._w3  # noqa: SLF001 - the bench reads logs directly
    trade_ms: list[float] = []
    lot_ids: list[int] = []
    reached_blocks: list[int] = []
    try:
        time.sleep(5)  # the bridge finds its meters
        for number in range(auctions):
            seller, buyer, _, _ = meters.pairs[number]
            time.sleep(random.uniform(0, world.block_time))  # noqa: S311 - any phase of a block
            listed = client.wait(client.sell(seller, 10, PRICE, DURATION_S))
            lot_id = client.lot_count()
            client.wait(client.bid(buyer, lot_id, PRICE))
            deadline = client.lot(lot_id).deadline
            reached = heads.first_at_or_after(deadline)
            opened = trade_block(w3, world.deployment.market, lot_id, listed["blockNumber"])
            ms = (heads.arrival(opened) - heads.arrival(reached)) * 1000
            trade_ms.append(ms)
            lot_ids.append(lot_id)
            reached_blocks.append(reached)
            print(f"finalize: lot {lot_id}: deadline block {reached}, trade in block {opened} "
                  f"({ms:.0f} ms)", flush=True)
        relays = relay_times(heads, meters, reached_blocks)
    finally:
        server.stop()
        meters.stop()
        heads.close()
        world.close()
    result: dict[str, Any] = {
        "mode": "full" if full else "quick",
        "machine": machine(),
        "block_time_s": world.block_time,
        "auctions": auctions,
        "deadline_to_trade_ms": {"median": round(median(trade_ms), 1),
                                 "p95": round(percentile(trade_ms, 95), 1)},
        "deadline_to_relay_ms": {
            "median": round(median(relays), 1), "p95": round(percentile(relays, 95), 1)},
    }
    result["deadline_to_relay_note"] = (
        "the later of the two relays (seller's export, buyer's load) commanded closed by the "
        "server's meter bridge (`microgrid serve --meter`), stamped by the emulated meters on "
        "TCP; from the arrival of the deadline block")
    write_result("finalize.json", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="more auctions")
    main(parser.parse_args().full)
