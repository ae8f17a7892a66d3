"""`microgrid demo` (what `make run` runs): node, contracts, users, emulated meters, web app."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dapp.commands.common import env


def cmd_demo(args: argparse.Namespace) -> int:
    """Prepare everything, then serve the app until Ctrl-C; stop it all cleanly."""
    from dapp.commands.serve import cmd_serve
    from dapp.demo_setup import DemoSettings, DemoSetup

    settings = DemoSettings(
        data_dir=Path(args.data_dir),
        node_port=args.node_port,
        block_time=args.block_time,
        acceleration=args.acceleration,
        pv_peak_w=args.peak_power,
        load_profile=args.load_profile,
    )
    setup = DemoSetup(settings, out=lambda line: print(line, flush=True))
    try:
        setup.prepare()
        st = setup.state
        serve_args = argparse.Namespace(
            rpc=setup.node.url,
            data_dir=str(settings.data_dir),
            market=None,
            kdf_n=args.kdf_n,
            finalizer=st.operator,
            finalizer_passphrase_file=str(setup.service_passphrase_file),
            host="127.0.0.1",
            port=args.port,
            meter=[(st.meter_urls[st.producer_meter], st.producer_meter),
                   (st.meter_urls[st.consumer_meter], st.consumer_meter)],
            meter_passphrase_file=str(setup.service_passphrase_file),
        )
        print(f"[8/8] serving the app on http://localhost:{args.port}", flush=True)
        print(setup.banner(f"http://localhost:{args.port}"), flush=True)
        return cmd_serve(serve_args)
    except KeyboardInterrupt:
        return 130
    finally:
        print("stopping the meters and the chain node (saving the chain) ...", file=sys.stderr)
        setup.stop()


def register(sub: argparse._SubParsersAction) -> None:
    """Add `demo` to the CLI."""
    p = sub.add_parser("demo", help="a whole micro-grid on this machine (what `make run` runs)")
    p.add_argument("--port", type=int, default=env("WEB_PORT", "3000"),
                   help="web app port (MICROGRID_WEB_PORT; default 3000)")
    p.add_argument("--node-port", type=int, default=env("NODE_PORT", "8545"),
                   help="anvil's port (MICROGRID_NODE_PORT; default 8545)")
    p.add_argument("--block-time", type=float, default=env("BLOCK_TIME", "1"),
                   help="seconds between blocks (MICROGRID_BLOCK_TIME; default 1)")
    p.add_argument("--acceleration", type=float, default=env("ACCELERATION", "60"),
                   help="emulated seconds per real second (MICROGRID_ACCELERATION; default 60: "
                   "a day in 24 minutes)")
    p.add_argument("--peak-power", type=float, default=env("PV_PEAK_POWER", "800"),
                   help="PV power at noon in W (MICROGRID_PV_PEAK_POWER; default 800)")
    p.add_argument("--load-profile",
                   default=env("LOAD_PROFILE", "0:150,7:400,12:300,19:600,23:150"),
                   help="the consumer's load, W or hour:W steps (MICROGRID_LOAD_PROFILE)")
    p.add_argument("--kdf-n", type=int, default=env("KDF_N", str(2**18)),
                   help="scrypt cost of accounts created on the login page (MICROGRID_KDF_N)")
    p.set_defaults(func=cmd_demo)
