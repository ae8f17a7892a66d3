"""The marketplace: listings, trades and cleared prices; sell, bid, close, finalize.

Every action checks what a person can get wrong (amounts, the lot's state, the deadline by the
chain's clock, their balances) before anything is signed, so the common mistakes come back as
sentences and nothing is sent. What slips through (a race with another bidder) is caught by the
pre-flight gas estimate, whose `ContractReverted` becomes a sentence too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from eth_account.signers.local import LocalAccount

from dapp.chain.client import ChainClient, Lot, LotStatus
from dapp.chain.listener import ChainEvent
from dapp.errors import ChainError, ChainUnavailable, ContractReverted, WalletError
from dapp.services import messages, rules
from dapp.services.amounts import (
    format_ether,
    format_kwh,
    format_time,
    parse_duration,
    parse_energy,
    parse_lot_id,
    parse_price,
    short_address,
)
from dapp.services.errors import ActionRefused, InvalidInput
from dapp.services.messages import as_user_error, chain_error_sentence
from dapp.services.meters import LOAD, SUPPLY, MeterBoard

log = logging.getLogger(__name__)

# Only the newest lots are shown; older ones are history.
MAX_LOTS = 500
MAX_CLEARED = 50


def _eq(a: str | None, b: str | None) -> bool:
    """Addresses equal ignoring case."""
    return bool(a) and bool(b) and str(a).lower() == str(b).lower()


class MarketService:
    """Reads and actions of the marketplace, without Flask."""

    def __init__(
        self,
        client: ChainClient,
        meters: MeterBoard,
        names: Callable[[str | None], str | None] = lambda address: None,
    ) -> None:
        self.client = client
        self.meters = meters
        self.names = names
        self._lock = threading.Lock()
        self._params: dict[str, int] | None = None
        self._final: dict[int, Lot] = {}  # closed/expired lots never change again
        self._start_prices: dict[int, int] = {}

    # -- reads ----------------------------------------------------------------------------------

    def parameters(self) -> dict[str, int]:
        """The market's deployment parameters (read once)."""
        if self._params is None:
            self._params = self.client.market_parameters()
        return self._params

    def on_event(self, event: ChainEvent) -> None:
        """Listener subscriber: remember each listing's start price."""
        if event.contract == "EnergyMarket" and event.name == "Listed":
            with self._lock:
                self._start_prices[int(event.args["listingId"])] = int(
                    event.args["startPricePerKWh"]
                )

    def lots(self) -> list[Lot]:
        """The newest lots, fresh from the chain except those that can no longer change."""
        count = self.client.lot_count()
        out = []
        for lot_id in range(max(1, count - MAX_LOTS + 1), count + 1):
            with self._lock:
                lot = self._final.get(lot_id)
            if lot is None:
                lot = self.client.lot(lot_id)
                if lot.status in (LotStatus.CLOSED, LotStatus.EXPIRED):
                    with self._lock:
                        self._final[lot_id] = lot
            out.append(lot)
        return out

    def start_price(self, lot: Lot) -> int | None:
        """The listing's start price: seen before its first bid, from the event, or looked up."""
        with self._lock:
            known = self._start_prices.get(lot.id)
        if known is not None:
            return known
        if lot.buyer is None and lot.status == LotStatus.LISTED:
            price = lot.price_per_kwh
        else:
            try:
                found = self.client.listing_start_price(lot.id)
            except Exception as exc:  # noqa: BLE001 - a missing start price is shown as "—"
                log.warning("market: start price of lot %d unknown: %s", lot.id, exc)
                return None
            if found is None:
                return None
            price = found
        with self._lock:
            self._start_prices[lot.id] = price
        return price

    def snapshot(self) -> dict[str, Any]:
        """Open listings, open trades and cleared prices, as JSON-ready data."""
        try:
            now = self.client.latest_timestamp()
            params = self.parameters()
            lots = self.lots()
            listings = [self._listing(lot, now, params) for lot in lots
                        if lot.status == LotStatus.LISTED]
            states = self.meters.states()
            open_lots = {lot.id: lot for lot in lots if lot.status == LotStatus.OPEN}
            trades = [self._trade(lot, now, params, states, self._oldest_activity(lot, open_lots))
                      for lot in open_lots.values()]
        except ChainError as exc:
            return {"available": False, "message": chain_error_sentence(exc),
                    "listings": [], "trades": [], "cleared": [], "chain_time": None,
                    "server_time": time.time()}
        cleared = sorted(
            (lot for lot in lots if lot.status in (LotStatus.OPEN, LotStatus.CLOSED)),
            key=lambda lot: (lot.deadline, lot.id),
        )[-MAX_CLEARED:]
        return {
            "available": True,
            "message": "",
            "chain_time": now,
            "server_time": time.time(),
            "parameters": {
                "min_duration": params["min_duration"],
                "max_duration": params["max_duration"],
                "min_increment": format_ether(params["min_increment_per_kwh"]),
                "delivery_timeout": params["delivery_timeout"],
            },
            "listings": listings,
            "trades": trades,
            "cleared": [
                {"id": lot.id, "time": lot.deadline, "price": format_ether(lot.price_per_kwh),
                 "price_wei": str(lot.price_per_kwh), "energy_kwh": format_kwh(lot.energy_wh)}
                for lot in cleared
            ],
        }

    def _party(self, address: str | None) -> dict[str, Any]:
        return {"address": address, "name": self.names(address) or short_address(address)}

    def _listing(self, lot: Lot, now: int, params: dict[str, int]) -> dict[str, Any]:
        start = self.start_price(lot)
        has_bid = lot.buyer is not None
        minimum = rules.min_next_bid(lot.price_per_kwh, has_bid, params["min_increment_per_kwh"])
        return {
            "id": lot.id,
            "seller": self._party(lot.seller),
            "energy_wh": lot.energy_wh,
            "energy_kwh": format_kwh(lot.energy_wh),
            "start_price": None if start is None else format_ether(start),
            "highest_bid": format_ether(lot.price_per_kwh) if has_bid else None,
            "highest_bid_wei": str(lot.price_per_kwh) if has_bid else None,
            "bidder": self._party(lot.buyer) if has_bid else None,
            "deposit": format_ether(lot.deposit_wei) if has_bid else None,
            "min_bid": format_ether(minimum),
            "min_bid_wei": str(minimum),
            "deadline": lot.deadline,
            "deadline_text": format_time(lot.deadline),
            "ends_in": max(0, lot.deadline - now),
            "ended": rules.auction_ended(now, lot.deadline),
        }

    def _oldest_activity(self, lot: Lot, known: dict[int, Lot] | None = None) -> int | None:
        """The last delivery to the buyer's oldest open trade, if `lot` is queued behind it."""
        oldest_id = self.client.oldest_open_trade(lot.buyer or "")
        if oldest_id in (0, lot.id):
            return None
        oldest = (known or {}).get(oldest_id) or self.client.lot(oldest_id)
        return oldest.last_delivery_at

    def _trade(self, lot: Lot, now: int, params: dict[str, int], states: list,
               oldest_activity: int | None) -> dict[str, Any]:
        timeout_at = rules.seller_close_at(lot.last_delivery_at, params["delivery_timeout"],
                                           oldest_activity)
        return {
            "id": lot.id,
            "seller": self._party(lot.seller),
            "buyer": self._party(lot.buyer),
            "energy_wh": lot.energy_wh,
            "energy_kwh": format_kwh(lot.energy_wh),
            "price": format_ether(lot.price_per_kwh),
            "price_wei": str(lot.price_per_kwh),
            "delivered_kwh": format_kwh(lot.delivered_wh),
            "delivered_wh": lot.delivered_wh,
            "paid": format_ether(lot.paid_wei),
            "paid_wei": str(lot.paid_wei),
            "deposit": format_ether(lot.deposit_wei),
            "relay": self.meters.relay(lot.buyer, LOAD, states),
            "seller_relay": self.meters.relay(lot.seller, SUPPLY, states),
            "seller_can_close_at": timeout_at,
            "seller_can_close": rules.seller_can_close(now, timeout_at),
        }

    def due(self) -> list[Lot]:
        """Listings whose deadline has passed by the latest block's clock (ready to finalize)."""
        now = self.client.latest_timestamp()
        return [lot for lot in self.lots()
                if lot.status == LotStatus.LISTED and rules.auction_ended(now, lot.deadline)]

    # -- actions --------------------------------------------------------------------------------

    def sell(self, account: LocalAccount, energy: object, price: object,
             price_unit: object = "ether", duration: object = None,
             duration_unit: object = "minutes") -> dict[str, str]:
        """List energy tokens for auction."""
        wh = parse_energy(energy)
        wei = parse_price(price, price_unit)
        seconds = parse_duration(duration, duration_unit)
        params = self._read(self.parameters)
        low, high = params["min_duration"], params["max_duration"]
        if not rules.duration_allowed(seconds, low, high):
            raise InvalidInput(messages.duration_out_of_range(seconds, low, high))
        balance = self._read(lambda: self.client.token_balance(account.address))
        if wh > balance:
            raise ActionRefused(messages.not_enough_tokens(balance, wh))
        tx_hash = self._act(lambda: self.client.sell(account, wh, wei, seconds))
        return {"tx_hash": tx_hash, "message": messages.listing_sent(wh, wei, seconds)}

    def _open_lot(self, lot_id: int) -> Lot:
        lot = self._read(lambda: self.client.lot(lot_id))
        if lot.status == LotStatus.NONE:
            raise InvalidInput(messages.no_such_listing(lot_id))
        return lot

    def bid(self, account: LocalAccount, lot_id: object, price: object,
            price_unit: object = "ether") -> dict[str, str]:
        """Bid on a listing, escrowing the whole lot's price."""
        lot_id = parse_lot_id(lot_id)
        wei = parse_price(price, price_unit)
        lot = self._open_lot(lot_id)
        if lot.status != LotStatus.LISTED:
            raise ActionRefused(messages.listing_closed_for_bids(lot_id))
        if _eq(lot.seller, account.address):
            raise ActionRefused(messages.SELLER_CANNOT_BID)
        now = self._read(self.client.latest_timestamp)
        if rules.auction_ended(now, lot.deadline):
            raise ActionRefused(messages.auction_ended(lot_id))
        params = self._read(self.parameters)
        minimum = rules.min_next_bid(lot.price_per_kwh, lot.buyer is not None,
                                     params["min_increment_per_kwh"])
        if wei < minimum:
            raise ActionRefused(messages.bid_below_minimum(lot_id, minimum))
        deposit = rules.deposit_wei(lot.energy_wh, wei)
        balance = self._read(lambda: self.client.ether_balance(account.address))
        if deposit >= balance:
            raise ActionRefused(messages.deposit_exceeds_balance(deposit, lot.energy_wh, balance))
        tx_hash = self._act(lambda: self.client.bid(account, lot_id, wei))
        return {"tx_hash": tx_hash, "message": messages.bid_sent(wei, lot_id, deposit)}

    def close(self, account: LocalAccount, trade_id: object) -> dict[str, str]:
        """Close an open trade: the buyer any time, the seller after the delivery timeout."""
        trade_id = parse_lot_id(trade_id)
        lot = self._open_lot(trade_id)
        if lot.status != LotStatus.OPEN:
            raise ActionRefused(messages.trade_not_open(trade_id))
        if not (_eq(account.address, lot.buyer) or _eq(account.address, lot.seller)):
            raise ActionRefused(messages.not_trade_party(trade_id))
        if not _eq(account.address, lot.buyer):
            timeout_at = rules.seller_close_at(
                lot.last_delivery_at, self._read(self.parameters)["delivery_timeout"],
                self._read(lambda: self._oldest_activity(lot)),
            )
            if not rules.seller_can_close(self._read(self.client.latest_timestamp), timeout_at):
                raise ActionRefused(messages.seller_close_too_early(trade_id, timeout_at))
        tx_hash = self._act(lambda: self.client.close_connection(account, trade_id))
        return {"tx_hash": tx_hash, "message": messages.close_sent(trade_id)}

    def finalize(self, account: LocalAccount, lot_id: object) -> dict[str, str]:
        """End an auction whose deadline has passed (anyone may)."""
        lot_id = parse_lot_id(lot_id)
        lot = self._open_lot(lot_id)
        if lot.status != LotStatus.LISTED:
            raise ActionRefused(messages.already_finalized(lot_id))
        if not rules.auction_ended(self._read(self.client.latest_timestamp), lot.deadline):
            raise ActionRefused(messages.auction_not_ended(lot_id, lot.deadline))
        tx_hash = self._act(lambda: self.client.finalize(account, lot_id))
        return {"tx_hash": tx_hash, "message": messages.finalize_sent(lot_id)}

    @staticmethod
    def _read(read: Callable[[], Any]) -> Any:
        """A chain read whose failure becomes a sentence."""
        try:
            return read()
        except ChainError as exc:
            raise as_user_error(exc) from None

    @staticmethod
    def _act(send: Callable[[], str]) -> str:
        """A chain action whose failure becomes a sentence."""
        try:
            return send()
        except (ContractReverted, ChainError, WalletError) as exc:
            raise as_user_error(exc) from None


