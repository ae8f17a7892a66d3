"""throughput.json: the raw node limit (signed transfers a second) and, later, readings a second.

The raw part: pre-signed Ether transfers from many accounts, sent as JSON-RPC batches of
`eth_sendRawTransaction` by a few threads to a managed anvil with 1 s blocks; the rate is the
transfers mined divided by the time between the arrival of the block before the first one that
holds them and the arrival of the last full one (the last block takes only what was left).

The end-to-end part, in the same run: one meter bridge process carrying more meters than it can
forward (bench/meters.py), readings accepted on chain a second over a window of blocks.
"""

from __future__ import annotations

import argparse
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from eth_account import Account

from bench.world import ETHER, BenchWorld, HeadClock, machine, write_result

SENDERS = 20
BATCH = 100


def raw_rate(world: BenchWorld, heads: HeadClock, transfers: int) -> dict[str, Any]:
    """Signed transfers mined a second when the node is fed as fast as it takes them."""
    senders = [Account.create() for _ in range(SENDERS)]
    for account in senders:
        world.fund(account.address, 10 * ETHER)
    sink = Account.create().address
    chain_id = world.client.sender.chain_id()
    base = int(world.client._w3.eth.get_block("latest")["baseFeePerGas"] or 0)  # noqa: SLF001
    per_sender = -(-transfers // SENDERS)
    raws: list[str] = []
    for nonce in range(per_sender):  # interleaved: every batch spreads over the senders
        for account in senders:
            signed = account.sign_transaction({
                "to": sink, "value": 1, "gas": 21_000, "nonce": nonce, "chainId": chain_id,
                "maxFeePerGas": 100 * base + 10**9, "maxPriorityFeePerGas": 10**9})
            raws.append("0x" + signed.raw_transaction.hex().removeprefix("0x"))
    raws = raws[:transfers]
    ids = itertools.count(1)
    start_block = world.client.block_number()

    def send(batch: list[str]) -> None:
        payload = [{"jsonrpc": "2.0", "id": next(ids), "method": "eth_sendRawTransaction",
                    "params": [raw]} for raw in batch]
        requests.post(world.url, json=payload, timeout=60).raise_for_status()

    batches = [raws[i:i + BATCH] for i in range(0, len(raws), BATCH)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, batches))
    w3 = world.client._w3  # noqa: SLF001
    counts: dict[int, int] = {}
    deadline = time.monotonic() + 120
    number = start_block + 1
    while sum(counts.values()) < len(raws) and time.monotonic() < deadline:
        if number > w3.eth.block_number:
            time.sleep(0.05)
            continue
        counts[number] = len(w3.eth.get_block(number)["transactions"])
        number += 1
    mined = {n: c for n, c in counts.items() if c}
    first, last = min(mined), max(mined)
    # The sustained rate: the last block only takes what was left over, so it is not counted.
    steady = last - 1 if last > first else last
    seconds = heads.arrival(steady) - heads.arrival(first - 1)
    taken = sum(c for n, c in mined.items() if n <= steady)
    return {"transfers": sum(mined.values()), "blocks": last - first + 1,
            "max_per_block": max(mined.values()),
            "raw_tx_per_s": round(taken / seconds, 1)}


READING_METERS = 400  # 400 readings a second offered: about what one bridge process can carry
READING_CADENCE_S = 1.0


def readings_rate(world: BenchWorld, heads: HeadClock, full: bool) -> dict[str, Any]:
    """Readings a second taken from meters and accepted on chain, the bridge fed beyond its limit.

    One bridge process (bench/meters.py) with `READING_METERS` signing meters READ every
    second: more readings a second than it can forward, so the rate is the bridge's limit.
    """
    from bench.meters import run_bridge

    return run_bridge(world, heads, READING_METERS, cadence=READING_CADENCE_S, light=True,
                      warmup=15.0, window=40.0 if full else 20.0)


def main(full: bool = False) -> dict[str, Any]:
    """Run the throughput benchmark and write bench/results/throughput.json."""
    world = BenchWorld(tokens_wh=0)
    heads = HeadClock(world.ws_url)
    try:
        raw = raw_rate(world, heads, 10_000 if full else 5_000)
        reading_run = readings_rate(world, heads, full)
    finally:
        heads.close()
        world.close()
    print(f"throughput: {raw['raw_tx_per_s']} signed transfers/s "
          f"({raw['transfers']} in {raw['blocks']} blocks)", flush=True)
    readings = reading_run["accepted_per_s"]
    result: dict[str, Any] = {
        "mode": "full" if full else "quick",
        "machine": machine(),
        "block_time_s": world.block_time,
        "raw": raw,
        "raw_tx_per_s": raw["raw_tx_per_s"],
        "readings_per_s": readings,
        "ratio": round(readings / raw["raw_tx_per_s"], 3),
        "readings": reading_run,
        "readings_note": (
            f"{READING_METERS} meters READ every {READING_CADENCE_S:g} s by one bridge process "
            "(bench/meters.py; the in-process driver signs each reading with the meter's key "
            "in the bridge process, work a real meter does itself), forwarded by its one "
            "submitter: one reportBatch a block, up to 1,000 readings, gas from the node's "
            "estimate"),
    }
    write_result("throughput.json", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="more transfers")
    main(parser.parse_args().full)
