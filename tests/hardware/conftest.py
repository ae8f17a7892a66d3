"""Shared values for the meter tests: the protocol's test vector and a domain to provision."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from hardware.signing import READING_TYPES, BlockRef, Domain

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "hardware" / "PROTOCOL.md"

# The test vector of hardware/PROTOCOL.md (never a real meter's key).
VECTOR_KEY = bytes.fromhex("11" * 32)
VECTOR_DOMAIN = Domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
VECTOR_ENERGY_WH = 12345
VECTOR_SEQUENCE = 42
VECTOR_BLOCK = BlockRef(1000, bytes.fromhex("a5" * 32))


def eth_account_signature(key: bytes, domain: Domain, energy_wh: int, sequence: int,
                          block: BlockRef = VECTOR_BLOCK) -> tuple[bytes, bytes]:
    """(digest, signature) of a reading as eth-account computes them: the reference."""
    message = {"meter": Account.from_key(key).address, "energyWh": energy_wh,
               "sequence": sequence, "blockNumber": block.number, "blockHash": block.hash}
    signable = encode_typed_data(domain_data=domain.typed_data(), message_types=READING_TYPES,
                                 message_data=message)
    signed = Account.sign_message(signable, key)
    return bytes(signed.message_hash), bytes(signed.signature)


def documented_vector() -> dict[str, str]:
    """The digest and signature written on PROTOCOL.md's "test vector" lines."""
    found = {}
    for line in PROTOCOL_MD.read_text().splitlines():
        if "test vector" in line:
            for name in ("digest", "signature"):
                match = re.search(rf"{name}\W+(0x[0-9a-f]+)", line)
                if match:
                    found[name] = match.group(1)
    return found


def require_in_ci(reason: str) -> None:
    """Skip with `reason` on a developer machine; fail under CI=true (nothing may be skipped)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: required)")
    pytest.skip(reason)


@pytest.fixture
def domain() -> Domain:
    """The domain the tests provision their meters with (the test vector's)."""
    return VECTOR_DOMAIN
