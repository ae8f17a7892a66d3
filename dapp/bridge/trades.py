"""Which relays the chain wants closed: the open trades of the bridge's owners.

A supply meter's relay is closed while its owner is the seller of an open trade; a load meter's
relay while its owner is the buyer of one. The book is read from the chain at start and after
every reconnect, and kept up to date from `TradeOpened` / `ConnectionClosed` events by re-reading
the trade concerned, so a replayed or out-of-order event cannot set a relay against the chain.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from eth_utils import to_checksum_address

from dapp.chain.client import ChainClient, LotStatus
from dapp.chain.listener import ChainEvent

log = logging.getLogger(__name__)

SELLER, BUYER = 0, 1


class TradeBook:
    """The open trades (id -> (seller, buyer)) as the chain last said."""

    def __init__(self, chain: ChainClient, *, scan_lots: int = 1000,
                 on_change: Callable[[], None] | None = None) -> None:
        self.chain = chain
        self.scan_lots = scan_lots
        self.on_change = on_change or (lambda: None)
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()  # one chain read of trades at a time
        self._trades: dict[int, tuple[str, str]] = {}
        self._known = False

    @property
    def known(self) -> bool:
        """Whether the book was read from the chain at least once."""
        with self._lock:
            return self._known

    def resync(self) -> None:
        """Re-read every open trade from the chain (ChainError if it does not answer)."""
        with self._sync_lock:
            lots = self.chain.lots({LotStatus.OPEN}, last=self.scan_lots)
            trades = {lot.id: (to_checksum_address(lot.seller), to_checksum_address(lot.buyer))
                      for lot in lots if lot.buyer is not None}
            with self._lock:
                self._trades = trades
                self._known = True
        log.info("bridge: %d open trade(s) on chain", len(trades))
        self.on_change()

    def refresh(self, trade_id: int) -> None:
        """Re-read one trade and record whether it is open."""
        with self._sync_lock:
            lot = self.chain.lot(trade_id)
            with self._lock:
                if lot.status is LotStatus.OPEN and lot.buyer is not None:
                    self._trades[trade_id] = (to_checksum_address(lot.seller),
                                              to_checksum_address(lot.buyer))
                else:
                    self._trades.pop(trade_id, None)
        log.info("bridge: trade %d is %s", trade_id, lot.status.name.lower())
        self.on_change()

    def concerns(self, event: ChainEvent, owners: set[str]) -> int | None:
        """The trade to re-read for `event`, if it may change a relay of `owners`."""
        args = event.args
        if event.name == "TradeOpened":
            parties = {to_checksum_address(args["seller"]), to_checksum_address(args["buyer"])}
            return int(args["tradeId"]) if parties & owners else None
        if event.name == "ConnectionClosed":
            trade_id = int(args["tradeId"])
            with self._lock:
                return trade_id if trade_id in self._trades else None
        return None

    def relay_wanted(self, kind: str | None, owner: str | None) -> bool:
        """Whether the chain wants the relay of `owner`'s `kind` meter closed."""
        if kind is None or owner is None:
            return False
        role = SELLER if kind == "supply" else BUYER
        with self._lock:
            return self._known and any(p[role] == owner for p in self._trades.values())
