"""`microgrid bridge` (serial meters <-> chain) and `microgrid meter register` (operator).

    microgrid meter register --rpc URL --from OPERATOR --meter ADDRESS --owner ADDRESS \\
        --kind supply|load --rated-power W [--fund WEI]
    microgrid bridge --rpc URL --meter socket://127.0.0.1:7001:ADDRESS [--meter ...]

Each meter's device key lives in the keystore (`microgrid account new --label meter-1`); the
bridge unlocks them with one passphrase. Every setting also has a MICROGRID_* variable.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from dapp.commands.common import env, env_default
from dapp.errors import MicrogridError

REGISTRY_MAX_RATED_W = 65535  # MeterRegistry stores the rating as uint16



def _wei(text: str) -> int:
    """Parse a non-negative integer amount of wei."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of wei: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("an amount cannot be negative")
    return value


def _rated_power(text: str) -> int:
    """Parse the registry rating: a whole number of W, 1..65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of W: {text!r}") from None
    if not 1 <= value <= REGISTRY_MAX_RATED_W:
        raise argparse.ArgumentTypeError(
            f"the registry stores ratings from 1 to {REGISTRY_MAX_RATED_W} W, not {value}")
    return value


def _meter_spec(text: str) -> tuple[str, str]:
    """Parse --meter URL:ADDRESS."""
    from hardware.bridge import parse_meter_spec

    try:
        return parse_meter_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _meter_specs_from_env() -> list[tuple[str, str]]:
    """MICROGRID_METERS: space-separated URL:ADDRESS items."""
    try:
        return [_meter_spec(item) for item in (env("METERS") or "").split()]
    except argparse.ArgumentTypeError as exc:
        raise MicrogridError(f"MICROGRID_METERS: {exc}") from None


def _passphrase(args: argparse.Namespace, prompt: str) -> str:
    from dapp.wallet.keystore import read_passphrase

    return read_passphrase(args.passphrase_file, prompt=prompt)


def _chain(args: argparse.Namespace, subdir: str):
    """A ChainClient on --rpc with its own state directory under the data directory."""
    from dapp.chain.client import ChainClient

    # Own subdirectory: a web server on the same data directory keeps its own outbox and
    # listener cursor, and two processes must not rewrite the same files.
    return ChainClient(args.rpc, Path(args.data_dir) / subdir, market=args.market,
                       operator=args.operator)


def cmd_meter_register(args: argparse.Namespace) -> int:
    """Register a meter's device key for an owner, and fund it so it can pay for readings."""
    from dapp.wallet.keystore import Keystore, checksum_address

    meter = checksum_address(args.meter)
    owner = checksum_address(args.owner)
    keystore = Keystore(Path(args.data_dir) / "keystore")
    operator = keystore.unlock(args.sender, _passphrase(args, f"Passphrase for {args.sender}: "))
    chain = _chain(args, "cli")
    existing = chain.meter(meter)
    if existing is not None:
        if (existing.owner, existing.kind, existing.rated_power_w) != (
                owner, args.kind, args.rated_power):
            raise MicrogridError(
                f"{meter} is already registered ({existing.kind} meter of {existing.owner}, "
                f"{existing.rated_power_w} W); a device key is registered only once")
        print(f"{meter} is already registered as a {existing.kind} meter of {owner}")
    else:
        if not chain.is_operator(operator.address):
            raise MicrogridError(f"{operator.address} is not a grid operator of this registry")
        tx = chain.register_meter(operator, meter, owner, args.kind, args.rated_power)
        chain.wait(tx, timeout=args.timeout)
        print(f"registered {meter}: {args.kind} meter of {owner}, rated {args.rated_power} W "
              f"({tx})")
    if args.fund:
        tx = chain.send_ether(operator, meter, args.fund)
        chain.wait(tx, timeout=args.timeout)
        print(f"funded {meter} with {args.fund} wei; balance {chain.ether_balance(meter)} wei "
              f"({tx})")
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    """Run the serial bridge for the given meters until SIGINT/SIGTERM."""
    from dapp.wallet.keystore import Keystore
    from hardware.bridge import BridgeMeter, MeterBridge

    specs: list[tuple[str, str]] = args.meter or _meter_specs_from_env()
    if not specs:
        raise MicrogridError("no meters: give --meter URL:ADDRESS (or MICROGRID_METERS)")
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keystore = Keystore(Path(args.data_dir) / "keystore")
    passphrase = _passphrase(args, "Passphrase of the meter keys: ")
    meters = [BridgeMeter(url, keystore.unlock(address, passphrase)) for url, address in specs]
    chain = _chain(args, "bridge")
    _ = chain.deployment  # fail here, clearly, if no contracts are found on this chain
    bridge = MeterBridge(
        chain, meters,
        poll_interval=args.poll_interval,
        submit_interval=args.submit_interval,
        submit_step_wh=args.submit_step,
        read_timeout=args.read_timeout,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        # Both signals end in bridge.stop(), which commands every relay open.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)
    for meter in meters:
        print(f"bridging {meter.address} on {meter.url}", flush=True)
    bridge.run(stop, listener_interval=args.listen_interval)
    print("bridge stopped; relays commanded open", flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `bridge` and `meter register` to the CLI."""
    p = sub.add_parser(
        "bridge",
        help="poll serial meters, submit their readings, switch their relays from the chain",
        description="Opens each meter by URL (a device path such as /dev/ttyUSB0, "
        "socket://HOST:PORT, or a pty path), checks it against the MeterRegistry, submits its "
        "readings from its own key and closes its relay while its owner has an open trade "
        "(seller: supply meter, buyer: load meter). A dead or garbled line opens the relay.",
    )
    _chain_options(p)
    p.add_argument("--meter", action="append", type=_meter_spec, metavar="URL:ADDRESS",
                   help="a meter's port URL and its device address in the keystore; repeat "
                   "for more meters (MICROGRID_METERS: space-separated list)")
    p.add_argument("--passphrase-file",
                   default=env("METER_PASSPHRASE_FILE", env("PASSPHRASE_FILE")),
                   help="file whose first line unlocks the meter keys "
                   "(MICROGRID_METER_PASSPHRASE_FILE or MICROGRID_PASSPHRASE_FILE); without it "
                   "the passphrase is asked on the terminal")
    p.add_argument("--poll-interval", type=float, default=env_default("BRIDGE_POLL_INTERVAL", 1.0),
                   help="seconds between READs of each meter (MICROGRID_BRIDGE_POLL_INTERVAL; "
                   "default 1)")
    p.add_argument("--read-timeout", type=float, default=env_default("BRIDGE_READ_TIMEOUT", 1.0),
                   help="seconds to wait for each reply (MICROGRID_BRIDGE_READ_TIMEOUT; "
                   "default 1)")
    p.add_argument("--submit-interval", type=float,
                   default=env_default("BRIDGE_SUBMIT_INTERVAL", 10.0),
                   help="at least this many seconds between two readings of a meter "
                   "(MICROGRID_BRIDGE_SUBMIT_INTERVAL; default 10)")
    p.add_argument("--submit-step", type=int, default=env_default("BRIDGE_SUBMIT_STEP_WH", 1),
                   help="send a reading once the counter grew by this many Wh "
                   "(MICROGRID_BRIDGE_SUBMIT_STEP_WH; default 1)")
    p.add_argument("--listen-interval", type=float,
                   default=env_default("BRIDGE_LISTEN_INTERVAL", 1.0),
                   help="seconds between polls of the chain for events "
                   "(MICROGRID_BRIDGE_LISTEN_INTERVAL; default 1)")
    p.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"),
                   help="DEBUG, INFO, WARNING (MICROGRID_LOG_LEVEL; default INFO)")
    p.set_defaults(func=cmd_bridge)

    meter = sub.add_parser("meter", help="meter administration on chain (operator)")
    commands = meter.add_subparsers(dest="meter_command", required=True)
    p = commands.add_parser(
        "register",
        help="register a meter's device key and fund it (grid operator)",
        description="Registers ADDRESS (a meter's device key, e.g. made with `microgrid account "
        "new --label meter-1`) in the MeterRegistry for OWNER, then sends it --fund wei so it "
        "can pay for its readings (each costs at most 600000 gas). For an emulated meter, give "
        "the rated power its ID reports (the rating times the acceleration).",
    )
    _chain_options(p)
    p.add_argument("--from", dest="sender", default=env("OPERATOR"),
                   required=env("OPERATOR") is None,
                   help="the grid operator's address in the keystore (MICROGRID_OPERATOR)")
    p.add_argument("--meter", default=env("REGISTER_METER"), required=env("REGISTER_METER") is None,
                   help="the meter's device address (MICROGRID_REGISTER_METER)")
    p.add_argument("--owner", default=env("REGISTER_OWNER"), required=env("REGISTER_OWNER") is None,
                   help="the account the meter belongs to (MICROGRID_REGISTER_OWNER)")
    p.add_argument("--kind", choices=("supply", "load"), default=env("REGISTER_KIND"),
                   required=env("REGISTER_KIND") is None,
                   help="supply (PV -> battery, mints tokens) or load (battery -> consumer, "
                   "settles trades) (MICROGRID_REGISTER_KIND)")
    p.add_argument("--rated-power", type=_rated_power, default=env("REGISTER_RATED_POWER"),
                   required=env("REGISTER_RATED_POWER") is None,
                   help="rated power in W, 1..65535 (MICROGRID_REGISTER_RATED_POWER)")
    p.add_argument("--fund", type=_wei, default=env("REGISTER_FUND", "0"),
                   help="wei to send to the meter's key for gas (MICROGRID_REGISTER_FUND; "
                   "default 0: no transfer)")
    p.add_argument("--passphrase-file", default=env("PASSPHRASE_FILE"),
                   help="file whose first line unlocks the operator's key "
                   "(MICROGRID_PASSPHRASE_FILE); without it the passphrase is asked")
    p.add_argument("--timeout", type=float, default=env_default("TX_TIMEOUT", 120.0),
                   help="seconds to wait for each transaction (MICROGRID_TX_TIMEOUT; "
                   "default 120)")
    p.set_defaults(func=cmd_meter_register)
    # dapp/cli.py adds --data-dir to `meter` only; accept it after `register` too.
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _chain_options(p: argparse.ArgumentParser) -> None:
    """--rpc and --market, shared by both commands."""
    p.add_argument("--rpc", default=env("RPC", "http://127.0.0.1:8545"),
                   help="node URL: http://, ws://, an IPC path or inprocess://NAME "
                   "(MICROGRID_RPC; default http://127.0.0.1:8545)")
    p.add_argument("--market", default=env("MARKET"),
                   help="EnergyMarket address; found automatically if not given "
                   "(MICROGRID_MARKET)")
    p.add_argument("--operator", default=env("OPERATOR"),
                   help="take only a deployment this grid operator account runs, when the "
                   "chain holds several (MICROGRID_OPERATOR)")
