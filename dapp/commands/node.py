"""`microgrid node`: run the managed anvil node in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from dapp.commands.common import env, env_default
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
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    # Both signals only set the event: the main loop then stops anvil once, saving its state.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        node.start()
        if node.restored_from_backup:
            print(
                f"warning: {node.state_file} was damaged; restored the copy from the previous "
                "start",
                file=sys.stderr,
            )
        mining = f"a block every {args.block_time:g} s" if args.block_time > 0 else "automine"
        print(f"anvil listening on {node.url} (chain id {args.chain_id}, {mining})", flush=True)
        print(f"chain state: {node.state_file}; log: {node.log_file}", flush=True)
        if gateway is not None:
            threading.Thread(target=gateway.serve_forever, name="gateway", daemon=True).start()
            print(f"gateway for other machines on http://{args.gateway_host}:{gateway.port} "
                  "(standard methods only)", flush=True)
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
        for sig, handler in previous.items():
            signal.signal(sig, handler)
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
    p.add_argument("--host", default=env("NODE_HOST", "127.0.0.1"),
                   help="loopback address the node listens on (MICROGRID_NODE_HOST; default "
                   "127.0.0.1); other machines connect through --gateway-host")
    p.add_argument("--port", type=int, default=env_default("NODE_PORT", 8545),
                   help="JSON-RPC port, HTTP and WebSocket (MICROGRID_NODE_PORT; default 8545)")
    p.add_argument("--block-time", type=float, default=env_default("BLOCK_TIME", 1.0),
                   help="seconds between blocks; 0 mines each transaction at once "
                   "(MICROGRID_BLOCK_TIME; default 1)")
    p.add_argument("--state-interval", type=int, default=env_default("STATE_INTERVAL", 5),
                   help="seconds between state saves, what a crash can lose; 0 saves on stop "
                   "only (MICROGRID_STATE_INTERVAL; default 5)")
    p.add_argument("--chain-id", type=int, default=env_default("CHAIN_ID", 31337),
                   help="chain id of a new chain (MICROGRID_CHAIN_ID; default 31337)")
    p.add_argument("--gateway-host", default=env("GATEWAY_HOST"),
                   help="serve the JSON-RPC gateway (standard methods only, no anvil_/evm_/"
                   "debug_/personal_ methods, no node-side signing) on this address for other "
                   "machines (MICROGRID_GATEWAY_HOST; default: no gateway)")
    p.add_argument("--gateway-port", type=int, default=env_default("GATEWAY_PORT", 8645),
                   help="gateway port (MICROGRID_GATEWAY_PORT; default 8645)")
    p.add_argument("--gateway-rate-limit", type=int,
                   default=env_default("GATEWAY_RATE_LIMIT", 6000),
                   help="calls per minute the gateway takes from one client address "
                   "(MICROGRID_GATEWAY_RATE_LIMIT; default 6000)")
    p.set_defaults(func=cmd_node)
