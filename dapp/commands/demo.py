"""`microgrid demo` (what `make run` runs): node, contracts, users, emulated meters, web app."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dapp.commands.common import kdf_n, option
from dapp.wallet.keystore import GETH_SCRYPT_N


def cmd_demo(args: argparse.Namespace) -> int:
    """Prepare everything, then serve the app until Ctrl-C; stop it all cleanly."""
    from dapp.bridge import BridgeMeter
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
            meter=[BridgeMeter(st.meter_urls[st.producer_meter], st.producer_meter),
                   BridgeMeter(st.meter_urls[st.consumer_meter], st.consumer_meter)],
            # The operator finalizes auctions and forwards the meters' signed readings.
            submitter=None,
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
    option(p, "--port", env="WEB_PORT", type=int, default=3000, help="web app port")
    option(p, "--node-port", env="NODE_PORT", type=int, default=8545, help="anvil's port")
    option(p, "--block-time", env="BLOCK_TIME", type=float, default=1.0,
           help="seconds between blocks")
    option(p, "--acceleration", env="ACCELERATION", type=float, default=60.0,
           shown_default="60: a day in 24 minutes", help="emulated seconds per real second")
    option(p, "--peak-power", env="PV_PEAK_POWER", type=float, default=800.0,
           help="PV power at noon in W")
    option(p, "--load-profile", env="LOAD_PROFILE", default="0:150,7:400,12:300,19:600,23:150",
           help="the consumer's load, W or hour:W steps")
    option(p, "--kdf-n", env="KDF_N", type=kdf_n, default=GETH_SCRYPT_N,
           help="scrypt cost of accounts created on the login page")
    p.set_defaults(func=cmd_demo)
