"""EIP-712 typed data of a meter reading, as hardware/PROTOCOL.md ("Signed readings") specifies.

Pure functions: the digest a meter signs, signing with a meter key (the emulator's), and recovering
the signer of a reading (the bridge, the tests). The firmware builds the same bytes in C++
(hardware/firmware/meter/eip712.cpp); `tests/hardware` checks both against eth-account's
`encode_typed_data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from eth_account import Account
from eth_keys import keys
from eth_keys.exceptions import BadSignature, ValidationError
from eth_utils import keccak, to_canonical_address, to_checksum_address

DOMAIN_NAME = "MeterRegistry"
DOMAIN_VERSION = "1"
DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
READING_TYPE = ("Reading(address meter,uint64 energyWh,uint64 sequence,uint64 blockNumber,"
                "bytes32 blockHash)")
DOMAIN_TYPEHASH = keccak(DOMAIN_TYPE.encode())
READING_TYPEHASH = keccak(READING_TYPE.encode())
UINT64_MAX = 2**64 - 1

# The message types for eth-account's encode_typed_data (the primary type is "Reading").
READING_TYPES = {
    "Reading": [
        {"name": "meter", "type": "address"},
        {"name": "energyWh", "type": "uint64"},
        {"name": "sequence", "type": "uint64"},
        {"name": "blockNumber", "type": "uint64"},
        {"name": "blockHash", "type": "bytes32"},
    ]
}


@dataclass(frozen=True)
class BlockRef:
    """A recent block the host passes with READ: the meter signs its number and hash, so a
    reading cannot have been signed before that block existed (the registry checks its age)."""

    number: int
    hash: bytes  # 32 bytes

    def __post_init__(self) -> None:
        _check_uint64("block number", self.number)
        if not isinstance(self.hash, bytes | bytearray) or len(self.hash) != 32:
            raise ValueError(f"a block hash is 32 bytes: {self.hash!r}")
        object.__setattr__(self, "hash", bytes(self.hash))

    def hex_hash(self) -> str:
        """The hash as `0x` and 64 lower-case hex digits (as READ takes it)."""
        return "0x" + self.hash.hex()


@dataclass(frozen=True)
class Domain:
    """Where a reading is valid: the chain id and the MeterRegistry address (provisioned once)."""

    chain_id: int
    registry: str  # any case on input; stored as an EIP-55 checksum address

    def __post_init__(self) -> None:
        if not 1 <= self.chain_id <= UINT64_MAX:
            raise ValueError(f"chain id out of range: {self.chain_id}")
        object.__setattr__(self, "registry", to_checksum_address(self.registry))

    @cached_property
    def _separator(self) -> bytes:
        return keccak(DOMAIN_TYPEHASH + keccak(DOMAIN_NAME.encode())
                      + keccak(DOMAIN_VERSION.encode()) + self.chain_id.to_bytes(32, "big")
                      + _word(to_canonical_address(self.registry)))

    def separator(self) -> bytes:
        """The 32-byte EIP-712 domain separator (computed once per domain)."""
        return self._separator

    def typed_data(self) -> dict:
        """The domain as eth-account's `encode_typed_data(domain_data=...)` takes it."""
        return {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": self.chain_id,
                "verifyingContract": self.registry}


def _word(value: bytes) -> bytes:
    return value.rjust(32, b"\0")


def _check_uint64(name: str, value: int) -> None:
    if not 0 <= value <= UINT64_MAX:
        raise ValueError(f"{name} out of the uint64 range: {value}")


def struct_hash(meter: str, energy_wh: int, sequence: int, block: BlockRef) -> bytes:
    """keccak256(abi.encode(READING_TYPEHASH, meter, energyWh, sequence, blockNumber,
    blockHash))."""
    _check_uint64("energy_wh", energy_wh)
    _check_uint64("sequence", sequence)
    return keccak(READING_TYPEHASH + _word(to_canonical_address(meter))
                  + energy_wh.to_bytes(32, "big") + sequence.to_bytes(32, "big")
                  + block.number.to_bytes(32, "big") + block.hash)


def reading_digest(domain: Domain, meter: str, energy_wh: int, sequence: int,
                   block: BlockRef) -> bytes:
    """The 32-byte EIP-712 digest a meter signs for one reading."""
    return keccak(b"\x19\x01" + domain.separator()
                  + struct_hash(meter, energy_wh, sequence, block))


def meter_address(private_key: bytes) -> str:
    """The checksum address of a meter key."""
    return Account.from_key(private_key).address


def sign_reading(private_key: bytes, domain: Domain, energy_wh: int, sequence: int,
                 block: BlockRef) -> bytes:
    """The 65-byte signature r || s || v (v 27/28, low s, RFC 6979) of a reading by this key."""
    key = keys.PrivateKey(private_key)
    digest = reading_digest(domain, key.public_key.to_checksum_address(), energy_wh, sequence,
                            block)
    signature = key.sign_msg_hash(digest)
    return signature.to_bytes()[:64] + bytes([signature.v + 27])


def recover_signer(domain: Domain, meter: str, energy_wh: int, sequence: int, block: BlockRef,
                   signature: bytes) -> str:
    """The address whose key produced `signature` over this reading (ValueError if malformed)."""
    if len(signature) != 65 or signature[64] not in (27, 28):
        raise ValueError("a signature is 65 bytes r || s || v with v 27 or 28")
    digest = reading_digest(domain, meter, energy_wh, sequence, block)
    try:
        sig = keys.Signature(signature[:64] + bytes([signature[64] - 27]))
        return sig.recover_public_key_from_msg_hash(digest).to_checksum_address()
    except (BadSignature, ValidationError) as exc:  # r or s out of range, or no such point
        raise ValueError(f"not a valid signature: {exc}") from exc
