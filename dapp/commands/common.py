"""Helpers shared by the subcommands: options from flags or MICROGRID_* variables, and the rest.

`option()` states an option's variable once: the variable (or the default) becomes the option's
default and the help text ends with "(MICROGRID_NAME; default D)" by itself. A variable's value
is passed to argparse as a string, so the option's `type` converts it and a malformed variable
is a usage error of the command that reads it, not a crash of every command at parser build
time. Also here: the run-until-signal helper, the logging set-up (--log-level, and the
terminal's one line per trade event), meter specs (URL[:ADDRESS], from --meter or
MICROGRID_METERS) and the options several commands share.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from dapp.errors import MicrogridError
from dapp.settings import flag

if TYPE_CHECKING:
    from dapp.bridge import BridgeMeter
    from dapp.chain.listener import ChainEvent
    from dapp.web.extensions import AppState

PREFIX = "MICROGRID_"
DEFAULT_RPC = "http://127.0.0.1:8545"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# The terminal's trade lines (listed, bid, won, ended, closed): shown up to --log-level WARNING.
TRADES_LOGGER = "microgrid.trades"


def env(name: str, default: str | None = None) -> str | None:
    """The MICROGRID_<name> environment variable, or `default`."""
    return os.environ.get(PREFIX + name, default)


def option(
    parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup,
    *flags: str,
    env: str,
    help: str,  # noqa: A002 - argparse's own name
    default: Any = None,
    shown_default: str | None = None,
    required: bool = False,
    read_env: bool = True,
    **kwargs: Any,
) -> argparse.Action:
    """Add an option read from `flags`, else MICROGRID_<env>, else `default`.

    The help text gets the variable and the default appended (`shown_default` replaces the
    default's own text, e.g. for a computed one). `required` options are required only while
    their variable is unset. With `read_env=False` the variable is only named in the help: the
    code the option is passed to reads it itself (the web app's config). Other keyword arguments
    go to `add_argument`.
    """
    variable = PREFIX + env
    value = os.environ.get(variable) if read_env else None
    if kwargs.get("action") == "store_true" and value is not None:
        value = flag(value)  # "0", "no", "off": False, not a non-empty string
    if value is None or value == "":
        value = str(default) if default is not None and "type" in kwargs else default
    shown = shown_default if shown_default is not None else _shown(default)
    suffix = f"{variable}; default {shown}" if shown else variable
    return parser.add_argument(
        *flags, default=value, required=required and value is None,
        help=f"{help} ({suffix})", **kwargs,
    )


def _shown(default: Any) -> str:
    """How a default reads in help text: 1 rather than 1.0, nothing for None."""
    if default is None:
        return ""
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def add_rpc_option(parser: argparse.ArgumentParser) -> None:
    """--rpc: the node URL (every command that talks to the chain)."""
    option(parser, "--rpc", env="RPC", default=DEFAULT_RPC,
           help="node URL: http://, ws://, an IPC path or inprocess://NAME")


def add_market_option(parser: argparse.ArgumentParser) -> None:
    """--market and --operator: which deployment, discovered on the chain when not given."""
    option(parser, "--market", env="MARKET",
           help="EnergyMarket address; found automatically if not given")
    option(parser, "--operator", env="OPERATOR",
           help="take only a deployment this grid operator account runs, when the chain "
           "holds several")


def kdf_n(text: str) -> int:
    """Parse --kdf-n / MICROGRID_KDF_N: a valid scrypt cost."""
    from dapp.errors import WalletError
    from dapp.wallet.keystore import check_scrypt_n

    try:
        return check_scrypt_n(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    except WalletError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def meter_spec(text: str) -> BridgeMeter:
    """Parse --meter URL[:ADDRESS] (the URL may contain colons)."""
    from dapp.bridge import parse_meter_spec

    try:
        return parse_meter_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_meter_option(parser: argparse.ArgumentParser, help: str) -> None:  # noqa: A002
    """--meter URL[:ADDRESS], repeatable; MICROGRID_METERS is read by `meter_specs`."""
    parser.add_argument("--meter", action="append", type=meter_spec, metavar="URL[:ADDRESS]",
                        help=f"{help} ({PREFIX}METERS: space-separated list)")


def meter_specs(args: argparse.Namespace) -> list[BridgeMeter]:
    """The meters of --meter, else of MICROGRID_METERS (space-separated URL[:ADDRESS] items)."""
    if args.meter:
        return list(args.meter)
    try:
        return [meter_spec(item) for item in (env("METERS") or "").split()]
    except argparse.ArgumentTypeError as exc:
        raise MicrogridError(f"{PREFIX}METERS: {exc}") from None


def add_submitter_options(parser: argparse.ArgumentParser, fallback: str | None = None) -> None:
    """--submitter and its passphrase file: the account that pays the gas of meter readings."""
    option(parser, "--submitter", env="SUBMITTER",
           shown_default=fallback or "none: readings are shown, not forwarded",
           help="keystore account that forwards the meters' signed readings and pays their gas "
           "(meters hold no Ether)")
    option(parser, "--submitter-passphrase-file", env="SUBMITTER_PASSPHRASE_FILE",
           default=env("PASSPHRASE_FILE"), shown_default="MICROGRID_PASSPHRASE_FILE, else asked",
           help="file whose first line unlocks the submitter's key")


def log_level(text: str) -> str:
    """Parse --log-level / MICROGRID_LOG_LEVEL: one of LOG_LEVELS, any case."""
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"choose one of {', '.join(LOG_LEVELS)}, not {text!r}")
    return level


def add_log_level_option(parser: argparse.ArgumentParser, default: str = "WARNING") -> None:
    """--log-level (MICROGRID_LOG_LEVEL): how much the terminal shows."""
    option(parser, "--log-level", env="LOG_LEVEL", type=log_level, default=default,
           help="DEBUG, INFO (every request and meter reading), WARNING (warnings, errors "
           "and one line per trade event) or ERROR")


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr with time, level and logger name (level: DEBUG, INFO, WARNING, ERROR).

    Safe to call again (the level changes, no second handler). werkzeug's logger gets the same
    level (werkzeug sets INFO, a line per request, on a logger nobody set). Trade events
    (`TRADES_LOGGER`) print as "HH:MM:SS trade: ..." at every level up to WARNING.
    """
    numeric = getattr(logging, level.upper(), logging.INFO)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=LOG_FORMAT)
    root.setLevel(numeric)
    logging.getLogger("werkzeug").setLevel(numeric)
    trades = logging.getLogger(TRADES_LOGGER)
    trades.setLevel(logging.INFO if numeric <= logging.WARNING else numeric)
    if not trades.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s trade: %(message)s", "%H:%M:%S"))
        trades.addHandler(handler)
        trades.propagate = False


class TradeLog:
    """Listener subscriber: one terminal line per market event mined after `since_block`.

    Listed, bid, won (the trade opens), ended without bids, closed: each as a sentence from
    dapp/services/messages.py, accounts by their keystore label (`label_of`) or short address.
    """

    def __init__(self, label_of: Callable[[str], str | None], since_block: int) -> None:
        self._label_of = label_of
        self.since_block = since_block
        self._log = logging.getLogger(TRADES_LOGGER)

    def _who(self, address: str) -> str:
        from dapp.services.units import short_address

        return self._label_of(address) or short_address(address)

    def __call__(self, event: ChainEvent) -> None:
        """Print the event's line if it is a fresh market event."""
        from dapp.services.messages import trade_event_line

        if event.contract != "EnergyMarket" or event.block_number <= self.since_block:
            return
        line = trade_event_line(event.name, event.args, self._who)
        if line:
            self._log.info(line)


def log_trade_events(state: AppState) -> Callable[[], None]:
    """Subscribe a TradeLog to the app's one event listener (events from now on); unsubscribe."""
    from dapp.errors import ChainError

    try:
        head = state.client.block_number()
    except ChainError:
        head = -1  # the chain is down at start: every event it delivers later is news
    return state.subscribe(TradeLog(state.wallet.label_of, head))


@contextlib.contextmanager
def stop_on_signal() -> Iterator[threading.Event]:
    """An event set by SIGINT (Ctrl-C) or SIGTERM while the block runs; handlers restored after.

    The signals only set the event, so the command stops what it started once, cleanly. Off
    the main thread (where signals cannot be caught) the event is only set by the caller.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
