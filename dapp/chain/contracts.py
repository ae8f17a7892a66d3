"""Load the compiled artifacts and turn contract reverts into readable custom errors."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import function_signature_to_4byte_selector, to_checksum_address, to_hex

from dapp.compiler import BUILD_DIR
from dapp.errors import ChainError, ContractReverted

CONTRACT_NAMES = ("EnergyToken", "MeterRegistry", "EnergyMarket")


@dataclass(frozen=True)
class Artifact:
    """ABI and bytecode of one compiled contract."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str


@cache
def load_artifact(name: str, build_dir: Path = BUILD_DIR) -> Artifact:
    """Read `name`'s artifact from contracts/build (or contracts/build/test)."""
    for path in (build_dir / f"{name}.json", build_dir / "test" / f"{name}.json"):
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            return Artifact(name, data["abi"], data["bytecode"], data["deployedBytecode"])
    raise ChainError(f"no compiled artifact for {name}; run `microgrid compile`")


def _abi_type(item: dict[str, Any]) -> str:
    """Canonical ABI type string, expanding tuples."""
    if item["type"].startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in item["components"])
        return f"({inner}){item['type'][5:]}"
    return item["type"]


@cache
def _error_table() -> dict[bytes, tuple[str, list[str]]]:
    """Selector -> (error name, argument types) over every contract we ship."""
    table: dict[bytes, tuple[str, list[str]]] = {}
    for name in CONTRACT_NAMES:
        for item in load_artifact(name).abi:
            if item["type"] == "error":
                types = [_abi_type(i) for i in item["inputs"]]
                selector = function_signature_to_4byte_selector(
                    f"{item['name']}({','.join(types)})"
                )
                table[selector] = (item["name"], types)
    # Solidity's built-in Error(string) and Panic(uint256).
    table[function_signature_to_4byte_selector("Error(string)")] = ("Error", ["string"])
    table[function_signature_to_4byte_selector("Panic(uint256)")] = ("Panic", ["uint256"])
    return table


def error_name(selector: bytes) -> str | None:
    """The name of the project's custom error with this 4-byte selector, if any."""
    entry = _error_table().get(bytes(selector))
    return entry[0] if entry else None


def decode_revert(data: bytes | str | None) -> ContractReverted:
    """Turn raw revert data into a ContractReverted with the custom error's name and args."""
    if isinstance(data, str):
        data = bytes.fromhex(data.removeprefix("0x"))
    if not data:
        return ContractReverted("Reverted", (), "the transaction was reverted without a reason")
    entry = _error_table().get(data[:4])
    if entry is None:
        return ContractReverted("UnknownError", (to_hex(data),))
    name, types = entry
    try:
        args = abi_decode(types, data[4:])
    except Exception:  # noqa: BLE001 - malformed revert data from a foreign contract
        return ContractReverted(name, ())
    args = [
        to_checksum_address(a) if t == "address" else a for t, a in zip(types, args, strict=True)
    ]
    return ContractReverted(name, tuple(args))


def revert_data_from_exception(exc: BaseException) -> bytes | None:
    """Dig the raw revert data out of whatever a provider raised (web3 or eth-tester).

    Looks through the exception's cause/context chain too: web3's eth-tester provider sometimes
    fails while decoding a custom error as Error(string) and raises a different exception, with
    the original (holding the raw bytes) as its context.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        data = _revert_data(current)
        if data is not None:
            return data
        current = current.__cause__ or current.__context__
    return None


def _revert_data(exc: BaseException) -> bytes | None:
    """Revert data carried by this one exception, if any."""
    data = getattr(exc, "data", None)
    if isinstance(data, str) and data.startswith("0x"):
        return bytes.fromhex(data[2:])
    if isinstance(data, dict) and isinstance(data.get("data"), str):
        return bytes.fromhex(data["data"].removeprefix("0x"))
    if exc.args:
        first = exc.args[0]
        if isinstance(first, bytes):
            return first
        if isinstance(first, str):
            text = first.split("execution reverted:", 1)[-1].strip()
            if text.startswith(("b'", 'b"')):
                try:
                    value = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    return None
                return value if isinstance(value, bytes) else None
            if text.startswith("0x"):
                try:
                    return bytes.fromhex(text[2:])
                except ValueError:
                    return None
    return None
