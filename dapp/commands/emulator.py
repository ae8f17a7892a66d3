"""`microgrid meter-emulator`: an emulated meter (PV, battery, load) on TCP or a pseudo-terminal.

The meter keeps its own key in `--key-file` (its EEPROM: the key, the last signed counter and
sequence, the installed domain), made on first start with mode 0600 and never sent anywhere.
"""

from __future__ import annotations

import argparse
import sys

from dapp.commands.common import option, setup_logging, stop_on_signal
from hardware.protocol import KINDS


def cmd_meter_emulator(args: argparse.Namespace) -> int:
    """Serve one emulated meter until interrupted."""
    from hardware.emulator import EmulatedMeter, MeterMemory, MeterServer, Microgrid
    from hardware.models import LeadAcidBattery, LoadProfile, Plant, SolarArray
    from hardware.protocol import MAX_RATED_POWER_W

    try:
        plant = Plant(
            pv=SolarArray(peak_w=args.peak_power),
            battery=LeadAcidBattery(capacity_wh=args.battery_wh, soc=args.battery_soc),
            load=LoadProfile.parse(args.load_profile),
            time_s=args.start_hour * 3600.0,
        )
        grid = Microgrid(plant, acceleration=args.acceleration)
        state = (MeterMemory.open(args.key_file) if args.key_file
                 else MeterMemory.ephemeral())
        meter = EmulatedMeter(args.kind, grid, meter_id=args.meter_id,
                              rated_power_w=args.rated_power, watchdog_s=args.watchdog,
                              state=state)
    except (ValueError, OSError) as exc:
        print(f"microgrid meter-emulator: {exc}", file=sys.stderr)
        return 2
    setup_logging()
    transport, port = ("pty", 0) if args.pty else ("tcp", args.tcp)
    server = MeterServer(meter, transport=transport, host=args.host, port=port)
    # The handler first: whoever waits for the banner may interrupt right after it.
    with stop_on_signal() as stop:
        try:
            url = server.start()
            ident = meter.identity
            print(f"{ident.kind} meter {ident.meter_id} {meter.address} on {url} (rated "
                  f"{ident.rated_power_w} W, watchdog {ident.watchdog_s} s, acceleration "
                  f"{args.acceleration:g}x)", flush=True)
            if not args.key_file:
                print("warning: no --key-file: the meter's key lives in memory only; a restart "
                      "makes a new meter, which the grid operator must offer again",
                      file=sys.stderr)
            if ident.rated_power_w > MAX_RATED_POWER_W:
                print(f"warning: rated power x acceleration = {ident.rated_power_w} W exceeds "
                      f"the registry's {MAX_RATED_POWER_W} W; lower --acceleration or the powers",
                      file=sys.stderr)
            stop.wait()  # serve until Ctrl-C or SIGTERM
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
        "offer the meter with the rated power it reports (rating x A). The meter signs its "
        "readings with its own key, kept in --key-file.",
    )
    option(p, "--kind", env="METER_KIND", choices=KINDS, required=True,
           help="what the meter measures")
    where = p.add_mutually_exclusive_group()
    option(where, "--tcp", env="METER_TCP", type=int, metavar="PORT", default=7001,
           help="listen on TCP PORT; connect with socket://HOST:PORT")
    option(where, "--pty", env="METER_PTY", action="store_true",
           help="serve on a new pseudo-terminal and print its path")
    option(p, "--host", env="METER_HOST", default="127.0.0.1", help="TCP address to listen on")
    option(p, "--key-file", env="METER_KEY_FILE", metavar="PATH",
           shown_default="none: a key in memory, forgotten on exit",
           help="the meter's EEPROM: its key, last signed counter and sequence and installed "
           "domain; created with mode 0600 on first start")
    option(p, "--meter-id", env="METER_ID", shown_default="emu-KIND",
           help="meter id reported by ID")
    option(p, "--watchdog", env="METER_WATCHDOG", type=int, default=10,
           help="seconds without a valid command before the relay opens")
    option(p, "--rated-power", env="METER_RATED_POWER", type=float,
           shown_default="the PV peak for supply, the load peak for load",
           help="rated power in W before acceleration")
    option(p, "--peak-power", env="PV_PEAK_POWER", type=float, default=800.0,
           help="PV peak power at noon in W")
    option(p, "--battery-wh", env="BATTERY_WH", type=float, default=2400.0,
           help="battery capacity in Wh")
    option(p, "--battery-soc", env="BATTERY_SOC", type=float, default=0.6,
           help="initial state of charge 0..1")
    option(p, "--load-profile", env="LOAD_PROFILE", default="200",
           help="constant W, or hour:W steps such as 0:150,7:400,19:800,23:150")
    option(p, "--acceleration", env="ACCELERATION", type=float, default=1.0,
           help="simulated seconds per real second, e.g. 60")
    option(p, "--start-hour", env="START_HOUR", type=float, default=10.0,
           help="simulated time of day at start, 0..24")
    p.set_defaults(func=cmd_meter_emulator)
