"""`microgrid bridge`: meters <-> chain, on its own (`serve --meter` runs it in the app).

    microgrid bridge --rpc URL --submitter ADDRESS --meter socket://127.0.0.1:7001 [--meter ...]

Each meter keeps its own key and signs its readings; the bridge only carries them. The
`--submitter` account (in the keystore) sends them and pays the gas. Every setting also has a
MICROGRID_* variable.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dapp.commands.common import (
    add_market_option,
    add_meter_option,
    add_rpc_option,
    add_submitter_options,
    meter_specs,
    option,
    setup_logging,
    stop_on_signal,
)
from dapp.errors import MicrogridError


def cmd_bridge(args: argparse.Namespace) -> int:
    """Run the serial bridge for the given meters until SIGINT/SIGTERM."""
    from dapp.bridge import MeterBridge
    from dapp.chain.client import ChainClient
    from dapp.wallet.keystore import Keystore, read_passphrase

    meters = meter_specs(args)
    if not meters:
        raise MicrogridError("no meters: give --meter URL (or MICROGRID_METERS)")
    setup_logging(args.log_level)
    submitter = None
    if args.submitter:
        keystore = Keystore(Path(args.data_dir) / "keystore")
        passphrase = read_passphrase(args.submitter_passphrase_file,
                                     prompt=f"Passphrase of {args.submitter}: ")
        submitter = keystore.unlock(args.submitter, passphrase)
    # Own state directory: a web server on the same data directory keeps its own outbox and
    # listener cursor, and two processes must not rewrite the same files.
    chain = ChainClient(args.rpc, Path(args.data_dir) / "bridge", market=args.market,
                        operator=args.operator)
    _ = chain.deployment  # fail here, clearly, if no contracts are found on this chain
    bridge = MeterBridge(
        chain, meters,
        submitter=submitter,
        poll_interval=args.poll_interval,
        submit_interval=args.submit_interval,
        submit_step_wh=args.submit_step,
        read_timeout=args.read_timeout,
        heartbeat_interval=args.heartbeat_interval,
    )
    # Both signals end in bridge.stop(), which commands every relay open.
    with stop_on_signal() as stop:
        for meter in meters:
            print(f"bridging the meter on {meter.url}", flush=True)
        bridge.run(stop, listener_interval=args.listen_interval)
    print("bridge stopped; relays commanded open", flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `bridge` to the CLI."""
    p = sub.add_parser(
        "bridge",
        help="poll serial meters, submit their readings, switch their relays from the chain",
        description="Opens each meter by URL (a device path such as /dev/ttyUSB0, "
        "socket://HOST:PORT, or a pty path), checks it against the MeterRegistry, forwards the "
        "readings the meter signed (from --submitter, who pays the gas) and closes its relay "
        "while its owner has an open trade (seller: supply meter, buyer: load meter). A dead or "
        "garbled line opens the relay.",
    )
    add_rpc_option(p)
    add_market_option(p)
    add_meter_option(p, "a meter's port URL, optionally with :ADDRESS to insist on that meter; "
                     "repeat for more meters")
    add_submitter_options(p)
    option(p, "--poll-interval", env="BRIDGE_POLL_INTERVAL", type=float, default=1.0,
           help="seconds between READs of each meter")
    option(p, "--read-timeout", env="BRIDGE_READ_TIMEOUT", type=float, default=1.0,
           help="seconds to wait for each reply")
    option(p, "--submit-interval", env="BRIDGE_SUBMIT_INTERVAL", type=float, default=10.0,
           help="at least this many seconds between two readings of a meter")
    option(p, "--submit-step", env="BRIDGE_SUBMIT_STEP_WH", type=int, default=1,
           help="send a reading once the counter grew by this many Wh")
    option(p, "--heartbeat-interval", env="BRIDGE_HEARTBEAT_INTERVAL", type=float, default=60.0,
           help="forward an unchanged counter this often, so the chain sees a live meter")
    option(p, "--listen-interval", env="BRIDGE_LISTEN_INTERVAL", type=float, default=1.0,
           help="seconds between polls of the chain for events")
    option(p, "--log-level", env="LOG_LEVEL", default="INFO", help="DEBUG, INFO, WARNING")
    p.set_defaults(func=cmd_bridge)
