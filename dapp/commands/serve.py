"""`microgrid serve`: the web app (pages, JSON API, Socket.IO) until Ctrl-C or SIGTERM.

Settings: --rpc (MICROGRID_RPC), --host (MICROGRID_WEB_HOST, default 127.0.0.1), --port
(MICROGRID_WEB_PORT, default 3000), --market (MICROGRID_MARKET), --finalizer and
--finalizer-passphrase-file (MICROGRID_FINALIZER, MICROGRID_FINALIZER_PASSPHRASE_FILE: the
keystore account that finalizes ended auctions), --kdf-n (MICROGRID_KDF_N, scrypt cost of accounts
created on the login page), --meter URL[:ADDRESS] (repeatable; MICROGRID_METERS, space-separated)
and --submitter (MICROGRID_SUBMITTER, the account that forwards the meters' signed readings and
pays their gas; default the finalizer): run the meter bridge in this process, so the pages show
live generation and relays. --operator (MICROGRID_OPERATOR),
--allowed-host (MICROGRID_ALLOWED_HOSTS), --trusted-proxies (MICROGRID_TRUSTED_PROXIES),
--behind-tls (MICROGRID_BEHIND_TLS) and --accounts-from-network
(MICROGRID_ACCOUNTS_FROM_NETWORK): see dapp/web/hosts.py. Everything else the app reads from
MICROGRID_* variables (see dapp/web/__init__.py), e.g. MICROGRID_SECRET_KEY and
MICROGRID_SESSION_IDLE_TIMEOUT. The terminal shows warnings, errors and one line per trade event;
--log-level INFO (MICROGRID_LOG_LEVEL) adds every request and meter reading.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import TYPE_CHECKING, Any

from dapp.commands.common import (
    add_log_level_option,
    add_market_option,
    add_meter_option,
    add_rpc_option,
    add_submitter_options,
    kdf_n,
    log_trade_events,
    meter_specs,
    option,
    setup_logging,
    stop_on_signal,
)
from dapp.wallet.keystore import GETH_SCRYPT_N

if TYPE_CHECKING:
    from dapp.web.extensions import AppState

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def cmd_serve(args: argparse.Namespace) -> int:
    """Build the app, start the listener and the live updates, serve until a signal."""
    from werkzeug.serving import make_server

    from dapp.web import create_app

    setup_logging(getattr(args, "log_level", "WARNING"))
    config = {
        "RPC": args.rpc,
        "DATA_DIR": args.data_dir,
        "MARKET": args.market,
        "BIND_HOST": args.host,
        # getattr: `microgrid demo` calls this with a Namespace of its own, without these.
        "OPERATOR": getattr(args, "operator", None),
        "ALLOWED_HOSTS": getattr(args, "allowed_host", None),
        "BEHIND_TLS": True if getattr(args, "behind_tls", False) else None,
        "TRUSTED_PROXIES": getattr(args, "trusted_proxies", None),
        "ACCOUNTS_FROM_NETWORK": True if getattr(args, "accounts_from_network", False) else None,
        "KDF_N": args.kdf_n,
        "FINALIZER_ADDRESS": args.finalizer,
        "FINALIZER_PASSPHRASE_FILE": args.finalizer_passphrase_file,
        # `microgrid demo` shows its accelerated day: a bar per emulated hour.
        "CHART_WINDOW_SECONDS": getattr(args, "chart_window", None),
        "CHART_BUCKET_SECONDS": getattr(args, "chart_bucket", None),
        # `microgrid demo` knows its producer's battery: the agents assume that one.
        "AGENT_BATTERY_KWH": getattr(args, "agent_battery_kwh", None),
    }
    app = create_app({k: v for k, v in config.items() if v is not None})
    ext = app.extensions["microgrid"]
    log_trade_events(ext)
    bridge = _bridge(args, ext)
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except OSError as exc:
        print(f"microgrid serve: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    if args.host not in LOCAL_HOSTS:
        hosts = ", ".join(app.config["ALLOWED_HOSTS_EFFECTIVE"])
        print(f"warning: listening on {args.host}: the app is reachable from the network; put "
              f"it behind a TLS reverse proxy. It answers to the names {hosts} "
              "(add more with --allowed-host)", file=sys.stderr)
    thread = threading.Thread(target=server.serve_forever, name="web-server", daemon=True)
    with stop_on_signal() as stop:
        try:
            ext.start_background()
            if bridge is not None:
                bridge.start()
            thread.start()
            finalizer = "on" if ext.finalizer.enabled else "off (no --finalizer account)"
            print(f"serving on http://{args.host}:{server.port} (chain {args.rpc}, "
                  f"auto-finalize {finalizer})", flush=True)
            ready = getattr(args, "on_ready", None)  # `microgrid demo`: its banner, last
            if ready is not None:
                ready()
            stop.wait()
        finally:
            print("stopping the web app ...", end=" ", flush=True)
            server.shutdown()
            thread.join(timeout=5)
            server.server_close()
            ext.stop_background()
            print("stopped", flush=True)
            if bridge is not None:
                print("stopping the meter bridge (relays open) ...", end=" ", flush=True)
                bridge.stop()
                print("stopped", flush=True)
    return 0


def _bridge(args: argparse.Namespace, ext: AppState) -> Any:
    """The in-process meter bridge for --meter, attached to the app; None without meters."""
    meters = meter_specs(args)
    if not meters:
        return None
    from dapp.bridge import MeterBridge
    from dapp.wallet.keystore import read_passphrase

    submitter = ext.finalizer.account
    if getattr(args, "submitter", None):
        passphrase = read_passphrase(args.submitter_passphrase_file,
                                     f"Passphrase of {args.submitter}: ")
        submitter = ext.keystore.unlock(args.submitter, passphrase)
    bridge = MeterBridge(ext.client, meters, submitter=submitter, on_change=ext.meter_changed,
                         heads=ext.heads)
    ext.attach_bridge(bridge)
    for meter in meters:
        print(f"bridging the meter on {meter.url}", flush=True)
    return bridge


def register(sub: argparse._SubParsersAction) -> None:
    """Add `serve` to the CLI."""
    p = sub.add_parser(
        "serve",
        help="serve the web app (pages, JSON API, live updates)",
        description="Serve the wallet and marketplace pages, the JSON API (/api/v1, OpenAPI at "
        "/api/v1/openapi.json) and Socket.IO live updates over the chain at --rpc.",
    )
    add_rpc_option(p)
    option(p, "--host", env="WEB_HOST", default="127.0.0.1",
           help="address to listen on (127.0.0.1: this machine only)")
    option(p, "--port", env="WEB_PORT", type=int, default=3000, help="port")
    add_market_option(p)
    # These four are read by the app's config (dapp/web/hosts.py) when no flag is given.
    option(p, "--allowed-host", env="ALLOWED_HOSTS", read_env=False, action="append",
           metavar="NAME", shown_default="none; the variable is space-separated",
           help="a name (or .domain) this server answers to besides the loopback names and "
           "--host; repeatable")
    option(p, "--trusted-proxies", env="TRUSTED_PROXIES", read_env=False, type=int,
           metavar="N", shown_default="0",
           help="reverse proxies in front of the app whose X-Forwarded-For/-Proto to believe")
    option(p, "--behind-tls", env="BEHIND_TLS", read_env=False, action="store_true",
           help="the app is served over https by a proxy: mark the session cookie Secure")
    option(p, "--accounts-from-network", env="ACCOUNTS_FROM_NETWORK", read_env=False,
           action="store_true", shown_default="this machine only",
           help="let other machines create and import accounts on the login page")
    option(p, "--finalizer", env="FINALIZER",
           help="keystore account that finalizes ended auctions; without it users finalize "
           "with a button")
    option(p, "--finalizer-passphrase-file", env="FINALIZER_PASSPHRASE_FILE",
           help="file holding the finalizer's passphrase")
    option(p, "--kdf-n", env="KDF_N", type=kdf_n, default=GETH_SCRYPT_N,
           shown_default=f"geth's {GETH_SCRYPT_N}",
           help="scrypt cost N of accounts created on the login page")
    add_meter_option(p, "run the meter bridge here for the meter on this port (optionally "
                     ":ADDRESS to insist on that meter); repeat for more")
    add_submitter_options(p, fallback="the --finalizer account")
    add_log_level_option(p)
    p.set_defaults(func=cmd_serve)
