"""The one event listener: reads the three contracts' events and hands them to subscribers.

Modelled on web3.py's event-scanner recipe: a block cursor persisted in a JSON file, one
`eth_getLogs` per block window (filtered on the three contract addresses), a re-scan of recent
blocks to survive reorgs, and de-duplication on (transaction hash, log index).

How it keeps its promises
-------------------------
* **Cursor.** `cursor` is the last block whose events were all handed to every subscriber. The
  state file (written atomically: temp file, fsync, `os.replace`) holds the cursor, the hashes of
  the last `rescan` processed blocks and the (tx hash, log index) keys delivered in those blocks.
  It is saved after every window, so a new listener on the same file (a server restart) goes on
  where the old one stopped: nothing is lost and nothing is delivered twice.
* **Crash guarantee.** Everything the state file records is never delivered again. If the process
  dies *inside* a window (after some of its events reached the subscribers, before that window's
  save), the next listener delivers that window's events again: at-least-once for at most one
  window. Subscribers should therefore be idempotent (relay commands are; pushes to browsers are
  harmless). An exception from a subscriber is logged and does not stop delivery to the others.
* **Reorgs.** Each poll compares the stored hash of the cursor block with the node's (one call:
  a block hash commits to all its ancestors). On a mismatch it walks down the stored hashes to
  the highest block still on the canonical chain (the fork point), rewinds the cursor there and
  scans again; events whose key was already delivered are skipped, events of the new canonical
  blocks are delivered. Events of abandoned blocks are not retracted. A fork deeper than the
  stored window cannot be located: the listener logs an error and re-scans from the oldest
  stored block (events in older replaced blocks may be missed).
* **Waking.** `run` sleeps until the next block when given a `HeadFeed` (new heads by
  subscription, or a short poll), so a block's events are delivered right after it reaches the
  node; the fixed `interval` is then only the longest wait.
* **Node restarts.** Connection failures raise `ChainUnavailable` from `poll_once`; `run` logs
  them and retries with back-off. After the node comes back the listener checks again that it
  is the same chain, then continues from its cursor (a node that lost recent blocks looks like a
  reorg and is handled as one).
* **Chain replaced.** If the node's genesis hash (or chain id) differs from the one recorded in
  the state file, the chain was replaced entirely (e.g. a fresh dev node): the listener logs a
  warning saying so, forgets its cursor, hashes and keys, and starts again at the deployment
  block (or `start_block`). Events of the old chain are not retracted, and the contracts must
  exist at the same addresses on the new chain (redeploy or rediscover them; otherwise nothing
  arrives). A state file written for other contract addresses is reset the same way.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils import event_abi_to_log_topic, to_checksum_address, to_hex
from web3 import Web3
from web3.exceptions import BlockNotFound

from dapp import atomic
from dapp.chain.contracts import CONTRACT_NAMES, load_artifact
from dapp.chain.deploy import Deployment
from dapp.chain.failures import translated
from dapp.chain.transports import HeadFeed
from dapp.errors import ChainUnavailable

log = logging.getLogger(__name__)

STATE_VERSION = 1
MAX_BACKOFF_SECONDS = 30.0

@dataclass(frozen=True)
class ChainEvent:
    """One decoded contract event; args are JSON-ready (checksummed addresses, 0x-hex bytes)."""

    contract: str
    name: str
    args: dict
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int


Subscriber = Callable[[ChainEvent], None]


def _plain(value: Any) -> Any:
    """Turn decoded ABI values into JSON-ready Python values."""
    if isinstance(value, bytes | bytearray):
        return to_hex(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _call(callback: Callable[[], None]) -> None:
    """Run a notification callback; its failure is logged, never the listener's."""
    try:
        callback()
    except Exception:
        log.exception("event listener: callback %r failed", callback)


def _hex(value: Any) -> str:
    """A hash as a lower-case 0x-hex string, whatever the provider returned."""
    return value if isinstance(value, str) else to_hex(value)


