"""Pending transactions: everything not yet mined that concerns an account.

Two sources are merged: the node's own pending state (``txpool_content`` on anvil, hardhat and
geth) and this server's outbox (every transaction it signed, including its meters' readings).
The in-process chain has no usable pool view, so there the outbox is the whole story.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import TransactionNotFound

from dapp.chain.contracts import CONTRACT_NAMES, _abi_type, load_artifact
from dapp.chain.transports import rpc
from dapp.chain.tx import Outbox

# Human names for the contract functions a user sees in the pending list.
KIND_BY_FUNCTION = {
    "report": "meter reading",
    "list": "sell",
    "bid": "bid",
    "finalize": "finalize auction",
    "closeConnection": "close connection",
    "withdraw": "withdraw",
    "reportBatch": "meter readings",
    "offerMeter": "offer meter",
    "acceptMeter": "accept meter",
    "declineMeter": "decline meter",
    "deactivateMeter": "deactivate meter",
    "transfer": "send tokens",
}


@dataclass(frozen=True)
class PendingTx:
    """One pending transaction as the wallet shows it."""

    hash: str
    sender: str
    to: str | None
    kind: str
    nonce: int
    value: int
    age_seconds: float
    source: str  # "node", "outbox" or "node+outbox"


def _selector_table() -> dict[bytes, str]:
    table = {}
    for name in CONTRACT_NAMES:
        for item in load_artifact(name).abi:
            if item["type"] == "function":
                sig = f"{item['name']}({','.join(_abi_type(i) for i in item['inputs'])})"
                table[function_signature_to_4byte_selector(sig)] = item["name"]
    return table


def kind_of(data: bytes | str | None, value: int) -> str:
    """Describe a transaction by its call data: "bid", "meter reading", "send Ether", ..."""
    raw = HexBytes(data or b"")
    if len(raw) < 4:
        return "send Ether" if value else "transaction"
    name = _SELECTORS.get(bytes(raw[:4]))
    if name is None:
        return "contract call"
    return KIND_BY_FUNCTION.get(name, name)


_SELECTORS = _selector_table()


def node_pool(w3: Web3) -> list[dict[str, Any]] | None:
    """The node's pending transactions from txpool_content, or None if it has no such API."""
    try:
        pool = rpc(w3, "txpool_content")
    except Exception:  # noqa: BLE001 - no pool API, or the node is down: outbox only
        return None
    if not isinstance(pool, dict):
        return None
    txs = []
    for section in ("pending", "queued"):
        for by_nonce in pool.get(section, {}).values():
            txs.extend(by_nonce.values())
    return txs


class PendingView:
    """Answers `pending_transactions(account, meters)` from the node pool and the outbox."""

    def __init__(self, w3: Web3, outbox: Outbox, clock: Callable[[], float] = time.time) -> None:
        self.w3 = w3
        self.outbox = outbox
        self._clock = clock
        self._first_seen: dict[str, float] = {}

    def pending_transactions(
        self, account: str, meters: Iterable[str] = ()
    ) -> list[PendingTx]:
        """Every not-yet-mined transaction sent by `account` or one of its `meters`."""
        account = to_checksum_address(account)
        watched = {account} | {to_checksum_address(m) for m in meters}
        now = self._clock()
        found: dict[str, PendingTx] = {}
        pool = node_pool(self.w3) or []
        in_pool = {HexBytes(tx["hash"]).to_0x_hex() for tx in pool}
        for tx_hash in list(self._first_seen):
            if tx_hash not in in_pool:
                del self._first_seen[tx_hash]
        for tx in pool:
            tx_hash = HexBytes(tx["hash"]).to_0x_hex()
            first = self._first_seen.setdefault(tx_hash, now)
            sender = to_checksum_address(tx["from"])
            if sender not in watched:
                continue
            value = int(tx.get("value", 0), 16) if isinstance(tx.get("value"), str) else int(
                tx.get("value", 0)
            )
            nonce = int(tx["nonce"], 16) if isinstance(tx["nonce"], str) else int(tx["nonce"])
            found[tx_hash] = PendingTx(
                hash=tx_hash,
                sender=sender,
                to=tx.get("to") and to_checksum_address(tx["to"]),
                kind=kind_of(tx.get("input"), value),
                nonce=nonce,
                value=value,
                age_seconds=max(0.0, now - first),
                source="node",
            )
        for entry in self.outbox.entries():
            if entry.sender not in watched and account not in entry.concerns:
                continue
            if entry.hash not in found and self._is_mined(entry.hash):
                self.outbox.remove(entry.hash)
                continue
            known = found.get(entry.hash)
            found[entry.hash] = PendingTx(
                hash=entry.hash,
                sender=entry.sender,
                to=entry.to,
                kind=entry.kind,
                nonce=entry.nonce,
                value=entry.value,
                age_seconds=max(0.0, now - entry.sent_at),
                source="node+outbox" if known else "outbox",
            )
        return sorted(found.values(), key=lambda p: (p.sender, p.nonce))

    def _is_mined(self, tx_hash: str) -> bool:
        try:
            receipt = self.w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return False
        except Exception:  # noqa: BLE001 - node down: keep showing it as pending
            return False
        return receipt is not None and receipt.get("blockNumber") is not None
