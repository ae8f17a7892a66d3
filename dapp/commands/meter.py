"""`microgrid meter register`: the grid operator registers (and funds) a meter's device key.

    microgrid meter register --rpc URL --from OPERATOR --meter ADDRESS --owner ADDRESS \\
        --kind supply|load --rated-power W [--fund WEI]

The emulated meter itself is `microgrid meter-emulator` (dapp/commands/emulator.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dapp.commands.common import add_market_option, add_rpc_option, option
from dapp.errors import MicrogridError
from hardware.protocol import KINDS, MAX_RATED_POWER_W


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
    """Parse the registry rating: a whole number of W, 1..MAX_RATED_POWER_W."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of W: {text!r}") from None
    if not 1 <= value <= MAX_RATED_POWER_W:
        raise argparse.ArgumentTypeError(
            f"the registry stores ratings from 1 to {MAX_RATED_POWER_W} W, not {value}")
    return value


def cmd_meter_register(args: argparse.Namespace) -> int:
    """Register a meter's device key for an owner, and fund it so it can pay for readings."""
    from dapp.chain.client import ChainClient
    from dapp.wallet.keystore import Keystore, checksum_address, read_passphrase

    meter = checksum_address(args.meter)
    owner = checksum_address(args.owner)
    keystore = Keystore(Path(args.data_dir) / "keystore")
    passphrase = read_passphrase(args.passphrase_file, prompt=f"Passphrase for {args.sender}: ")
    operator = keystore.unlock(args.sender, passphrase)
    # Own state directory: a web server or bridge on the same data directory keeps its own
    # outbox and listener cursor, and two processes must not rewrite the same files.
    chain = ChainClient(args.rpc, Path(args.data_dir) / "cli", market=args.market,
                        operator=args.operator)
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add `meter register` to the CLI."""
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
    add_rpc_option(p)
    add_market_option(p)
    option(p, "--from", dest="sender", env="OPERATOR", required=True,
           help="the grid operator's address in the keystore")
    option(p, "--meter", env="REGISTER_METER", required=True,
           help="the meter's device address")
    option(p, "--owner", env="REGISTER_OWNER", required=True,
           help="the account the meter belongs to")
    option(p, "--kind", env="REGISTER_KIND", choices=KINDS, required=True,
           help="supply (PV -> battery, mints tokens) or load (battery -> consumer, "
           "settles trades)")
    option(p, "--rated-power", env="REGISTER_RATED_POWER", type=_rated_power, required=True,
           help=f"rated power in W, 1..{MAX_RATED_POWER_W}")
    option(p, "--fund", env="REGISTER_FUND", type=_wei, default=0,
           shown_default="0: no transfer", help="wei to send to the meter's key for gas")
    option(p, "--passphrase-file", env="PASSPHRASE_FILE",
           help="file whose first line unlocks the operator's key; without it the passphrase "
           "is asked")
    option(p, "--timeout", env="TX_TIMEOUT", type=float, default=120.0,
           help="seconds to wait for each transaction")
    p.set_defaults(func=cmd_meter_register)
    # dapp/cli.py adds --data-dir to `meter` only; accept it after `register` too.
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
