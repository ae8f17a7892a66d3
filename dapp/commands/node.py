"""`microgrid node`: run the managed anvil node in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from dapp.commands.common import option, stop_on_signal
from dapp.errors import MicrogridError


def cmd_node(args: argparse.Namespace) -> int:
    """Start anvil with its state in the data directory; stop it cleanly on a signal."""
    from dapp.chain.anvil import ManagedAnvil

    node = ManagedAnvil(
        Path(args.data_dir),
        host=args.host,
        port=args.port,
        block_time=args.block_time if args.block_time > 0 else None,
        state_interval=args.state_interval,
        chain_id=args.chain_id,
    )
    gateway = None
    if args.gateway_host:
        from dapp.chain.gateway import Gateway, serve

        try:
            gateway = serve(Gateway(node.url, rate_limit=args.gateway_rate_limit),
                            args.gateway_host, args.gateway_port)
        except OSError as exc:
            raise MicrogridError(f"the gateway cannot listen on {args.gateway_host}:"
                                 f"{args.gateway_port}: {exc.strerror or exc}") from None
    # Both signals only set the event: the loop then stops anvil once, saving its state.
    with stop_on_signal() as stop:
        try:
            node.start()
            if node.restored_from_backup:
                print(
                    f"warning: {node.state_file} was damaged; restored the copy from the "
                    "previous start",
                    file=sys.stderr,
                )
            mining = f"a block every {args.block_time:g} s" if args.block_time > 0 else "automine"
            print(f"anvil listening on {node.url} (chain id {args.chain_id}, {mining})",
                  flush=True)
            print(f"chain state: {node.state_file}; log: {node.log_file}", flush=True)
            if gateway is not None:
                threading.Thread(target=gateway.serve_forever, name="gateway",
                                 daemon=True).start()
                print(f"gateway for other machines on http://{args.gateway_host}:"
                      f"{gateway.port} (standard methods only)", flush=True)
            while not stop.wait(0.5):
                if not node.is_running():
                    print(f"microgrid: anvil stopped unexpectedly; see {node.log_file}",
                          file=sys.stderr)
                    return 1
        finally:
            if gateway is not None:
                gateway.shutdown()
                gateway.server_close()
            code = node.stop()
    print(f"anvil stopped (exit code {code}); chain state saved in {node.state_file}", flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `node` to the CLI."""
    p = sub.add_parser(
        "node",
        help="run the managed anvil node (state kept in the data directory)",
        description="Run the pinned anvil in the foreground with its chain state in "
        "<data-dir>/chain; Ctrl-C or SIGTERM stops it and saves the state.",
    )
    option(p, "--host", env="NODE_HOST", default="127.0.0.1",
           help="loopback address the node listens on; other machines connect through "
           "--gateway-host")
    option(p, "--port", env="NODE_PORT", type=int, default=8545,
           help="JSON-RPC port, HTTP and WebSocket")
    option(p, "--block-time", env="BLOCK_TIME", type=float, default=1.0,
           help="seconds between blocks; 0 mines each transaction at once")
    option(p, "--state-interval", env="STATE_INTERVAL", type=int, default=5,
           help="seconds between state saves, what a crash can lose; 0 saves on stop only")
    option(p, "--chain-id", env="CHAIN_ID", type=int, default=31337,
           help="chain id of a new chain")
    option(p, "--gateway-host", env="GATEWAY_HOST", shown_default="no gateway",
           help="serve the JSON-RPC gateway (standard methods only, no anvil_/evm_/debug_/"
           "personal_ methods, no node-side signing) on this address for other machines")
    option(p, "--gateway-port", env="GATEWAY_PORT", type=int, default=8645, help="gateway port")
    option(p, "--gateway-rate-limit", env="GATEWAY_RATE_LIMIT", type=int, default=6000,
           help="calls per minute the gateway takes from one client address")
    p.set_defaults(func=cmd_node)
