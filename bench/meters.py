"""meters.json: one meter bridge (one process, one MeterBridge) carrying N emulated meters.

A managed anvil with 1 s blocks (base fee 0). The operator offers N supply meters (one owner per
ten meters) and the owners accept them, all sent at once so that many go in each block. Then
one bridge process (`python -m bench.meters --bridge CONFIG`, so its CPU, memory and threads
are its own) serves every meter with its fixed pool and forwards their readings from one
submitter account. Each meter is READ every `CADENCE_S` seconds and each sane reading goes to
the chain (`submit_interval` = the same less one submitter pass), so the expected rate is
N / CADENCE_S readings a second.

Meters: up to `TCP_MAX` meters are emulated meters (hardware/emulator.py) speaking the real
serial protocol over TCP, served from this process; above that, a lighter in-process driver
registered under the `benchmeter://` scheme in the bridge process signs each reading with the
meter's own key (hardware/signing.py `sign_reading`), as a meter would, without a line.

Backlog: for every reading accepted in the measured window, the arrival at the node of its
block minus the moment the meter signed it (the READ). CPU, resident memory and threads are
the bridge process's.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from eth_account import Account

from bench.world import (
    ETHER,
    ROOT,
    BenchWorld,
    HeadClock,
    cpu_seconds,
    machine,
    percentile,
    rss_mb,
    write_result,
)

CADENCE_S = 10.0
# The submitter's pass interval (MeterBridge batch_interval): `submit_interval` is the READ
# period less one pass, so each READ goes at the first pass after it. Equal to the READ period,
# a reading would wait for the first pass past the 10 s mark and the next READ a little
# longer each time: the forwarding moment drifts through the whole period.
PASS_S = 0.5
TCP_MAX = 300
METERS_PER_OWNER = 10
SCHEME = "benchmeter"
LIGHT_RATED_W = 7200  # the light meters count 1 Wh a second (3.6 kW)
ACCELERATION = 4.0  # the TCP meters' plant: 800 W PV at 4x counts ~0.9 Wh a second


# --------------------------------------------------------------------------- light meters


class LightMeter:
    """A meter without a line: holds its key, counts 1 Wh a second, signs every READ."""

    def __init__(self, key: bytes, domain: Any, start: float) -> None:
        from hardware.signing import meter_address

        self.key = key
        self.address = meter_address(key)
        self.domain = domain
        self.start = start
        self.sequence = 0
        self.relay = False
        self.read_times: dict[int, float] = {}
        self.lock = threading.Lock()

    def read(self, block: Any) -> tuple[int, int, bytes]:
        """A signed reading of the counter now with `block` (and when it was taken)."""
        from hardware.signing import sign_reading

        with self.lock:
            now = time.monotonic()
            self.sequence += 1
            energy = 1_000 + int(now - self.start)
            signature = sign_reading(self.key, self.domain, energy, self.sequence, block)
            self.read_times[self.sequence] = now
            return energy, self.sequence, signature


class LightDriver:
    """The bridge's driver for a LightMeter (`benchmeter://INDEX`)."""

    meters: dict[str, LightMeter] = {}

    def __init__(self, url: str, timeout: float, retries: int) -> None:
        self.name = url
        self.meter = self.meters[url]

    def identify(self) -> Any:
        """ID: provisioned already, for this chain's registry."""
        from dapp.bridge.drivers import DeviceIdentity

        domain = self.meter.domain
        return DeviceIdentity(self.meter.address, "bench-" + self.name.rsplit("/", 1)[1],
                              "supply", LIGHT_RATED_W, 60, "bench", (domain.chain_id,
                                                                    domain.registry))

    def provision(self, chain_id: int, registry: str) -> Any:
        """Never needed: the meters are provisioned when made."""
        return self.identify()

    def read(self, block: Any) -> Any:
        """READ of `block`."""
        from dapp.bridge.drivers import DeviceReading, SignedReading

        energy, sequence, signature = self.meter.read(block)
        return DeviceReading(SignedReading(self.meter.address, energy, sequence, block,
                                           signature),
                             power_w=3600.0, voltage_v=230.0, current_a=15.6,
                             relay_closed=self.meter.relay, samples=sequence)

    def set_relay(self, on: bool) -> bool:
        """RELAY."""
        self.meter.relay = on
        return on

    def heartbeat(self) -> bool:
        """HB."""
        return self.meter.relay

    def close(self) -> None:
        """Nothing to close."""


