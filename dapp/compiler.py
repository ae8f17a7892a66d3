"""Compile the Solidity contracts with py-solc-x into committed, reproducible artifacts.

A native solc of the pinned version is used when one is installed; otherwise the npm solc-js
through ``tools/solcjs-adapter.js``, which answers py-solc-x like a native binary. Every source
(ours and OpenZeppelin's from ``node_modules``) is inlined into the standard-JSON input under a
relative source unit name, so the output does not depend on where the checkout lives.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dapp.errors import CompileError

SOLC_VERSION = "0.8.28"
EVM_VERSION = "paris"  # no PUSH0: also runs on geth clique chains (v1.12-1.13)
OPTIMIZER_RUNS = 20_000

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS_DIR = ROOT / "contracts"
BUILD_DIR = CONTRACTS_DIR / "build"
ADAPTER = ROOT / "tools" / "solcjs-adapter.js"

_IMPORT_RE = re.compile(r"""^\s*import\s+(?:[^;]*?\s+from\s+)?["']([^"']+)["']\s*;""", re.M)

SETTINGS: dict[str, Any] = {
    "evmVersion": EVM_VERSION,
    "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
    "metadata": {"bytecodeHash": "ipfs"},
    "outputSelection": {
        "*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}
    },
}


@dataclass(frozen=True)
class Compiler:
    """A solc executable py-solc-x can call, and its exact version."""

    binary: str
    version: str
    kind: str  # "native" or "solc-js"


def find_compiler() -> Compiler:
    """Return a native solc of the pinned version if present, else the solc-js adapter."""
    import solcx
    from solcx.wrapper import get_solc_version

    candidates: list[tuple[str, str]] = []
    native = shutil.which("solc")
    if native:
        candidates.append((native, "native"))
    with contextlib.suppress(Exception):  # a broken solcx install just means "no native solc"
        installed = solcx.get_installed_solc_versions()
        if any(str(v) == SOLC_VERSION for v in installed):
            candidates.append((str(solcx.get_executable(SOLC_VERSION)), "native"))
    if shutil.which("node") and (ROOT / "node_modules" / "solc").is_dir():
        candidates.append((str(ADAPTER), "solc-js"))
    for binary, kind in candidates:
        try:
            version = get_solc_version(binary, with_commit_hash=True)
        except Exception:  # noqa: BLE001,S112 - try the next candidate
            continue
        if version.base_version == SOLC_VERSION:
            return Compiler(binary, str(version), kind)
    raise CompileError(
        f"no solc {SOLC_VERSION} found: install the Node tools with `npm ci` (solc-js) "
        "or put a native solc of that version on PATH"
    )


def _resolve_file(unit: str) -> Path:
    """Map a source unit name to a file: the project tree first, then node_modules."""
    for base in (ROOT, ROOT / "node_modules"):
        path = base / unit
        if path.is_file():
            return path
    raise CompileError(f"source not found: {unit}")


def collect_sources(entry_units: list[str], overrides: dict[str, str] | None = None) -> dict:
    """Gather the entry sources and everything they import, keyed by relative unit name."""
    overrides = overrides or {}
    sources: dict[str, dict[str, str]] = {}
    todo = list(entry_units)
    while todo:
        unit = todo.pop()
        if unit in sources:
            continue
        text = overrides.get(unit)
        if text is None:
            text = _resolve_file(unit).read_text(encoding="utf-8")
        sources[unit] = {"content": text}
        for target in _IMPORT_RE.findall(text):
            if target.startswith("."):
                target = posixpath.normpath(posixpath.join(posixpath.dirname(unit), target))
            todo.append(target)
    return dict(sorted(sources.items()))


def entry_units() -> list[str]:
    """The project's own Solidity files: contracts/*.sol and contracts/test/*.sol."""
    files = sorted(CONTRACTS_DIR.glob("*.sol")) + sorted((CONTRACTS_DIR / "test").glob("*.sol"))
    return [f.relative_to(ROOT).as_posix() for f in files]


def compile_sources(
    units: list[str], overrides: dict[str, str] | None = None, compiler: Compiler | None = None
) -> tuple[dict, Compiler]:
    """Compile `units` (plus imports) and return solc's standard-JSON output and the compiler."""
    import solcx

    compiler = compiler or find_compiler()
    standard_input = {
        "language": "Solidity",
        "sources": collect_sources(units, overrides),
        "settings": SETTINGS,
    }
    try:
        output = solcx.compile_standard(standard_input, solc_binary=compiler.binary)
    except solcx.exceptions.SolcError as exc:
        raise CompileError(str(exc)) from exc
    return output, compiler


def build_artifacts(output: dict, compiler: Compiler, units: list[str]) -> dict[str, str]:
    """Turn solc output into artifact files: {relative path under build/: JSON text}."""
    files: dict[str, str] = {}
    for unit in units:
        for name, data in sorted(output["contracts"].get(unit, {}).items()):
            if not data["evm"]["bytecode"]["object"]:
                continue  # interfaces and abstract contracts: nothing to deploy
            artifact = {
                "contractName": name,
                "sourceName": unit,
                "abi": data["abi"],
                "bytecode": "0x" + data["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x" + data["evm"]["deployedBytecode"]["object"],
                "compiler": {"version": compiler.version, "settings": SETTINGS},
            }
            sub = "test/" if unit.startswith("contracts/test/") else ""
            files[f"{sub}{name}.json"] = json.dumps(artifact, indent=2, sort_keys=True) + "\n"
    return files


def compile_project(compiler: Compiler | None = None) -> dict[str, str]:
    """Compile every project contract and return the artifact files it would write."""
    units = entry_units()
    output, compiler = compile_sources(units, compiler=compiler)
    return build_artifacts(output, compiler, units)


def write_artifacts(files: dict[str, str], build_dir: Path = BUILD_DIR) -> list[Path]:
    """Write artifacts into `build_dir`, removing stale ones; return the written paths."""
    written = []
    for old in build_dir.rglob("*.json"):
        if old.relative_to(build_dir).as_posix() not in files:
            old.unlink()
    for rel, text in files.items():
        path = build_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def check_artifacts(files: dict[str, str], build_dir: Path = BUILD_DIR) -> list[str]:
    """Return the differences between fresh artifacts and the committed ones (empty if equal)."""
    problems = []
    committed = {p.relative_to(build_dir).as_posix() for p in build_dir.rglob("*.json")}
    for rel in sorted(committed - set(files)):
        problems.append(f"stale artifact: {rel}")
    for rel, text in sorted(files.items()):
        path = build_dir / rel
        if not path.is_file():
            problems.append(f"missing artifact: {rel}")
        elif path.read_bytes() != text.encode("utf-8"):
            problems.append(f"artifact differs from a fresh compile: {rel}")
    return problems
