"""Local signing, per-account nonces, an outbox of unmined transactions, and receipts.

Every transaction this server sends goes through one :class:`TxSender`: it signs with the
sender's key (eth-account; no node-side accounts), gives each account consecutive nonces under a
lock, sends raw, and remembers the transaction in an outbox persisted in the data directory until
it is mined. If the node loses unmined transactions (a crash, a restart from an older state), the
outbox sends the very same signed bytes again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import TransactionNotFound, Web3Exception

from dapp import atomic
from dapp.chain.contracts import decode_revert, revert_data_from_exception
from dapp.chain.failures import is_connection_error, translated, unavailable
from dapp.errors import (
    DROPPED_BEHIND_GAP,
    DROPPED_NONCE_USED,
    DROPPED_OTHER_CHAIN,
    ChainError,
    ChainUnavailable,
    ContractReverted,
)

log = logging.getLogger(__name__)

DEFAULT_PRIORITY_FEE = 10**9  # 1 gwei: private chains have no fee market to speak of
# Gas limit = estimate x GAS_MARGIN + GAS_HEADROOM. The state can change between the estimate
# and the block: a load reading that closes a seller's last trade empties the market's escrow
# balance and the seller's lot list, and refilling an emptied storage slot costs 17,100 gas more
# than the estimate saw (a listing's estimate grows by 29 %: tests/bridge/test_anvil.py).
# Unused gas is not paid for; the headroom covers three such slots on any contract call.
GAS_MARGIN = 1.25
GAS_HEADROOM = 50_000
# A transaction whose fee cap fell below the base fee for this many blocks is signed again with
# the same nonce and higher fees (nodes take a replacement that pays at least 10 % more).
REPRICE_AFTER_BLOCKS = 3
# How nodes refuse a nonce another sender of the same account took between our nonce read and
# our send (another process with the key, e.g. a bridge and a server sharing the operator):
# anvil and geth say "nonce too low", py-evm "invalid transaction nonce".
NONCE_TAKEN = ("nonce too low", "invalid transaction nonce")
NONCE_ATTEMPTS = 2  # each attempt is a signed transaction: a lying node gets at most two
_DROP_LOG = {
    DROPPED_OTHER_CHAIN: "it was signed for another chain",
    DROPPED_NONCE_USED: "its nonce was used by another transaction",
    DROPPED_BEHIND_GAP: "an earlier nonce is lost, so it can never be mined",
}
REMEMBER_DROPPED = 1000  # dropped hashes kept for `dropped()`, newest
FEE_BUMP = 1.125


@dataclass
class OutboxEntry:
    """A transaction this server signed and sent, kept until it is mined or dropped."""

    hash: str
    sender: str
    nonce: int
    kind: str
    raw: str
    to: str | None
    value: int
    sent_at: float
    concerns: list[str] = field(default_factory=list)
    # The hash of the chain's genesis block: a node of another chain (a fresh development
    # chain with the same chain id) is never sent this transaction again. None: written by an
    # older version, which kept no chain.
    genesis: str | None = None


def _nonce_taken(exc: BaseException) -> bool:
    """True when the node refused a transaction because its nonce is already used."""
    text = str(exc).lower()
    return any(phrase in text for phrase in NONCE_TAKEN)


def _node_failure(exc: Exception, what: str) -> Exception:
    """What a failed node request means: unreachable node, a contract's revert, or a refusal."""
    if isinstance(exc, ChainError):
        return exc
    if is_connection_error(exc):
        return unavailable(exc)
    data = revert_data_from_exception(exc)
    if data is not None:
        return decode_revert(data)
    if "revert" in str(exc).lower():
        return ContractReverted("Reverted", (), str(exc))
    return ChainError(f"{what}: {exc}")


