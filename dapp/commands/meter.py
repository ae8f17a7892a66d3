"""`microgrid meter offer|accept|decline|deactivate`: attaching a meter to its owner, with consent.

    microgrid meter offer --from OPERATOR --meter ADDRESS --owner OWNER --kind supply|load \\
        --rated-power W                                    # the grid operator offers the meter
    microgrid meter accept --from OWNER --meter ADDRESS    # the owner accepts: it counts now
    microgrid meter decline --from OWNER --meter ADDRESS   # ... or declines: it never counts
    microgrid meter deactivate --from OPERATOR --meter ADDRESS

ADDRESS is the meter's own address (its `ID` reply; the emulator prints it): the meter keeps
its key and signs its readings itself, so it needs no Ether and no keystore entry. Any account
may carry its readings to the chain (`--submitter` of `microgrid serve` / `bridge`).
The emulated meter itself is `microgrid meter-emulator` (dapp/commands/emulator.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dapp.commands.common import add_market_option, add_rpc_option, option
from dapp.errors import MicrogridError
from hardware.protocol import KINDS, MAX_RATED_POWER_W, SUPPLY


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


def _session(args: argparse.Namespace) -> tuple[Any, Any]:
    """(the chain client, the --from account unlocked from the keystore)."""
    from dapp.chain.client import ChainClient
    from dapp.wallet.keystore import Keystore, read_passphrase

    keystore = Keystore(Path(args.data_dir) / "keystore")
    passphrase = read_passphrase(args.passphrase_file, prompt=f"Passphrase for {args.sender}: ")
    account = keystore.unlock(args.sender, passphrase)
    # Own state directory: a web server or bridge on the same data directory keeps its own
    # outbox and listener cursor, and two processes must not rewrite the same files.
    chain = ChainClient(args.rpc, Path(args.data_dir) / "cli", market=args.market,
                        operator=args.operator)
    return chain, account


def _send(chain: Any, tx: str, args: argparse.Namespace) -> str:
    """Wait for `tx`; a revert becomes its sentence."""
    from dapp.errors import ContractReverted
    from dapp.services.messages import revert_sentence

    try:
        chain.wait(tx, timeout=args.timeout)
    except ContractReverted as exc:
        raise MicrogridError(revert_sentence(exc)) from None
    return tx


def cmd_meter_offer(args: argparse.Namespace) -> int:
    """Offer a meter to its owner (operator); it counts once the owner accepts it."""
    from dapp.wallet.keystore import checksum_address

    meter = checksum_address(args.meter)
    owner = checksum_address(args.owner)
    chain, operator = _session(args)
    existing = chain.meter(meter)
    if existing is not None and existing.status != "declined":
        same = (existing.owner, existing.kind, existing.rated_power_w) == (
            owner, args.kind, args.rated_power)
        if not same or existing.status == "deactivated":
            raise MicrogridError(
                f"{meter} was already offered ({existing.kind} meter of {existing.owner}, "
                f"{existing.rated_power_w} W, {existing.status}); a meter is offered once, "
                "again only after its owner declined it")
        state = ("accepted by" if existing.status == "active"
                 else "offered to, waiting for the answer of")
        print(f"{meter} is already a {existing.kind} meter {state} {owner}")
        return 0
    if not chain.is_operator(operator.address):
        raise MicrogridError(f"{operator.address} is not a grid operator of this registry")
    tx = _send(chain, chain.offer_meter(operator, meter, owner, args.kind, args.rated_power), args)
    print(f"offered {meter} to {owner}: {args.kind} meter rated {args.rated_power} W ({tx})")
    print(f"it counts once {owner} accepts it: on the wallet page, or "
          f"`microgrid meter accept --from {owner} --meter {meter}`")
    return 0


def _answer(args: argparse.Namespace, accepting: bool) -> int:
    """Accept or decline the offer of --meter as the --from account."""
    from dapp.services.wallet import answerable_offer

    chain, owner = _session(args)
    info = answerable_offer(chain, owner.address, args.meter, accepting=accepting)
    if accepting:
        tx = _send(chain, chain.accept_meter(owner, info.address), args)
        effect = "mint energy tokens" if info.kind == SUPPLY else "settle trades"
        print(f"accepted {info.address}: its signed readings {effect} for {owner.address} "
              f"({tx})")
    else:
        tx = _send(chain, chain.decline_meter(owner, info.address), args)
        print(f"declined {info.address}: its readings never count for {owner.address} ({tx})")
    return 0


def cmd_meter_accept(args: argparse.Namespace) -> int:
    """Accept a meter offered to the --from account."""
    return _answer(args, accepting=True)


def cmd_meter_decline(args: argparse.Namespace) -> int:
    """Decline a meter offered to the --from account."""
    return _answer(args, accepting=False)


def cmd_meter_deactivate(args: argparse.Namespace) -> int:
    """Withdraw a meter (or its offer) for good (operator)."""
    from dapp.wallet.keystore import checksum_address

    meter = checksum_address(args.meter)
    chain, operator = _session(args)
    existing = chain.meter(meter)
    if existing is None:
        raise MicrogridError(f"no meter {meter} was ever offered")
    if existing.status not in ("offered", "active"):
        raise MicrogridError(f"{meter} is {existing.status}; only an offered or active meter "
                             "can be deactivated")
    if not chain.is_operator(operator.address):
        raise MicrogridError(f"{operator.address} is not a grid operator of this registry")
    tx = _send(chain, chain.deactivate_meter(operator, meter), args)
    print(f"deactivated {meter} ({existing.kind} meter of {existing.owner}): its readings are "
          f"refused from now on ({tx})")
    return 0


def _common(p: argparse.ArgumentParser, sender_env: str, sender_help: str) -> None:
    """The options every `meter` command takes."""
    add_rpc_option(p)
    add_market_option(p)
    option(p, "--from", dest="sender", env=sender_env, required=True, help=sender_help)
    option(p, "--meter", env="METER_ADDRESS", required=True,
           help="the meter's own address (its ID; the emulator prints it)")
    option(p, "--passphrase-file", env="PASSPHRASE_FILE",
           help="file whose first line unlocks the --from key; without it the passphrase is "
           "asked")
    option(p, "--timeout", env="TX_TIMEOUT", type=float, default=120.0,
           help="seconds to wait for the transaction")
    # dapp/cli.py adds --data-dir to `meter` only; accept it after the command too.
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `meter offer|accept|decline|deactivate` to the CLI."""
    meter = sub.add_parser("meter", help="attach meters to their owners on chain (operator, "
                           "owners)")
    commands = meter.add_subparsers(dest="meter_command", required=True)

    p = commands.add_parser(
        "offer",
        help="offer a meter to its owner (grid operator)",
        description="Offers the meter at ADDRESS (its own key's address) to OWNER in the "
        "MeterRegistry. Nothing it signs counts until OWNER accepts it (`microgrid meter accept` "
        "or the wallet page). The meter holds no Ether: whoever carries its readings pays the "
        "gas. For an emulated meter, give the rated power its ID reports (the rating times the "
        "acceleration).",
    )
    _common(p, "OPERATOR", "the grid operator's address in the keystore")
    option(p, "--owner", env="OFFER_OWNER", required=True,
           help="the account the meter is offered to")
    option(p, "--kind", env="OFFER_KIND", choices=KINDS, required=True,
           help="supply (PV -> battery, mints tokens) or load (battery -> consumer, "
           "settles trades)")
    option(p, "--rated-power", env="OFFER_RATED_POWER", type=_rated_power, required=True,
           help=f"rated power in W, 1..{MAX_RATED_POWER_W}")
    p.set_defaults(func=cmd_meter_offer)

    p = commands.add_parser(
        "accept", help="accept a meter offered to you (owner)",
        description="Accepts the offer of the meter at ADDRESS from the --from account: from "
        "now on its signed readings mint energy tokens (supply) or settle your trades (load). "
        "Accept only the meter installed for you; you have at most one active load meter.")
    _common(p, "OWNER", "your address in the keystore (the meter's owner)")
    p.set_defaults(func=cmd_meter_accept)

    p = commands.add_parser(
        "decline", help="decline a meter offered to you (owner)",
        description="Declines the offer of the meter at ADDRESS: its readings never count for "
        "the --from account.")
    _common(p, "OWNER", "your address in the keystore (the meter's owner)")
    p.set_defaults(func=cmd_meter_decline)

    p = commands.add_parser(
        "deactivate", help="withdraw a meter or its offer for good (grid operator)",
        description="Deactivates the meter at ADDRESS: its readings are refused from now on and, "
        "for a load meter, its owner may accept another one.")
    _common(p, "OPERATOR", "the grid operator's address in the keystore")
    p.set_defaults(func=cmd_meter_deactivate)
