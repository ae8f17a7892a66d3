"""The `microgrid` command line: one subcommand per task (compile, deploy, node, account, ...)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dapp.commands.common import option
from dapp.errors import REPORTED_ERRORS

# Each module exposes `register(subparsers)`; add new command groups here.
COMMAND_MODULES = (
    "dapp.commands.contracts",
    "dapp.commands.accounts",
    "dapp.commands.node",
    "dapp.commands.meter",
    "dapp.commands.emulator",
    "dapp.commands.bridge",
    "dapp.commands.serve",
    "dapp.commands.demo",
    "dapp.commands.simulate",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="microgrid", description=__doc__)
    option(parser, "--data-dir", env="DATA_DIR", default="data",
           help="where keystores, node state and caches live")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    # `--data-dir` is accepted after the subcommand too (`microgrid node --data-dir D`).
    for subparser in sub.choices.values():
        subparser.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `microgrid` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except REPORTED_ERRORS as exc:
        print(f"microgrid: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
