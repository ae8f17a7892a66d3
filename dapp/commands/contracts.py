"""`microgrid compile` and `microgrid deploy`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dapp.commands.common import env, env_default


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
        delivery_timeout=args.delivery_timeout,
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
    p.add_argument("--rpc", default=env("RPC", "http://127.0.0.1:8545"),
                   help="node URL: http://, ws:// or an IPC path (MICROGRID_RPC)")
    p.add_argument("--from", dest="sender", default=env("OPERATOR"),
                   required=env("OPERATOR") is None,
                   help="deployer/operator address in the keystore (MICROGRID_OPERATOR)")
    p.add_argument("--passphrase-file", default=env("PASSPHRASE_FILE"),
                   help="file holding the passphrase (MICROGRID_PASSPHRASE_FILE)")
    p.add_argument("--min-duration", type=int, default=env_default("MIN_DURATION", 60),
                   help="shortest auction in seconds (MICROGRID_MIN_DURATION)")
    p.add_argument("--max-duration", type=int, default=env_default("MAX_DURATION", 604_800),
                   help="longest auction in seconds (MICROGRID_MAX_DURATION)")
    p.add_argument("--min-increment", type=int, default=env_default("MIN_INCREMENT", 10**12),
                   help="minimum bid increment in wei per kWh (MICROGRID_MIN_INCREMENT)")
    p.add_argument("--delivery-timeout", type=int, default=env_default("DELIVERY_TIMEOUT", 900),
                   help="seconds without readings before the seller may close "
                   "(MICROGRID_DELIVERY_TIMEOUT)")
    p.set_defaults(func=cmd_deploy)