class EventListener:
    """Reads EnergyToken, MeterRegistry and EnergyMarket events and delivers them in order."""

    def __init__(
        self,
        w3: Web3,
        deployment: Deployment,
        state_path: Path,
        *,
        window: int = 200,
        rescan: int = 12,
        start_block: int | None = None,
        max_windows: int = 5,
    ) -> None:
        """Prepare the listener; touches only the state file, never the node."""
        if window < 1 or rescan < 1 or max_windows < 1:
            raise ValueError("window, rescan and max_windows must be at least 1")
        self._w3 = w3
        self._state_path = Path(state_path)
        self._window = window
        self._rescan = rescan
        self._max_windows = max_windows
        self._first_block = deployment.block if start_block is None else start_block
        addresses = (deployment.token, deployment.registry, deployment.market)
        self._contracts = {
            name: to_checksum_address(addr)
            for name, addr in zip(CONTRACT_NAMES, addresses, strict=True)
        }
        self._addresses = list(self._contracts.values())
        self._decoders = self._decoder_table()
        self._subscribers: dict[int, Subscriber] = {}
        self._subscriber_ids = itertools.count()
        self._subscribers_lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._verified = False  # chain identity checked since start / the last node failure
        self._head = -1
        # Persisted state (see _save); filled by _load_state.
        self._cursor = self._first_block - 1
        self._hashes: dict[int, str] = {}  # block number -> hash, the last `rescan` blocks
        self._delivered: dict[tuple[str, int], int] = {}  # (tx hash, log index) -> block
        self._state_genesis: str | None = None
        self._state_chain_id: int | None = None
        self._load_state()

    # -- public API ---------------------------------------------------------------------------

    @property
    def cursor(self) -> int:
        """The last block whose events were all delivered."""
        return self._cursor

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback` with every new event; returns a function that unsubscribes it."""
        with self._subscribers_lock:
            token = next(self._subscriber_ids)
            self._subscribers[token] = callback

        def unsubscribe() -> None:
            with self._subscribers_lock:
                self._subscribers.pop(token, None)

        return unsubscribe

    def poll_once(self, on_delivered: Callable[[], None] | None = None) -> list[ChainEvent]:
        """Scan up to `max_windows` windows of new blocks; return the events delivered.

        `on_delivered` is called as soon as a window's events have reached every subscriber,
        before its cursor is saved (the save's fsync need not delay what the events trigger).
        """
        with self._poll_lock:
            try:
                return self._poll(on_delivered)
            except ChainUnavailable:
                self._verified = False  # the node may come back with another chain
                raise

    def run(self, stop: threading.Event, interval: float = 1.0, *,
            heads: HeadFeed | None = None, on_poll: Callable[[], None] | None = None) -> None:
        """Poll until `stop` is set; node failures are logged and retried with back-off.

        With `heads` (a running HeadFeed) the next poll starts as soon as a newer block is
        known, `interval` being only the longest wait; without, it sleeps `interval`.
        `on_poll` is called after each successful poll (its events all delivered), and also
        as soon as a window's events are delivered, before its cursor is saved.
        """
        delay = interval
        failing = False
        while not stop.is_set():
            before = self._cursor
            try:
                self.poll_once(on_poll)
            except ChainUnavailable as exc:
                log.warning("event listener: cannot reach the Ethereum node (%s); retrying in "
                            "%.1f s", exc, delay)
            except Exception:
                log.exception("event listener: poll failed; retrying in %.1f s", delay)
            else:
                if failing:
                    log.info("event listener: node reachable again at block %d", self._head)
                failing = False
                delay = interval
                if on_poll is not None:
                    _call(on_poll)
                # Catching up (and making progress): go on at once instead of waiting.
                behind = before < self._cursor < self._head
                if behind:
                    continue
                if heads is None:
                    stop.wait(interval)
                else:
                    heads.wait(max(self._head, self._cursor), interval, stop)
                continue
            failing = True
            stop.wait(delay)
            # At least 0.2 s even for tiny intervals: a dead node must not cause a busy loop.
            delay = min(max(delay, 0.1) * 2, MAX_BACKOFF_SECONDS)

    # -- polling ------------------------------------------------------------------------------

    def _poll(self, on_delivered: Callable[[], None] | None = None) -> list[ChainEvent]:
        """One poll: identity check, reorg check, then bounded windows up to the head."""
        if not self._verified:
            self._check_identity()
        with translated():
            head = self._w3.eth.block_number
        self._head = head
        self._check_reorg(head)
        delivered: list[ChainEvent] = []
        for _ in range(self._max_windows):
            start = self._cursor + 1
            if start > head:
                break
            end = min(head, start + self._window - 1)
            scanned = self._scan(start, end)
            if scanned is None:  # the chain changed under us; the next poll rewinds
                break
            events, hashes = scanned
            delivered.extend(self._deliver(events))
            if events and on_delivered is not None:
                _call(on_delivered)
            self._commit(end, hashes)
        return delivered

    def _check_identity(self) -> None:
        """Reset the state if the node serves another chain than the state file recorded."""
        with translated():
            chain_id = self._w3.eth.chain_id
            genesis = _hex(self._w3.eth.get_block(0)["hash"])
        known = self._state_genesis
        replaced = known is not None and (known != genesis or self._state_chain_id != chain_id)
        if replaced:
            log.warning(
                "event listener: the node's chain was replaced (genesis %s, chain id %s; the "
                "state file recorded genesis %s, chain id %s): forgetting cursor %d and starting "
                "again at block %d",
                genesis,
                chain_id,
                known,
                self._state_chain_id,
                self._cursor,
                self._first_block,
            )
            self._reset()
        self._state_genesis = genesis
        self._state_chain_id = chain_id
        self._verified = True
        if replaced or known is None:
            self._save()

    def _block_hash(self, number: int) -> str | None:
        """Canonical hash of block `number`, or None if the node does not have it."""
        with translated():
            try:
                return _hex(self._w3.eth.get_block(number)["hash"])
            except BlockNotFound:
                return None

    def _check_reorg(self, head: int) -> None:
        """Rewind the cursor to the fork point if stored block hashes left the canonical chain."""
        if not self._hashes:
            return
        top = max(self._hashes)
        if top <= head and self._block_hash(top) == self._hashes[top]:
            return
        fork = None
        for number in sorted(self._hashes, reverse=True):
            if number <= head and self._block_hash(number) == self._hashes[number]:
                fork = number
                break
        if fork is None:
            # Nothing we stored survived: a replaced chain, or a fork deeper than we can see.
            self._verified = False
            self._check_identity()
            if not self._hashes:  # identity check reset the state
                return
            fork = min(min(self._hashes) - 1, head)
            log.error(
                "event listener: reorg deeper than the %d stored blocks; re-scanning from block "
                "%d, events in replaced blocks before it may be missed",
                len(self._hashes),
                fork + 1,
            )
        else:
            log.warning(
                "event listener: reorg detected; block %d is the fork point, rewinding from %d",
                fork,
                self._cursor,
            )
        self._cursor = fork
        self._hashes = {n: h for n, h in self._hashes.items() if n <= fork}
        self._save()

    def _scan(self, start: int, end: int) -> tuple[list[ChainEvent], dict[int, str]] | None:
        """Fetch and decode the logs of blocks start..end, with the hashes of its recent blocks.

        Returns None when the blocks fetched do not form one chain with what is stored (a reorg
        happened while scanning); the caller stops and the next poll's reorg check rewinds.
        """
        with translated():
            logs = self._w3.eth.get_logs(
                {"fromBlock": start, "toBlock": end, "address": self._addresses}
            )
            hashes: dict[int, str] = {}
            first = max(start, end - self._rescan + 1)
            parent = self._hashes.get(first - 1)
            for number in range(first, end + 1):
                try:
                    block = self._w3.eth.get_block(number)
                except BlockNotFound:
                    return None
                if parent is not None and _hex(block["parentHash"]) != parent:
                    log.info("event listener: block %d changed while scanning", number)
                    return None
                parent = hashes[number] = _hex(block["hash"])
        events: list[ChainEvent] = []
        seen: set[tuple[str, int]] = set()
        for entry in sorted(logs, key=lambda e: (e["blockNumber"], e["logIndex"])):
            if entry.get("removed") or entry["blockNumber"] is None:
                continue
            number = entry["blockNumber"]
            block_hash = _hex(entry["blockHash"])
            if number in hashes and hashes[number] != block_hash:
                log.info("event listener: logs of block %d are from another fork", number)
                return None
            key = (_hex(entry["transactionHash"]), entry["logIndex"])
            if key in self._delivered or key in seen:
                continue
            seen.add(key)
            event = self._decode(entry, number, block_hash, key)
            if event is not None:
                events.append(event)
        return events, hashes

    def _decode(
        self, entry: Any, number: int, block_hash: str, key: tuple[str, int]
    ) -> ChainEvent | None:
        """Decode one log by (address, topic0); None for foreign or unknown logs."""
        if not entry["topics"]:
            return None
        address = to_checksum_address(entry["address"])
        decoder = self._decoders.get((address, _hex(entry["topics"][0])))
        if decoder is None:
            log.debug("event listener: ignoring unknown log %s#%d", *key)
            return None
        contract, event = decoder
        try:
            data = event.process_log(entry)
        except Exception:  # noqa: BLE001 - malformed log data must not stop the listener
            log.warning("event listener: cannot decode log %s#%d as %s", *key, event.event_name)
            return None
        return ChainEvent(
            contract=contract,
            name=data["event"],
            args={k: _plain(v) for k, v in data["args"].items()},
            block_number=number,
            block_hash=block_hash,
            tx_hash=key[0],
            log_index=key[1],
        )

    def _decoder_table(self) -> dict[tuple[str, str], tuple[str, Any]]:
        """(address, topic0) -> (contract name, web3 event) for every non-anonymous event."""
        table: dict[tuple[str, str], tuple[str, Any]] = {}
        for name, address in self._contracts.items():
            contract = self._w3.eth.contract(address=address, abi=load_artifact(name).abi)
            for event in contract.events:
                if event.abi.get("anonymous"):
                    continue
                topic = to_hex(event_abi_to_log_topic(event.abi))
                table[(address, topic)] = (name, event())
        return table

    def _deliver(self, events: list[ChainEvent]) -> list[ChainEvent]:
        """Hand each event to every subscriber; a failing subscriber is logged and skipped."""
        for event in events:
            with self._subscribers_lock:
                subscribers = list(self._subscribers.values())
            for callback in subscribers:
                try:
                    callback(event)
                except Exception:
                    log.exception(
                        "event listener: subscriber %r failed on %s.%s (block %d)",
                        callback,
                        event.contract,
                        event.name,
                        event.block_number,
                    )
            # Recorded at once so that a retry in this process after an interruption inside
            # the window skips it; it reaches the file with the window's commit.
            self._delivered[(event.tx_hash, event.log_index)] = event.block_number
        return events

    def _commit(self, end: int, hashes: dict[int, str]) -> None:
        """Advance the cursor to `end`, keep only the re-scan window's hashes and keys, save."""
        self._cursor = end
        self._hashes.update(hashes)
        floor = end - self._rescan
        self._hashes = {n: h for n, h in self._hashes.items() if n > floor}
        self._delivered = {k: n for k, n in self._delivered.items() if n > floor}
        self._save()

    # -- state file ---------------------------------------------------------------------------

    def _reset(self) -> None:
        """Forget everything: start again at the first block."""
        self._cursor = self._first_block - 1
        self._hashes = {}
        self._delivered = {}
        self._state_genesis = None
        self._state_chain_id = None

    def _load_state(self) -> None:
        """Read the state file; a missing one starts fresh, a broken one is set aside."""
        self._reset()
        try:
            raw = self._state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        try:
            data = json.loads(raw)
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"unsupported state version {data.get('version')!r}")
            if data["contracts"] != self._contracts:
                log.warning(
                    "event listener: %s was written for other contracts; starting again at "
                    "block %d",
                    self._state_path,
                    self._first_block,
                )
                return
            cursor = int(data["cursor"])
            hashes = {int(n): str(h) for n, h in data["block_hashes"].items()}
            delivered = {(str(t), int(i)): int(n) for n, t, i in data["delivered"]}
            genesis = data["genesis_hash"]
            chain_id = data["chain_id"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = self._state_path.with_name(self._state_path.name + ".corrupt")
            log.error(
                "event listener: unreadable state file %s (%s); moved to %s, starting again at "
                "block %d",
                self._state_path,
                exc,
                aside.name,
                self._first_block,
            )
            os.replace(self._state_path, aside)
            return
        self._cursor = cursor
        self._hashes = hashes
        self._delivered = delivered
        self._state_genesis = genesis
        self._state_chain_id = chain_id

    def _save(self) -> None:
        """Write the state atomically (dapp.atomic)."""
        data = {
            "version": STATE_VERSION,
            "chain_id": self._state_chain_id,
            "genesis_hash": self._state_genesis,
            "contracts": self._contracts,
            "cursor": self._cursor,
            "block_hashes": {str(n): h for n, h in sorted(self._hashes.items())},
            "delivered": sorted([n, t, i] for (t, i), n in self._delivered.items()),
        }
        atomic.write_json(self._state_path, data, mode=0o600, separators=(",", ":"))
