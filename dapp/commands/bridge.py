"""`microgrid bridge`: serial meters <-> chain, on its own (`serve --meter` runs it in the app).

    microgrid bridge --rpc URL --meter socket://127.0.0.1:7001:ADDRESS [--meter ...]

Each meter's device key lives in the keystore (`microgrid account new --label meter-1`); the
bridge unlocks them with one passphrase. Every setting also has a MICROGRID_* variable.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dapp.commands.common import (
    add_market_option,
    add_meter_option,
    add_rpc_option,
    env,
    meter_specs,
    option,
    setup_logging,
    stop_on_signal,
)
from dapp.errors import MicrogridError


def cmd_bridge(args: argparse.Namespace) -> int:
    """Run the serial bridge for the given meters until SIGINT/SIGTERM."""
    from dapp.chain.client import ChainClient
    from dapp.wallet.keystore import Keystore, read_passphrase
    from hardware.bridge import BridgeMeter, MeterBridge

    specs = meter_specs(args)
    if not specs:
        raise MicrogridError("no meters: give --meter URL:ADDRESS (or MICROGRID_METERS)")
    setup_logging(args.log_level)
    keystore = Keystore(Path(args.data_dir) / "keystore")
    passphrase = read_passphrase(args.passphrase_file, prompt="Passphrase of the meter keys: ")
    meters = [BridgeMeter(url, keystore.unlock(address, passphrase)) for url, address in specs]
    # Own state directory: a web server on the same data directory keeps its own outbox and
    # listener cursor, and two processes must not rewrite the same files.
    chain = ChainClient(args.rpc, Path(args.data_dir) / "bridge", market=args.market,
                        operator=args.operator)
    _ = chain.deployment  # fail here, clearly, if no contracts are found on this chain
    bridge = MeterBridge(
        chain, meters,
        poll_interval=args.poll_interval,
        submit_interval=args.submit_interval,
        submit_step_wh=args.submit_step,
        read_timeout=args.read_timeout,
    )
    # Both signals end in bridge.stop(), which commands every relay open.
    with stop_on_signal() as stop:
        for meter in meters:
            print(f"bridging {meter.address} on {meter.url}", flush=True)
        bridge.run(stop, listener_interval=args.listen_interval)
    print("bridge stopped; relays commanded open", flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `bridge` to the CLI."""
    p = sub.add_parser(
        "bridge",
        help="poll serial meters, submit their readings, switch their relays from the chain",
        description="Opens each meter by URL (a device path such as /dev/ttyUSB0, "
        "socket://HOST:PORT, or a pty path), checks it against the MeterRegistry, submits its "
        "readings from its own key and closes its relay while its owner has an open trade "
        "(seller: supply meter, buyer: load meter). A dead or garbled line opens the relay.",
    )
    add_rpc_option(p)
    add_market_option(p)
    add_meter_option(p, "a meter's port URL and its device address in the keystore; repeat "
                     "for more meters")
    option(p, "--passphrase-file", env="METER_PASSPHRASE_FILE", default=env("PASSPHRASE_FILE"),
           shown_default="MICROGRID_PASSPHRASE_FILE, else asked on the terminal",
           help="file whose first line unlocks the meter keys")
    option(p, "--poll-interval", env="BRIDGE_POLL_INTERVAL", type=float, default=1.0,
           help="seconds between READs of each meter")
    option(p, "--read-timeout", env="BRIDGE_READ_TIMEOUT", type=float, default=1.0,
           help="seconds to wait for each reply")
    option(p, "--submit-interval", env="BRIDGE_SUBMIT_INTERVAL", type=float, default=10.0,
           help="at least this many seconds between two readings of a meter")
    option(p, "--submit-step", env="BRIDGE_SUBMIT_STEP_WH", type=int, default=1,
           help="send a reading once the counter grew by this many Wh")
    option(p, "--listen-interval", env="BRIDGE_LISTEN_INTERVAL", type=float, default=1.0,
           help="seconds between polls of the chain for events")
    option(p, "--log-level", env="LOG_LEVEL", default="INFO", help="DEBUG, INFO, WARNING")
    p.set_defaults(func=cmd_bridge)
