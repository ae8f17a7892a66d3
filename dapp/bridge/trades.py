"""Which relays the chain wants closed, and only those: the market's rules for relays.

* A **load** meter's relay (the buyer's import) is closed while its owner has a delivering
  trade (the oldest of its open trades: the only one its readings settle) that the buyer has
  not asked to close.
* A **supply** meter's relay (the seller's export) is closed only while its owner is the seller
  of a trade that its buyer's readings are settling right now: the buyer's delivering trade, not
  asked to close, and not *stalled* (the buyer's load meter silent for the market's stall
  timeout of chain time). Sellers of trades queued behind the buyer's delivering one do not
  export; a stalled trade's seller stops exporting at once, by itself.
* A **halted chain** (no new block for `halt_after` seconds) opens every relay; when blocks
  return, the book is read again and the relays follow it.

The book is read per owner from the market's own indexes (`lotsOfSeller`, `activeTradeOf`), at
start, after every reconnect and for every event that names an owner of ours or the load meter
of one of our trades' buyers; an event only says *which* owner to re-read, so a replayed or
out-of-order event cannot set a relay against the chain. Chain time comes from the head, read
by `on_head`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from eth_utils import to_checksum_address

from dapp.chain.client import ChainClient, LotStatus
from dapp.chain.listener import ChainEvent
from hardware.protocol import LOAD

log = logging.getLogger(__name__)

# Events that may change which relays the chain wants, and the arguments naming the accounts.
TRADE_EVENTS = {
    "TradeOpened": ("seller", "buyer"),
    "ConnectionClosed": ("seller", "buyer"),
    "CloseRequested": ("buyer",),
    "StallCharged": (),
    "DeliverySettled": (),
}


@dataclass(frozen=True)
class SellerTrade:
    """One open trade of an owner of ours, as its seller."""

    trade_id: int
    buyer: str
    delivering: bool  # the buyer's active trade (its readings settle this one)
    closing: bool  # the buyer asked to close
    stalls_at: int  # chain time from which the buyer's meter counts as silent


@dataclass(frozen=True)
class BuyerTrade:
    """An owner's delivering trade, as its buyer."""

    trade_id: int
    closing: bool


class TradeBook:
    """The relays the chain wants, per owner, as the chain last said."""

    def __init__(self, chain: ChainClient, *, owners: Callable[[], Iterable[str]],
                 on_change: Callable[[], None] | None = None, halt_after: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.chain = chain
        self.owners = owners
        self.on_change = on_change or (lambda: None)
        self.halt_after = halt_after
        self.clock = clock
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._selling: dict[str, list[SellerTrade]] = {}
        self._buying: dict[str, BuyerTrade | None] = {}
        self._load_meters: dict[str, str] = {}  # load meter -> buyer, for our trades' buyers
        self._known = False
        self._head: tuple[int, int] | None = None  # latest block (number, timestamp)
        self._head_seen: float | None = None  # our clock when the head last moved

    @property
    def known(self) -> bool:
        """Whether the book was read from the chain at least once."""
        with self._lock:
            return self._known

    # ------------------------------------------------------------------ chain time

    def on_head(self, number: int, timestamp: int) -> None:
        """The chain's head as last read: a new block moves chain time (and ends a halt)."""
        with self._lock:
            halted = self._halted_locked()
            moved = self._head is None or number > self._head[0]
            if moved:
                self._head = (number, timestamp)
                self._head_seen = self.clock()
        if moved and halted:
            log.warning("bridge: blocks again (#%d); relays follow the chain", number)
            self.resync()
        elif moved:
            self.on_change()  # chain time moved: a trade may have stalled

    def halted(self) -> bool:
        """No new block for `halt_after` seconds (or none seen yet)."""
        with self._lock:
            return self._halted_locked()

    def _halted_locked(self) -> bool:
        return self._head_seen is None or self.clock() - self._head_seen > self.halt_after

    # ------------------------------------------------------------------ reading the book

    def resync(self) -> None:
        """Re-read every owner's trades from the chain (ChainError if it does not answer)."""
        owners = sorted(set(self.owners()))
        with self._sync_lock:
            read = {owner: self._read(owner) for owner in owners}
            with self._lock:
                self._selling = {o: r[0] for o, r in read.items()}
                self._buying = {o: r[1] for o, r in read.items()}
                self._known = True
        log.info("bridge: trades read for %d owner(s)", len(owners))
        self.on_change()

    def refresh(self, owner: str) -> None:
        """Re-read one owner's trades."""
        with self._sync_lock:
            selling, buying = self._read(owner)
            with self._lock:
                self._selling[owner], self._buying[owner] = selling, buying
        self.on_change()

    def _read(self, owner: str) -> tuple[list[SellerTrade], BuyerTrade | None]:
        chain = self.chain
        selling = []
        for trade_id in chain.lots_of_seller(owner):
            lot = chain.lot(trade_id)
            if lot.status is not LotStatus.OPEN or lot.buyer is None:
                continue
            buyer = to_checksum_address(lot.buyer)
            selling.append(SellerTrade(trade_id, buyer, chain.active_trade_of(buyer) == trade_id,
                                       lot.closing, chain.stalls_at(trade_id)))
            meter = chain.load_meter_of(buyer)
            if meter is not None:
                with self._lock:
                    self._load_meters[meter] = buyer
        active = chain.active_trade_of(owner)
        buying = BuyerTrade(active, chain.lot(active).closing) if active else None
        return selling, buying

    def concerns(self, event: ChainEvent, owners: set[str]) -> set[str]:
        """The owners of ours to re-read for `event` (empty: it changes none of our relays)."""
        args = event.args
        if event.name == "ReadingRecorded":  # a buyer's meter spoke: its trades' stall times
            with self._lock:
                buyer = self._load_meters.get(to_checksum_address(args["meter"]))
                if buyer is None:
                    return set()
                return {o for o, trades in self._selling.items()
                        if any(t.buyer == buyer for t in trades)}
        if event.name not in TRADE_EVENTS:
            return set()
        named = {to_checksum_address(args[k]) for k in TRADE_EVENTS[event.name] if k in args}
        if "tradeId" in args:  # the seller and buyer of a trade we know of
            trade_id = int(args["tradeId"])
            with self._lock:
                for owner, trades in self._selling.items():
                    if any(t.trade_id == trade_id for t in trades):
                        named.add(owner)
                for owner, bought in self._buying.items():
                    if bought is not None and bought.trade_id == trade_id:
                        named.add(owner)
        return named & owners

    # ------------------------------------------------------------------ the rule

    def closing(self, owner: str | None) -> bool:
        """Whether `owner` asked to close its delivering trade (its next reading settles it)."""
        with self._lock:
            bought = self._buying.get(owner) if owner else None
            return bought is not None and bought.closing

    def relay_wanted(self, kind: str | None, owner: str | None) -> bool:
        """Whether the chain wants the relay of `owner`'s `kind` meter closed now."""
        if kind is None or owner is None:
            return False
        with self._lock:
            if not self._known or self._halted_locked() or self._head is None:
                return False
            now = self._head[1]
            if kind == LOAD:
                bought = self._buying.get(owner)
                return bought is not None and not bought.closing
            return any(t.delivering and not t.closing and now < t.stalls_at
                       for t in self._selling.get(owner, ()))
