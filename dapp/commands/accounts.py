"""`microgrid account new|list|import`: the keystore in `<data-dir>/keystore`.

Settings: --passphrase-file (MICROGRID_PASSPHRASE_FILE; without it the passphrase is asked on the
terminal, twice for a new account), --label (MICROGRID_ACCOUNT_LABEL), --kdf-n (MICROGRID_KDF_N,
scrypt cost of new accounts; default geth's 262144 = 2^18, lower only for tests and demos).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dapp.commands.common import kdf_n, option
from dapp.wallet.keystore import GETH_SCRYPT_N, Keystore, read_passphrase


def cmd_account_new(args: argparse.Namespace) -> int:
    """Create an account; print its address on stdout and its file on stderr."""
    keystore = Keystore(_keystore_dir(args), scrypt_n=args.kdf_n)
    passphrase = read_passphrase(
        args.passphrase_file, prompt="Passphrase for the new account: ", confirm=True
    )
    address = keystore.create(passphrase, label=args.label)
    print(address)
    print(f"created {address} in {keystore.path_for(address)}", file=sys.stderr)
    return 0


def cmd_account_list(args: argparse.Namespace) -> int:
    """Print address, label and file name of every account."""
    keystore = Keystore(_keystore_dir(args))
    entries = keystore.list()
    if not entries:
        print(f"no accounts in {keystore.directory}", file=sys.stderr)
        return 0
    width = max(len(entry.label or "-") for entry in entries)
    for entry in entries:
        print(f"{entry.address}  {(entry.label or '-'):<{width}}  {entry.path.name}")
    return 0


def cmd_account_import(args: argparse.Namespace) -> int:
    """Import a V3 key file (from geth or another wallet); print its address."""
    keystore = Keystore(_keystore_dir(args))
    passphrase = read_passphrase(args.passphrase_file, prompt=f"Passphrase of {args.file}: ")
    address = keystore.import_file(Path(args.file), passphrase, label=args.label)
    print(address)
    print(f"imported {address} into {keystore.path_for(address)}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `account new`, `account list` and `account import` to the CLI."""
    account = sub.add_parser("account", help="create, list and import keystore accounts")
    commands = account.add_subparsers(dest="account_command", required=True)

    p = commands.add_parser("new", help="create an account (geth-compatible V3 key file)")
    _label_and_passphrase(p)
    option(p, "--kdf-n", env="KDF_N", type=kdf_n, default=GETH_SCRYPT_N,
           shown_default=f"geth's {GETH_SCRYPT_N}; lower only for tests and demos",
           help=f"scrypt cost N for the new key file, a power of two up to {GETH_SCRYPT_N}")
    p.set_defaults(func=cmd_account_new)

    p = commands.add_parser("list", help="list the accounts: address, label, file")
    p.set_defaults(func=cmd_account_list)

    p = commands.add_parser("import", help="import a V3 key file from geth or another wallet")
    p.add_argument("file", help="the key file to import (it is copied, not moved)")
    _label_and_passphrase(p)
    p.set_defaults(func=cmd_account_import)

    # dapp/cli.py adds --data-dir to `account` only; accept it after `new`/`list`/`import` too.
    for parser in commands.choices.values():
        parser.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _label_and_passphrase(p: argparse.ArgumentParser) -> None:
    """The --label and --passphrase-file options shared by `new` and `import`."""
    option(p, "--label", env="ACCOUNT_LABEL",
           help="a name shown with the address, e.g. producer")
    option(p, "--passphrase-file", env="PASSPHRASE_FILE", shown_default="asked on the terminal",
           help="file whose first line is the passphrase")


def _keystore_dir(args: argparse.Namespace) -> Path:
    """`<data-dir>/keystore`."""
    return Path(args.data_dir) / "keystore"
