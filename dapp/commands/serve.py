"""`microgrid serve`: the web app (pages, JSON API, Socket.IO) until Ctrl-C or SIGTERM.

Settings: --rpc (MICROGRID_RPC), --host (MICROGRID_WEB_HOST, default 127.0.0.1), --port
(MICROGRID_WEB_PORT, default 3000), --market (MICROGRID_MARKET), --finalizer and
--finalizer-passphrase-file (MICROGRID_FINALIZER, MICROGRID_FINALIZER_PASSPHRASE_FILE: the
keystore account that finalizes ended auctions), --kdf-n (MICROGRID_KDF_N, scrypt cost of accounts
created on the login page), --meter URL:ADDRESS (repeatable; MICROGRID_METERS, space-separated)
and --meter-passphrase-file (MICROGRID_METER_PASSPHRASE_FILE): run the meter bridge in this
process, so the pages show live generation and relays. Everything else the app reads from
MICROGRID_* variables (see dapp/web/__init__.py), e.g. MICROGRID_SECRET_KEY and
MICROGRID_SESSION_IDLE_TIMEOUT.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from dapp.commands.common import env
from dapp.errors import MicrogridError
from dapp.wallet.keystore import GETH_SCRYPT_N

if TYPE_CHECKING:
    from dapp.web.extensions import AppState

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def cmd_serve(args: argparse.Namespace) -> int:
    """Build the app, start the listener and the live updates, serve until a signal."""
    from werkzeug.serving import make_server

    from dapp.web import create_app

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = {
        "RPC": args.rpc,
        "DATA_DIR": args.data_dir,
        "MARKET": args.market,
        "KDF_N": args.kdf_n,
        "FINALIZER_ADDRESS": args.finalizer,
        "FINALIZER_PASSPHRASE_FILE": args.finalizer_passphrase_file,
    }
    app = create_app({k: v for k, v in config.items() if v is not None})
    ext = app.extensions["microgrid"]
    bridge = _bridge(args, ext)
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except OSError as exc:
        print(f"microgrid serve: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    if args.host not in LOCAL_HOSTS:
        print(f"warning: listening on {args.host}: the app is reachable from the network; put "
              "it behind a TLS reverse proxy", file=sys.stderr)
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=server.serve_forever, name="web-server", daemon=True)
    try:
        ext.start_background()
        if bridge is not None:
            bridge.start()
        thread.start()
        finalizer = "on" if ext.finalizer.enabled else "off (no --finalizer account)"
        print(f"serving on http://{args.host}:{server.port} (chain {args.rpc}, "
              f"auto-finalize {finalizer})", flush=True)
        stop.wait()
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()
        if bridge is not None:
            bridge.stop()
        ext.stop_background()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopped", flush=True)
    return 0


def _kdf_n(text: str) -> int:
    """Parse --kdf-n / MICROGRID_KDF_N: a valid scrypt cost."""
    from dapp.errors import WalletError
    from dapp.wallet.keystore import check_scrypt_n

    try:
        return check_scrypt_n(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    except WalletError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _meter_spec(text: str) -> tuple[str, str]:
    """Parse --meter URL:ADDRESS."""
    from hardware.bridge import parse_meter_spec

    try:
        return parse_meter_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bridge(args: argparse.Namespace, ext: AppState) -> Any:
    """The in-process meter bridge for --meter, attached to the app; None without meters."""
    specs = args.meter
    if not specs:
        try:
            specs = [_meter_spec(item) for item in (env("METERS") or "").split()]
        except argparse.ArgumentTypeError as exc:
            raise MicrogridError(f"MICROGRID_METERS: {exc}") from None
    if not specs:
        return None
    from dapp.wallet.keystore import read_passphrase
    from hardware.bridge import BridgeMeter, MeterBridge

    passphrase = read_passphrase(args.meter_passphrase_file, "Passphrase of the meter keys: ")
    meters = [BridgeMeter(url, ext.keystore.unlock(address, passphrase))
              for url, address in specs]
    bridge = MeterBridge(ext.client, meters, on_change=ext.meter_changed)
    ext.attach_bridge(bridge)
    for meter in meters:
        print(f"bridging {meter.address} on {meter.url}", flush=True)
    return bridge


def register(sub: argparse._SubParsersAction) -> None:
    """Add `serve` to the CLI."""
    p = sub.add_parser(
        "serve",
        help="serve the web app (pages, JSON API, live updates)",
        description="Serve the wallet and marketplace pages, the JSON API (/api/v1, OpenAPI at "
        "/api/v1/openapi.json) and Socket.IO live updates over the chain at --rpc.",
    )
    p.add_argument("--rpc", default=env("RPC", "http://127.0.0.1:8545"),
                   help="node URL: http://, ws://, an IPC path or inprocess:// (MICROGRID_RPC)")
    p.add_argument("--host", default=env("WEB_HOST", "127.0.0.1"),
                   help="address to listen on (MICROGRID_WEB_HOST; default 127.0.0.1, this "
                   "machine only)")
    # String defaults go through `type`, so a bad variable is a usage error of this command only.
    p.add_argument("--port", type=int, default=env("WEB_PORT", "3000"),
                   help="port (MICROGRID_WEB_PORT; default 3000)")
    p.add_argument("--market", default=env("MARKET"),
                   help="EnergyMarket address; default: discovered on the chain (MICROGRID_MARKET)")
    p.add_argument("--finalizer", default=env("FINALIZER"),
                   help="keystore account that finalizes ended auctions (MICROGRID_FINALIZER); "
                   "without it users finalize with a button")
    p.add_argument("--finalizer-passphrase-file", default=env("FINALIZER_PASSPHRASE_FILE"),
                   help="file holding the finalizer's passphrase "
                   "(MICROGRID_FINALIZER_PASSPHRASE_FILE)")
    p.add_argument("--kdf-n", type=_kdf_n, default=env("KDF_N", str(GETH_SCRYPT_N)),
                   help="scrypt cost N of accounts created on the login page (MICROGRID_KDF_N; "
                   "default geth's 262144)")
    p.add_argument("--meter", action="append", type=_meter_spec, metavar="URL:ADDRESS",
                   help="run the meter bridge here for this meter (port URL and device address "
                   "in the keystore); repeat for more (MICROGRID_METERS)")
    p.add_argument("--meter-passphrase-file",
                   default=env("METER_PASSPHRASE_FILE", env("PASSPHRASE_FILE")),
                   help="file whose first line unlocks the meter keys "
                   "(MICROGRID_METER_PASSPHRASE_FILE)")
    p.set_defaults(func=cmd_serve)
