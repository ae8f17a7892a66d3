"""`microgrid demo` (what `make run` runs): node, contracts, users, emulated meters, web app.

The terminal stays quiet once the demo runs: the progress lines, the banner (what to open and
how to log in) last, then only warnings, errors and one line per trade event (--log-level INFO,
MICROGRID_LOG_LEVEL, shows more). `microgrid demo --status` prints the banner again. Ctrl-C
stops the web app, the meter bridge, the emulated meters and the chain node in that order, a
line each, and ends with the block the chain was saved at.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from dapp.commands.common import add_log_level_option, kdf_n, option, setup_logging
from dapp.errors import MicrogridError
from dapp.wallet.keystore import GETH_SCRYPT_N

RULE = "=" * 72


def cmd_demo(args: argparse.Namespace) -> int:
    """Prepare everything, then serve the app until Ctrl-C; stop it all cleanly."""
    if args.status:
        return print_status(Path(args.data_dir), args.port)
    from dapp.bridge import BridgeMeter
    from dapp.commands.serve import cmd_serve
    from dapp.demo_setup import DemoSettings, DemoSetup

    setup_logging(args.log_level)
    settings = DemoSettings(
        data_dir=Path(args.data_dir),
        node_port=args.node_port,
        block_time=args.block_time,
        acceleration=args.acceleration,
        pv_peak_w=args.peak_power,
        load_profile=args.load_profile,
        producer_load_profile=args.producer_load_profile,
        battery_wh=args.battery_wh,
        meter_dir=Path(args.meter_dir) if args.meter_dir else None,
    )
    setup = DemoSetup(settings, out=lambda line: print(line, flush=True))
    try:
        setup.prepare()
        st = setup.state
        banner = setup.banner(f"http://localhost:{args.port}")
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
            log_level=args.log_level,
            # A bar per emulated hour, the last emulated day and a quarter in the window.
            chart_bucket=max(1, round(3600 / args.acceleration)),
            chart_window=max(1, round(30 * 3600 / args.acceleration)),
            agent_battery_kwh=settings.battery_wh / 1000,
            # The banner comes after the server's own lines, so it is the last thing on screen.
            on_ready=lambda: print(banner, flush=True),
        )
        print(f"[8/8] serving the app on http://localhost:{args.port}", flush=True)
        return cmd_serve(serve_args)
    except KeyboardInterrupt:
        return 130
    finally:
        stop_demo(setup)


def stop_demo(setup: Any) -> None:
    """Stop the emulated meters, then the chain node; a line each, the saved block last."""
    print("stopping the emulated meters ...", end=" ", flush=True)
    for server in setup.servers:
        server.stop()
    setup.servers.clear()
    print("stopped", flush=True)
    print("stopping the chain node (saving the chain) ...", end=" ", flush=True)
    block = None
    if setup.client is not None:
        try:
            # No block after this one: the number printed is the head of the saved chain.
            setup.client.stop_mining()
            block = setup.client.block_number()
        except MicrogridError as exc:
            print(f"(the node does not answer: {exc})", end=" ", flush=True)
    setup.stop()  # the meters are stopped already: this stops (and saves) the node
    print(f"saved at block {block}" if block is not None else "stopped", flush=True)


def _read_passphrases(path: Path) -> dict[str, str] | None:
    """address -> passphrase from the demo's user-passphrases file (None if unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:  # label address passphrase; a later line wins
            found[parts[1].lower()] = parts[2]
    return found


def _web_status(port: int) -> dict[str, Any] | None:
    """GET /api/v1/chain of the demo's web app; None when nothing answers there."""
    url = f"http://127.0.0.1:{port}/api/v1/chain"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - loopback http
            return json.load(response)
    except urllib.error.HTTPError as exc:  # 503: the app runs, the chain does not answer
        try:
            return json.load(exc)
        except ValueError:
            return {}
    except (OSError, ValueError):
        return None


def status_banner(data_dir: Path, port: int) -> str | None:
    """The start-up banner again (passphrases from the 0600 file); None if no demo was made."""
    demo_dir = data_dir / "demo"
    try:
        state = json.loads((demo_dir / "demo.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    web_url = f"http://localhost:{port}"
    web = _web_status(port)
    if web is None:
        head = f"  Microgrid Energy Exchange is not running on {web_url}: start it with `make run`"
    else:
        head = f"  Microgrid Energy Exchange is running: open {web_url}"
    lines = ["", RULE, head, ""]
    passphrase_file = demo_dir / "user-passphrases"
    passphrases = _read_passphrases(passphrase_file)
    for label in ("producer", "consumer"):
        address = state.get(label, "")
        secret = (passphrases or {}).get(address.lower())
        lines.append(f"  {label:9s} {address}" + (f"  passphrase: {secret}" if secret else ""))
    if passphrases is None:
        lines.append(f"  passphrases: see {passphrase_file}")
    else:
        lines.append(f"  (the passphrases are from {passphrase_file}, readable only by you)")
    if web:
        block = f"block #{web['block']}" if web.get("block") is not None else "not answering"
        lines.append(f"  chain {web.get('chain_id')}: {block}; market "
                     f"{(web.get('deployment') or {}).get('market', 'not known yet')}")
    lines += ["  Stop with Ctrl-C where it runs (the chain is saved; `make run` resumes it).",
              RULE]
    return "\n".join(lines)


def print_status(data_dir: Path, port: int) -> int:
    """`microgrid demo --status`: print the banner; 1 if there is no demo in `data_dir`."""
    banner = status_banner(data_dir, port)
    if banner is None:
        print(f"microgrid: no demo in {data_dir} yet: start one with `make run`",
              file=sys.stderr)
        return 1
    print(banner, flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `demo` to the CLI."""
    p = sub.add_parser("demo", help="a whole micro-grid on this machine (what `make run` runs)")
    p.add_argument("--status", action="store_true",
                   help="print the banner again (address to open, accounts and passphrases, "
                   "the chain) and exit")
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
    option(p, "--producer-load-profile", env="PRODUCER_LOAD_PROFILE",
           default="0:60,7:200,9:100,17:250,22:80",
           help="the producer's own household, drawing from its battery, W or hour:W steps")
    option(p, "--battery-wh", env="BATTERY_WH", type=float, default=6000.0,
           help="the producer's battery capacity in Wh (it starts 40 % full)")
    option(p, "--kdf-n", env="KDF_N", type=kdf_n, default=GETH_SCRYPT_N,
           help="scrypt cost of accounts created on the login page")
    option(p, "--meter-dir", env="METER_DIR", shown_default="DATA_DIR-meters, beside it",
           help="the emulated meters' own key files (their EEPROM), outside the data directory")
    add_log_level_option(p)
    p.set_defaults(func=cmd_demo)