class Outbox:
    """The unmined transactions of this server: a JSON snapshot plus an append-only journal.

    `add` appends one line to ``<path>.journal`` and fsyncs it (the signed bytes survive a
    crash and are sent again); `remove` appends without fsync (a lost removal only makes
    `reconcile` look the transaction up again). Nothing rewrites the whole outbox per
    transaction: when the journal holds `compact_after` lines more than there are entries, the
    entries are written as the snapshot (``<path>``, atomic) and the journal is emptied.
    Replaying a journal on a snapshot that already holds its effect gives the same entries, so
    a crash between the two steps loses nothing; a torn last line (a crash mid-append) is
    ignored.
    """

    def __init__(self, path: Path | None, *, compact_after: int = 500) -> None:
        self._path = path
        self._journal_path = None if path is None else path.with_name(path.name + ".journal")
        self._compact_after = compact_after
        self._lock = threading.Lock()
        self._entries: dict[str, OutboxEntry] = {}
        self._lines = 0
        if path is not None and path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            for item in data.get("transactions", []):
                entry = OutboxEntry(**item)
                self._entries[entry.hash] = entry
        if self._journal_path is not None and self._journal_path.is_file():
            self._replay(self._journal_path)

    def _replay(self, journal: Path) -> None:
        for line in journal.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("outbox: ignoring a torn journal line in %s", journal)
                continue
            if "add" in record:
                entry = OutboxEntry(**record["add"])
                self._entries[entry.hash] = entry
            elif "remove" in record:
                self._entries.pop(record["remove"], None)
            self._lines += 1

    def add(self, entry: OutboxEntry) -> None:
        """Remember a sent transaction (on disk before this returns)."""
        with self._lock:
            self._entries[entry.hash] = entry
            self._append({"add": asdict(entry)}, sync=True)

    def remove(self, tx_hash: str) -> None:
        """Forget a transaction (mined or dropped)."""
        with self._lock:
            if self._entries.pop(tx_hash, None) is not None:
                self._append({"remove": tx_hash}, sync=False)

    def entries(self) -> list[OutboxEntry]:
        """All remembered transactions, oldest first."""
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: (e.sent_at, e.nonce))

    def compact(self) -> None:
        """Write the entries as the snapshot and empty the journal."""
        with self._lock:
            self._compact()

    def _append(self, record: dict[str, Any], *, sync: bool) -> None:
        if self._journal_path is None:
            return
        # Opened per record (a few microseconds): nothing stays open when the sender is dropped.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        try:
            fd = os.open(self._journal_path, flags, 0o600)
        except FileNotFoundError:  # the first record: the data directory is made now
            self._journal_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._journal_path, flags, 0o600)
        try:
            os.write(fd, (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8"))
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._lines += 1
        if self._lines > len(self._entries) + self._compact_after:
            self._compact()

    def _compact(self) -> None:
        if self._path is None or self._journal_path is None:
            return
        payload = {"transactions": [asdict(e) for e in self._entries.values()]}
        atomic.write_json(self._path, payload, indent=1)
        with open(self._journal_path, "w", encoding="utf-8") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        self._lines = 0


class TxSender:
    """Signs, numbers, sends and tracks this server's transactions."""

    def __init__(
        self,
        w3: Web3,
        outbox_path: Path | None = None,
        *,
        gas_margin: float = GAS_MARGIN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.w3 = w3
        self.outbox = Outbox(outbox_path)
        self._gas_margin = gas_margin
        self._clock = clock
        self._next_nonce: dict[str, int] = {}
        self._chain_id: int | None = None
        self._genesis: str | None = None
        # For re-pricing (in memory: keys are never written down): hash -> (key, unsigned tx),
        # the block a stuck transaction was first seen underpriced, and replaced -> replacement.
        self._unsigned: dict[str, tuple[LocalAccount, dict[str, Any]]] = {}
        self._underpriced_since: dict[str, int] = {}
        self._replaced_by: dict[str, str] = {}
        self._dropped: dict[str, str] = {}  # hash -> DROPPED_* (insertion order: oldest first)
        self._dropped_lock = threading.Lock()
        self._reprice_lock = threading.Lock()
        for entry in self.outbox.entries():
            self._next_nonce[entry.sender] = max(
                self._next_nonce.get(entry.sender, 0), entry.nonce + 1
            )

    # One nonce lock per account for the whole process, shared by every TxSender: two clients
    # of one process sending from one account (a bridge and the server, or tests) then never
    # race for a nonce. Across processes the node's refusal and the retry in `send` remain.
    _locks: ClassVar[dict[str, threading.Lock]] = {}
    _locks_guard: ClassVar[threading.Lock] = threading.Lock()

    def _lock_for(self, address: str) -> threading.Lock:
        with TxSender._locks_guard:
            return TxSender._locks.setdefault(address, threading.Lock())

    def genesis(self) -> str:
        """The hash of the node's genesis block (cached): which chain the outbox belongs to."""
        if self._genesis is None:
            block = self._call(lambda: self.w3.eth.get_block(0))
            self._genesis = HexBytes(block["hash"]).to_0x_hex()
        return self._genesis

    def chain_id(self) -> int:
        """The node's chain id (cached)."""
        if self._chain_id is None:
            self._chain_id = self._call(lambda: self.w3.eth.chain_id)
        return self._chain_id

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run a node call, turning connection failures into ChainUnavailable."""
        with translated():
            return fn()

    def _fees(self) -> dict[str, int]:
        """EIP-1559 fees where the latest block has a base fee, else a legacy gas price."""
        latest = self._call(lambda: self.w3.eth.get_block("latest"))
        base = latest.get("baseFeePerGas")
        if base is None:
            return {"gasPrice": self._call(lambda: self.w3.eth.gas_price)}
        try:
            tip = self.w3.eth.max_priority_fee
        except Exception:  # noqa: BLE001 - not every node implements eth_maxPriorityFeePerGas
            tip = DEFAULT_PRIORITY_FEE
        return {"maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * base + tip}

    def send(
        self,
        account: LocalAccount,
        tx: dict[str, Any],
        kind: str,
        concerns: list[str] | None = None,
    ) -> str:
        """Sign `tx` with `account`, send it raw and return its hash.

        Gas is estimated unless given; an estimate that reverts raises ContractReverted with the
        contract's custom error, and nothing is sent. `kind` ("bid", "send Ether", ...) and
        `concerns` (other accounts it matters to, e.g. a meter's owner) feed the pending list.
        """
        sender = to_checksum_address(account.address)
        tx = {k: v for k, v in tx.items() if v is not None}
        tx["from"] = sender
        tx.setdefault("value", 0)
        tx["chainId"] = self.chain_id()
        if "gas" not in tx:
            tx["gas"] = self.gas_limit(self.estimate_gas(tx), contract_call=bool(tx.get("data")))
        if "gasPrice" not in tx and "maxFeePerGas" not in tx:
            tx.update(self._fees())
        with self._lock_for(sender):
            node_nonce = self._call(lambda: self.w3.eth.get_transaction_count(sender, "pending"))
            if node_nonce < self._next_nonce.get(sender, 0):
                # The node lacks some of this account's outbox (it restarted, or this process
                # did): a new nonce past the gap would never be mined. Fill the gap first; what
                # follows the filled gap is the next nonce.
                node_nonce = self._reconcile_account(sender, node_nonce, self._empty_result())
                self._next_nonce[sender] = node_nonce
            nonce = max(node_nonce, self._next_nonce.get(sender, 0))
            for attempt in range(1, NONCE_ATTEMPTS + 1):
                tx["nonce"] = nonce
                signed = account.sign_transaction(tx)
                raw = HexBytes(signed.raw_transaction)
                try:
                    tx_hash = self._send_raw(raw)
                    break
                except (ContractReverted, ChainUnavailable):
                    raise
                except ChainError as exc:
                    tx_hash = HexBytes(signed.hash).to_0x_hex()
                    if self._node_has(tx_hash):  # these very bytes arrived (a repeated request,
                        break                    # "already known"): sent, never signed again
                    if attempt == NONCE_ATTEMPTS or not _nonce_taken(exc):
                        raise
                    taken = nonce
                    nonce = self._call(
                        lambda: self.w3.eth.get_transaction_count(sender, "pending"))
                    if nonce <= taken:  # the node calls the nonce taken and free at once
                        raise
                    log.warning("nonce %d of %s was taken by another sender; signing again "
                                "with %d", taken, sender, nonce)
            self._next_nonce[sender] = nonce + 1
            self._unsigned[tx_hash] = (account, dict(tx))
            self.outbox.add(
                OutboxEntry(
                    hash=tx_hash,
                    sender=sender,
                    nonce=nonce,
                    kind=kind,
                    raw=raw.to_0x_hex(),
                    to=tx.get("to"),
                    value=int(tx.get("value", 0)),
                    sent_at=self._clock(),
                    concerns=[to_checksum_address(a) for a in (concerns or [])],
                    genesis=self.genesis(),
                )
            )
        log.info("sent %s %s from %s (nonce %d)", kind, tx_hash, sender, nonce)
        return tx_hash

    def _node_has(self, tx_hash: str) -> bool:
        """True if the node knows the transaction (pending or mined)."""
        try:
            return self._call(lambda: self.w3.eth.get_transaction(tx_hash)) is not None
        except ChainUnavailable:
            raise
        except Exception:  # noqa: BLE001 - not found, however the node words it
            return False

    def _send_raw(self, raw: HexBytes) -> str:
        """Send signed bytes; a revert reported at submission becomes ContractReverted."""
        try:
            return HexBytes(self.w3.eth.send_raw_transaction(raw)).to_0x_hex()
        except Exception as exc:
            raise _node_failure(exc, "the node refused the transaction") from exc

    def gas_limit(self, estimate: int, contract_call: bool = True) -> int:
        """The gas limit a transaction of that estimate is sent with (see GAS_HEADROOM; plain
        Ether carries no code whose storage could change, so it gets no headroom)."""
        return int(estimate * self._gas_margin) + (GAS_HEADROOM if contract_call else 0)

    def estimate_gas(self, tx: dict[str, Any], block: str | None = None) -> int:
        """Estimate gas (on `block`, the node's default if None); a revert raises
        ContractReverted with the decoded custom error."""
        call = {k: v for k, v in tx.items() if k in ("from", "to", "data", "value")}
        try:
            return int(self.w3.eth.estimate_gas(call, block))
        except Exception as exc:
            raise _node_failure(exc, "gas estimation failed") from exc

    def wait(self, tx_hash: str, timeout: float = 60.0, poll: float = 0.1) -> dict[str, Any]:
        """Wait for the receipt; raise ContractReverted on a failed transaction.

        Raises ChainError if it is not mined within `timeout` seconds (it stays in the outbox
        and in the pending list).
        """
        deadline = time.monotonic() + timeout
        asked = HexBytes(tx_hash).to_0x_hex()
        while True:
            # The transaction or any replacement re-pricing made of it: whichever is mined.
            lineage = self._lineage(asked)
            mined = None
            for candidate in lineage:
                try:
                    found = self._call(
                        lambda c=candidate: self.w3.eth.get_transaction_receipt(c))
                except TransactionNotFound:
                    found = None
                if found is not None and found.get("blockNumber") is not None:
                    mined = (candidate, found)
                    break
            if mined is not None:
                break
            if time.monotonic() >= deadline:
                raise ChainError(f"transaction {tx_hash} not mined within {timeout:g} s")
            time.sleep(max(0.0, min(poll, deadline - time.monotonic())))
        current, receipt = mined
        for other in lineage:
            self.outbox.remove(other)
            self._forget(other)
        if receipt["status"] != 1:
            raise self._revert_reason(current, receipt)
        return dict(receipt)

    def _lineage(self, tx_hash: str) -> list[str]:
        """`tx_hash` and the replacements re-pricing made of it, oldest first."""
        chain = [HexBytes(tx_hash).to_0x_hex()]
        while chain[-1] in self._replaced_by and len(chain) < 100:
            chain.append(self._replaced_by[chain[-1]])
        return chain

    def current_hash(self, tx_hash: str) -> str:
        """The hash that now stands for `tx_hash` (its latest replacement, or itself)."""
        return self._lineage(tx_hash)[-1]

    def _forget(self, tx_hash: str) -> None:
        self._unsigned.pop(tx_hash, None)
        self._underpriced_since.pop(tx_hash, None)

    def forget_mined(self, sender: str | None = None) -> list[OutboxEntry]:
        """Take the transactions (of `sender`, or all) that have a receipt off the outbox;
        returns them.

        Transactions sent without waiting (a page's bid, the finalizer's) would otherwise stay
        in the outbox until the next start, and their accounts would look busy on every block.
        """
        gone: list[OutboxEntry] = []
        for entry in self.outbox.entries():
            if sender is not None and entry.sender != sender:
                continue
            try:
                receipt = self._call(
                    lambda e=entry: self.w3.eth.get_transaction_receipt(e.hash))
            except (TransactionNotFound, Web3Exception):
                continue  # not mined (yet)
            if receipt is not None and receipt.get("blockNumber") is not None:
                self.outbox.remove(entry.hash)
                self._forget(entry.hash)
                gone.append(entry)
        return gone

    def reprice_stuck(self, after_blocks: int = REPRICE_AFTER_BLOCKS) -> list[tuple[str, str]]:
        """Re-sign, same nonce and higher fees, transactions underpriced for `after_blocks` blocks.

        Underpriced: the fee cap no longer covers the latest base fee plus the tip. The
        replacement pays FEE_BUMP times the old tip and cap, and at least twice the base fee
        plus the tip; it takes the old one's place in the outbox (crash-safe: it is on disk
        first). Only transactions signed by this process can be re-priced (the keys stay in
        memory). Returns (old hash, new hash) pairs.
        """
        with self._reprice_lock:
            latest = self._call(lambda: self.w3.eth.get_block("latest"))
            base = latest.get("baseFeePerGas")
            if base is None:
                return []
            number = int(latest["number"])
            done: list[tuple[str, str]] = []
            for entry in self.outbox.entries():
                known = self._unsigned.get(entry.hash)
                if known is None:
                    continue
                account, tx = known
                cap, tip = tx.get("maxFeePerGas"), tx.get("maxPriorityFeePerGas")
                if cap is None or tip is None or cap >= base + tip:
                    self._underpriced_since.pop(entry.hash, None)
                    continue
                since = self._underpriced_since.setdefault(entry.hash, number)
                if number - since < after_blocks:
                    continue
                new_tip = max(int(tip * FEE_BUMP) + 1, DEFAULT_PRIORITY_FEE)
                new_cap = max(int(cap * FEE_BUMP) + 1, 2 * base + new_tip)
                replacement = {**tx, "maxPriorityFeePerGas": new_tip, "maxFeePerGas": new_cap}
                raw = HexBytes(account.sign_transaction(replacement).raw_transaction)
                try:
                    new_hash = self._send_raw(raw)
                except ChainError as exc:
                    log.warning("outbox: could not re-price %s: %s", entry.hash, exc)
                    continue
                self.outbox.add(OutboxEntry(**{**asdict(entry), "hash": new_hash,
                                               "raw": raw.to_0x_hex(), "sent_at": self._clock()}))
                self.outbox.remove(entry.hash)
                self._replaced_by[entry.hash] = new_hash
                self._unsigned[new_hash] = (account, replacement)
                self._forget(entry.hash)
                log.info("outbox: re-priced %s %s as %s (fee cap %d -> %d wei, base fee %d)",
                         entry.kind, entry.hash, new_hash, cap, new_cap, base)
                done.append((entry.hash, new_hash))
            return done

    def _revert_reason(self, tx_hash: str, receipt: dict[str, Any]) -> ContractReverted:
        """Replay a failed transaction as a call at its block to recover the custom error.

        A replay that passes with the node's own gas allowance but not with the transaction's
        limit means the limit ran out (in a nested call, the caller then reverts with no data).
        """
        try:
            tx = self.w3.eth.get_transaction(tx_hash)
            out_of_gas = ContractReverted("OutOfGas", (tx["gas"],), (
                f"transaction {tx_hash} ran out of gas (its limit of {tx['gas']:,} was not "
                "enough when it was mined)"))
            if receipt["gasUsed"] >= tx["gas"]:
                return out_of_gas
            call = {"from": tx["from"], "to": tx["to"], "data": tx["input"], "value": tx["value"]}
            # At the failed transaction's own block: a transaction before it in the same block
            # (a rival's higher bid) is often the reason, and the failed one changed nothing.
            self.w3.eth.call(call, receipt["blockNumber"])
            try:
                self.w3.eth.call({**call, "gas": tx["gas"]}, receipt["blockNumber"])
            except Exception as exc:  # noqa: BLE001 - a node's revert types differ
                if is_connection_error(exc):
                    raise
                return out_of_gas
        except Exception as exc:  # noqa: BLE001 - whatever the node says, we want its data
            data = revert_data_from_exception(exc)
            if data is not None:
                return decode_revert(data)
        return ContractReverted("Reverted", (), f"transaction {tx_hash} reverted")

    def transact(
        self,
        account: LocalAccount,
        tx: dict[str, Any],
        kind: str,
        timeout: float = 60.0,
        concerns: list[str] | None = None,
    ) -> dict[str, Any]:
        """Send and wait: the receipt of a successful transaction."""
        return self.wait(self.send(account, tx, kind, concerns), timeout)

    def reconcile(self, sender: str | None = None) -> dict[str, list[str]]:
        """Check the outbox against the node: forget mined transactions, re-send lost ones.

        Lost: the node knows nothing of it (it restarted without its pending pool, or from an
        older state). Per account, in nonce order from the node's next nonce: a lost
        transaction at that nonce is sent again (the same signed bytes); one whose nonce the
        chain has used for another transaction is dropped; one above a nonce nobody holds any
        more (mined, then undone by an older state) can never be mined and is dropped too; a
        transaction signed for another chain (another genesis block) is never sent there. Every
        drop is logged. `sender` limits the check to one account. Called before a send that
        finds the node behind this process's nonces, and every few blocks by the live hub.
        Returns {"mined": [...], "resent": [...], "dropped": [...]}.
        """
        result = self._empty_result()
        accounts = {entry.sender for entry in self.outbox.entries()
                    if sender is None or entry.sender == sender}
        for account in sorted(accounts):
            pending = self._call(
                lambda a=account: self.w3.eth.get_transaction_count(a, "pending"))
            self._reconcile_account(account, pending, result)
        return result

    @staticmethod
    def _empty_result() -> dict[str, list[str]]:
        return {"mined": [], "resent": [], "dropped": []}

    def _reconcile_account(self, account: str, pending: int,
                           result: dict[str, list[str]]) -> int:
        """Reconcile `account`'s outbox from `pending`, the node's next nonce for it (see
        `reconcile`); the account's next nonce once the lost ones are sent again."""
        genesis = self.genesis()
        expected = pending
        entries = [e for e in self.outbox.entries() if e.sender == account]
        for entry in sorted(entries, key=lambda e: e.nonce):
            if entry.genesis is not None and entry.genesis != genesis:
                self._drop(entry, DROPPED_OTHER_CHAIN, result)
                continue
            try:
                known = self._call(lambda e=entry: self.w3.eth.get_transaction(e.hash))
            except TransactionNotFound:
                known = None
            if known is not None and known.get("blockNumber") is not None:
                self.outbox.remove(entry.hash)  # mined: its nonce is behind `pending`
                self._forget(entry.hash)
                result["mined"].append(entry.hash)
                continue
            if known is not None:  # pending in the node
                if entry.nonce == expected:
                    expected += 1
                continue
            if entry.nonce < expected:
                self._drop(entry, DROPPED_NONCE_USED, result)
                continue
            if entry.nonce > expected:
                self._drop(entry, DROPPED_BEHIND_GAP, result)
                continue
            try:
                self._send_raw(HexBytes(entry.raw))
            except ChainUnavailable:
                raise
            except ChainError as exc:  # e.g. "already known": another thread was quicker
                log.warning("outbox: could not re-send %s: %s", entry.hash, exc)
                continue
            expected += 1
            log.info("outbox: re-sent %s %s", entry.kind, entry.hash)
            result["resent"].append(entry.hash)
        return expected

    def _drop(self, entry: OutboxEntry, why: str, result: dict[str, list[str]]) -> None:
        log.warning("outbox: dropping %s %s (nonce %d of %s): %s", entry.kind, entry.hash,
                    entry.nonce, entry.sender, _DROP_LOG[why])
        self.outbox.remove(entry.hash)
        self._forget(entry.hash)
        with self._dropped_lock:
            self._dropped[entry.hash] = why
            while len(self._dropped) > REMEMBER_DROPPED:
                del self._dropped[next(iter(self._dropped))]
        result["dropped"].append(entry.hash)

    def dropped(self, tx_hash: str) -> str | None:
        """Why the outbox gave up `tx_hash` (or the replacement standing for it), a DROPPED_*
        value; None if it did not (as far as this process remembers)."""
        with self._dropped_lock:
            return next((self._dropped[c] for c in self._lineage(tx_hash) if c in self._dropped),
                        None)
