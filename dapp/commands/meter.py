"""`microgrid meter-emulator`: an emulated meter (PV, battery, load) on TCP or a pseudo-terminal."""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from dapp.commands.common import env, env_default


def cmd_meter_emulator(args: argparse.Namespace) -> int:
    """Serve one emulated meter until interrupted."""
    from hardware.emulator import REGISTRY_MAX_RATED_W, EmulatedMeter, MeterServer, Microgrid
    from hardware.models import LeadAcidBattery, LoadProfile, Plant, SolarArray

    try:
        plant = Plant(
            pv=SolarArray(peak_w=args.peak_power),
            battery=LeadAcidBattery(capacity_wh=args.battery_wh, soc=args.battery_soc),
            load=LoadProfile.parse(args.load_profile),
            time_s=args.start_hour * 3600.0,
        )
        grid = Microgrid(plant, acceleration=args.acceleration)
        meter = EmulatedMeter(args.kind, grid, meter_id=args.meter_id,
                              rated_power_w=args.rated_power, watchdog_s=args.watchdog)
    except ValueError as exc:
        print(f"microgrid meter-emulator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    transport, port = ("pty", 0) if args.pty else ("tcp", args.tcp)
    server = MeterServer(meter, transport=transport, host=args.host, port=port)
    url = server.start()
    ident = meter.identity
    print(f"{ident.kind} meter {ident.meter_id} on {url} (rated {ident.rated_power_w} W, "
          f"watchdog {ident.watchdog_s} s, acceleration {args.acceleration:g}x)", flush=True)
    if ident.rated_power_w > REGISTRY_MAX_RATED_W:
        print(f"warning: rated power x acceleration = {ident.rated_power_w} W exceeds the "
              f"registry's {REGISTRY_MAX_RATED_W} W; lower --acceleration or the powers",
              file=sys.stderr)
    try:
        threading.Event().wait()  # serve until Ctrl-C / SIGINT
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `meter-emulator` to the CLI."""
    p = sub.add_parser(
        "meter-emulator",
        help="run an emulated meter (PV, lead-acid battery, load) on TCP or a pty",
        description="Speaks hardware/PROTOCOL.md like a real meter. A supply meter counts "
        "PV -> battery energy; a load meter counts battery -> consumer energy while its relay is "
        "closed. With --acceleration A the counters advance A times faster than real time, so "
        "register the meter with the rated power it reports (rating x A).",
    )
    p.add_argument("--kind", choices=("supply", "load"), default=env("METER_KIND"),
                   required=env("METER_KIND") is None,
                   help="what the meter measures (MICROGRID_METER_KIND)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--tcp", type=int, metavar="PORT", default=env_default("METER_TCP", 7001),
                       help="listen on TCP PORT; connect with socket://HOST:PORT "
                       "(MICROGRID_METER_TCP; default 7001)")
    where.add_argument("--pty", action="store_true", default=env("METER_PTY", "") == "1",
                       help="serve on a new pseudo-terminal and print its path "
                       "(MICROGRID_METER_PTY=1)")
    p.add_argument("--host", default=env("METER_HOST", "127.0.0.1"),
                   help="TCP address to listen on (MICROGRID_METER_HOST; default 127.0.0.1)")
    p.add_argument("--meter-id", default=env("METER_ID"),
                   help="meter id reported by ID (MICROGRID_METER_ID; default emu-KIND)")
    p.add_argument("--watchdog", type=int, default=env_default("METER_WATCHDOG", 10),
                   help="seconds without a valid command before the relay opens "
                   "(MICROGRID_METER_WATCHDOG; default 10)")
    p.add_argument("--rated-power", type=float, default=env("METER_RATED_POWER"),
                   help="rated power in W before acceleration (MICROGRID_METER_RATED_POWER; "
                   "default: the PV peak for supply, the load peak for load)")
    p.add_argument("--peak-power", type=float, default=env_default("PV_PEAK_POWER", 800.0),
                   help="PV peak power at noon in W (MICROGRID_PV_PEAK_POWER; default 800)")
    p.add_argument("--battery-wh", type=float, default=env_default("BATTERY_WH", 2400.0),
                   help="battery capacity in Wh (MICROGRID_BATTERY_WH; default 2400)")
    p.add_argument("--battery-soc", type=float, default=env_default("BATTERY_SOC", 0.6),
                   help="initial state of charge 0..1 (MICROGRID_BATTERY_SOC; default 0.6)")
    p.add_argument("--load-profile", default=env("LOAD_PROFILE", "200"),
                   help="constant W, or hour:W steps such as 0:150,7:400,19:800,23:150 "
                   "(MICROGRID_LOAD_PROFILE; default 200)")
    p.add_argument("--acceleration", type=float, default=env_default("ACCELERATION", 1.0),
                   help="simulated seconds per real second, e.g. 60 (MICROGRID_ACCELERATION; "
                   "default 1)")
    p.add_argument("--start-hour", type=float, default=env_default("START_HOUR", 10.0),
                   help="simulated time of day at start, 0..24 (MICROGRID_START_HOUR; default 10)")
    p.set_defaults(func=cmd_meter_emulator)