def bridge_process(config_path: str) -> int:
    """The bridge side: run one MeterBridge over the configured meters until SIGTERM."""
    from dapp.bridge import BridgeMeter, MeterBridge, register_driver
    from dapp.chain.client import ChainClient
    from hardware.signing import Domain

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    chain = ChainClient(config["rpc"], Path(config["state_dir"]), market=config["market"])
    domain = Domain(chain.chain_id, chain.deployment.registry)
    start = time.monotonic()
    register_driver(SCHEME, LightDriver)
    meters = []
    for i, key in enumerate(config.get("keys", [])):
        light = LightMeter(bytes.fromhex(key), domain, start)
        url = f"{SCHEME}://{i}"
        LightDriver.meters[url] = light
        meters.append(BridgeMeter(url, light.address))
    meters += [BridgeMeter(url) for url in config.get("urls", [])]
    bridge = MeterBridge(chain, meters, submitter=Account.from_key(config["submitter"]),
                         poll_interval=config["cadence"],
                         submit_interval=max(0.0, config["cadence"] - PASS_S),
                         **config.get("bridge", {}))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    bridge.start()
    print("bridge started", flush=True)
    stop.wait()
    bridge.stop(timeout=20)
    times = {m.address: m.read_times for m in LightDriver.meters.values()}
    Path(config["out"]).write_text(json.dumps(times), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------- the bench side


class TimedMeters:
    """Emulated meters on TCP (the real protocol) that remember when they signed each reading."""

    def __init__(self, count: int, domain: Any) -> None:
        from hardware.emulator import EmulatedMeter, MeterMemory, MeterServer, Microgrid
        from hardware.models import LeadAcidBattery, LoadProfile, Plant, SolarArray

        self.grid = Microgrid(
            Plant(pv=SolarArray(peak_w=800.0), battery=LeadAcidBattery(capacity_wh=20_000,
                                                                          soc=0.5),
                  load=LoadProfile.constant(400.0), time_s=12 * 3600.0),
            acceleration=ACCELERATION)
        self.read_times: dict[str, dict[int, float]] = {}
        times = self.read_times

        class Timed(EmulatedMeter):
            def reading(self, block):  # type: ignore[no-untyped-def]
                signed = super().reading(block)
                times.setdefault(self.address, {})[signed.sequence] = time.monotonic()
                return signed

        self.servers = []
        for i in range(count):
            state = MeterMemory.ephemeral()
            state.domain = domain
            meter = Timed("supply", self.grid, meter_id=f"bench-{i}", watchdog_s=60,
                          rated_power_w=1200.0, state=state)
            server = MeterServer(meter)
            server.start()
            self.servers.append(server)

    @property
    def meters(self) -> list[Any]:
        """The emulated meters."""
        return [s.meter for s in self.servers]

    def stop(self) -> None:
        """Stop every server."""
        for server in self.servers:
            server.stop()


def give_meters(world: BenchWorld, meters: list[tuple[str, int]]) -> None:
    """Offer supply meters (address, rated W) to owners (ten each) who accept them, in bulk."""
    client = world.client
    owners = [Account.create() for _ in range(math.ceil(len(meters) / METERS_PER_OWNER))]
    for owner in owners:
        world.fund(owner.address, ETHER)
    offers = [client.offer_meter(world.operator, address, owners[i // METERS_PER_OWNER].address,
                                 "supply", rated) for i, (address, rated) in enumerate(meters)]
    for tx in offers:
        client.wait(tx, timeout=120)
    accepts = [client.accept_meter(owners[i // METERS_PER_OWNER], address)
               for i, (address, _) in enumerate(meters)]
    for tx in accepts:
        client.wait(tx, timeout=120)


def accepted_readings(world: BenchWorld, first: int, last: int) -> list[tuple[str, int, int]]:
    """(meter, sequence, block) of every ReadingRecorded in blocks first..last."""
    registry = world.client._registry  # noqa: SLF001 - the bench reads logs directly
    out = []
    for start in range(first, last + 1, 20):
        logs = registry.events.ReadingRecorded().get_logs(from_block=start,
                                                          to_block=min(last, start + 19))
        out += [(log["args"]["meter"], int(log["args"]["sequence"]), int(log["blockNumber"]))
                for log in logs]
    return out


def run_bridge(world: BenchWorld, heads: HeadClock, count: int, *, cadence: float = CADENCE_S,
               light: bool | None = None, warmup: float = 25.0, window: float = 40.0,
               bridge: dict[str, Any] | None = None) -> dict[str, Any]:
    """One bridge process carrying `count` meters; the rates, backlog and the process's cost."""
    light = count > TCP_MAX if light is None else light
    domain = world.client.reading_domain()
    tcp = None
    keys: list[str] = []
    if light:
        accounts = [Account.create() for _ in range(count)]
        keys = [a.key.hex().removeprefix("0x") for a in accounts]
        give_meters(world, [(a.address, LIGHT_RATED_W) for a in accounts])
    else:
        tcp = TimedMeters(count, domain)
        give_meters(world, [(m.address, m.identity.rated_power_w) for m in tcp.meters])
    submitter = Account.create()
    world.fund(submitter.address, 1_000 * ETHER)
    work = world.root / f"bridge-{count}-{time.monotonic_ns()}"
    work.mkdir()
    config = {"rpc": world.url, "market": world.deployment.market, "state_dir": str(work / "s"),
              "submitter": submitter.key.hex(), "cadence": cadence, "keys": keys,
              "urls": [s.url for s in tcp.servers] if tcp else [], "out": str(work / "out.json"),
              "bridge": bridge or {}}
    config_path = work / "config.json"
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # holds meter keys
    with os.fdopen(fd, "w") as out:
        json.dump(config, out)
    log_path = work / "bridge.log"
    with log_path.open("w", encoding="utf-8") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "bench.meters", "--bridge",
                                    str(config_path)], cwd=ROOT, stdout=log_file,
                                   stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        time.sleep(warmup)
        first = world.client.block_number() + 1
        cpu0, t0 = cpu_seconds(process.pid), time.monotonic()
        time.sleep(window)
        cpu1, t1 = cpu_seconds(process.pid), time.monotonic()
        last = world.client.block_number()
        rss = rss_mb(process.pid)
        threads = _threads(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if tcp is not None:
            tcp.stop()
    if process.returncode not in (0, None):
        raise RuntimeError("bridge process failed:\n" + log_path.read_text()[-3000:])
    read_times = tcp.read_times if tcp else {
        address: {int(s): t for s, t in seqs.items()}
        for address, seqs in json.loads((work / "out.json").read_text()).items()}
    readings = accepted_readings(world, first, last)
    backlog = [heads.arrival(block) - read_times[meter][sequence]
               for meter, sequence, block in readings
               if sequence in read_times.get(meter, {})]
    seconds = heads.arrival(last) - heads.arrival(first - 1)
    warnings = sum(1 for line in log_path.read_text(encoding="utf-8").splitlines()
                   if "WARNING" in line or "ERROR" in line)
    run = {"meters": count, "driver": "light (benchmeter://, in-process, signs)" if light
           else "emulator over TCP (serial protocol)",
           "expected_per_s": round(count / cadence, 1),
           "accepted_per_s": round(len(readings) / seconds, 1),
           "backlog_p50_s": _round(percentile(backlog, 50)),
           "backlog_p95_s": _round(percentile(backlog, 95)),
           "blocks": last - first + 1, "cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
           "rss_mb": round(rss, 1), "threads": threads, "log_warnings": warnings}
    print(f"meters: {run}", flush=True)
    return run


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def main(full: bool = False, sizes: list[int] | None = None) -> dict[str, Any]:
    """Run the meters benchmark and write bench/results/meters.json."""
    sizes = sizes or [10, 100, 300, 1_000]
    world = BenchWorld(tokens_wh=0)
    heads = HeadClock(world.ws_url)
    runs = []
    try:
        for count in sizes:
            runs.append(run_bridge(world, heads, count,
                                   window=60.0 if full else 30.0))
    finally:
        heads.close()
        world.close()
    result = {
        "mode": "full" if full else "quick",
        "machine": machine(),
        "block_time_s": world.block_time,
        "cadence_s": CADENCE_S,
        "submit_interval_s": CADENCE_S - PASS_S,
        "drivers": (f"up to {TCP_MAX} meters: emulated meters (hardware/emulator.py) over TCP, "
                    "the real serial protocol, served by the bench process; above: an "
                    "in-process driver (benchmeter://) in the bridge process that signs each "
                    "reading with the meter's key (hardware/signing.py)"),
        "runs": runs,
    }
    write_result("meters.json", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="longer windows")
    parser.add_argument("--bridge", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help="comma-separated meter counts (a try-out)")
    args = parser.parse_args()
    if args.bridge:
        raise SystemExit(bridge_process(args.bridge))
    main(args.full, [int(n) for n in args.sizes.split(",")] if args.sizes else None)
