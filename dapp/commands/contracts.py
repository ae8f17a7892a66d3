"""`microgrid compile` and `microgrid deploy`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dapp.commands.common import add_rpc_option, option


def cmd_compile(args: argparse.Namespace) -> int:
    """Compile the contracts into contracts/build, or check the committed artifacts."""
    from dapp import compiler

    comp = compiler.find_compiler()
    files = compiler.compile_project(comp)
    if args.check:
        problems = compiler.check_artifacts(files)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run `microgrid compile` and commit contracts/build/", file=sys.stderr)
            return 1
        print(f"contracts/build matches a fresh compile (solc {comp.version}, {comp.kind})")
        return 0
    for path in compiler.write_artifacts(files):
        print(f"wrote {path.relative_to(compiler.ROOT)}")
    print(f"compiled with solc {comp.version} ({comp.kind})")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """Deploy and wire the contracts from a keystore account and print the addresses."""
    from dapp.chain.deploy import MarketParameters, deploy
    from dapp.chain.transports import connect
    from dapp.wallet.keystore import Keystore, read_passphrase

    keystore = Keystore(Path(args.data_dir) / "keystore")
    passphrase = read_passphrase(args.passphrase_file, prompt=f"Passphrase for {args.sender}: ")
    account = keystore.unlock(args.sender, passphrase)
    w3 = connect(args.rpc)
    params = MarketParameters(
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        min_increment_per_kwh=args.min_increment,
        stall_timeout=args.stall_timeout,
        close_grace=args.close_grace,
        min_charge_wh=args.min_charge,
    )
    deployment = deploy(w3, account, params)
    print(json.dumps(deployment.as_dict(), indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `compile` and `deploy` to the CLI."""
    p = sub.add_parser("compile", help="compile the contracts into contracts/build")
    p.add_argument("--check", action="store_true", help="only check the committed artifacts")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("deploy", help="deploy the token, registry and market")
    add_rpc_option(p)
    option(p, "--from", dest="sender", env="OPERATOR", required=True,
           help="deployer/operator address in the keystore")
    option(p, "--passphrase-file", env="PASSPHRASE_FILE", help="file holding the passphrase")
    option(p, "--min-duration", env="MIN_DURATION", type=int, default=60,
           help="shortest auction in seconds")
    option(p, "--max-duration", env="MAX_DURATION", type=int, default=604_800,
           help="longest auction in seconds")
    option(p, "--min-increment", env="MIN_INCREMENT", type=int, default=10**12,
           help="minimum bid increment in wei per kWh")
    option(p, "--stall-timeout", env="STALL_TIMEOUT", type=int, default=900,
           help="seconds of chain time a delivering buyer's load meter may be silent before "
           "the trade is stalled (its seller's relay opens and the seller may close it)")
    option(p, "--close-grace", env="CLOSE_GRACE", type=int, default=300,
           help="seconds the buyer's next reading has to settle the tail after it asks to close")
    option(p, "--min-charge", env="MIN_CHARGE_WH", type=int, default=100,
           help="Wh every won lot costs its winner at least (walking away is not free)")
    p.set_defaults(func=cmd_deploy)