class AutoFinalizer:
    """Finalizes listings whose deadline has passed, signed by the server's own account.

    Runs on each new block. Several servers may share a chain: the losers' pre-flight estimates
    revert with MarketListingNotOpen (or their mined transactions fail), which is expected and
    swallowed; nobody sees an error. Without an account it does nothing: users' keys are never
    used behind their backs (they get a Finalize button instead).
    """

    def __init__(self, market: MarketService, account: LocalAccount | None, *,
                 retry_after: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.market = market
        self.account = account
        self.retry_after = retry_after
        self._clock = clock
        self._sent: dict[int, float] = {}  # lot id -> when our finalize was sent

    @property
    def enabled(self) -> bool:
        """Whether a server account is configured."""
        return self.account is not None

    def run_once(self) -> list[str]:
        """Send finalize for every due listing not already in flight; returns the hashes."""
        if self.account is None:
            return []
        try:
            due = self.market.due()
        except ChainError as exc:
            log.debug("auto-finalize: chain not readable: %s", exc)
            return []
        now = self._clock()
        due_ids = {lot.id for lot in due}
        self._sent = {i: t for i, t in self._sent.items() if i in due_ids}
        sent = []
        for lot in due:
            if lot.id in self._sent and now - self._sent[lot.id] < self.retry_after:
                continue  # our transaction is on its way
            try:
                tx_hash = self.market.client.finalize(self.account, lot.id)
            except ContractReverted as exc:
                if exc.name in ("MarketListingNotOpen", "MarketAuctionNotEnded"):
                    # Another server was faster, or our node's clock is behind: not an error.
                    log.debug("auto-finalize: lot %d: %s", lot.id, exc.name)
                else:
                    log.warning("auto-finalize: lot %d refused: %s", lot.id, exc)
                continue
            except ChainUnavailable as exc:
                log.debug("auto-finalize: chain unavailable: %s", exc)
                return sent
            except ChainError as exc:
                log.warning("auto-finalize: lot %d not sent: %s", lot.id, exc)
                continue
            self._sent[lot.id] = now
            sent.append(tx_hash)
            log.info("auto-finalize: finalizing lot %d (%s)", lot.id, tx_hash)
        return sent
