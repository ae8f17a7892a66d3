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
from dapp.errors import ChainError, ChainUnavailable, ContractReverted
from dapp.services import messages, rules
from dapp.services.amounts import parse_duration, parse_energy, parse_lot_id, parse_price
from dapp.services.errors import ActionRefused, InvalidInput
from dapp.services.messages import chain_error_sentence, sentenced
from dapp.services.meters import LOAD, SUPPLY, MeterBoard
from dapp.services.units import format_ether, format_kwh, format_time, short_address

log = logging.getLogger(__name__)

MAX_CLEARED = 50  # cleared prices on the chart: the newest auctions
HISTORY_WINDOW = 500  # blocks per eth_getLogs when seeding the open lots (small: see TOOLING)


def _eq(a: str | None, b: str | None) -> bool:
    """Addresses equal ignoring case."""
    return bool(a) and bool(b) and str(a).lower() == str(b).lower()


class OpenLots:
    """Which lots are Listed or Open, found exactly (no newest-N window), and the cleared prices.

    Seeded once from the market's history (Listed, TradeOpened, ListingExpired and
    ConnectionClosed logs, scanned from the deployment block in windows of `window` blocks),
    then kept by the listener's events (`apply`). Two rules keep it exact even when an event has
    not arrived yet: lot ids are sequential, so every id above the highest one classified is new
    (`lotCount`); and each open lot is read from the chain when the board is built, so one that
    ended is dropped then (`saw`). A flood of listings therefore hides nothing: every open lot is
    in the set, however many came after it.
    """

    def __init__(self, client: ChainClient, window: int = HISTORY_WINDOW) -> None:
        self.client = client
        self.window = window
        self._lock = threading.Lock()
        self._seeded = False
        self._known = 0  # every id up to this one is classified (open, or ended)
        self._open: set[int] = set()
        self._ended: set[int] = set()  # Closed or Expired: never open again
        self._deadlines: dict[int, int] = {}
        self._start_prices: dict[int, int] = {}
        self._cleared: dict[int, tuple[int, int, int]] = {}  # id -> (deadline, price, Wh)

    def apply(self, name: str, args: dict[str, Any]) -> None:
        """One market event (from the listener or the seed); idempotent, any order."""
        with self._lock:
            if name == "Listed":
                lot_id = int(args["listingId"])
                self._deadlines[lot_id] = int(args["deadline"])
                self._start_prices[lot_id] = int(args["startPricePerKWh"])
                if lot_id not in self._ended:
                    self._open.add(lot_id)
            elif name == "TradeOpened":
                lot_id = int(args["tradeId"])
                self._cleared[lot_id] = (self._deadlines.get(lot_id, 0),
                                         int(args["pricePerKWh"]), int(args["energyWh"]))
            elif name in ("ListingExpired", "ConnectionClosed"):
                lot_id = int(args["listingId" if name == "ListingExpired" else "tradeId"])
                self._open.discard(lot_id)
                self._ended.add(lot_id)

    def seed(self) -> None:
        """Classify every lot listed so far from the market's logs (once; ChainError if down)."""
        if self._seeded:
            return
        head = self.client.block_number()
        count = self.client.lot_count(head)
        first = self.client.deployment.block
        for start in range(first, head + 1, self.window):
            for name, args in self.client.lot_history(start, min(head, start + self.window - 1)):
                self.apply(name, args)
        with self._lock:
            self._known = max(self._known, count)
            self._seeded = True
        log.info("market: %d lots on chain, %d open", count, len(self._open))

    def open_ids(self) -> list[int]:
        """Every Listed or Open lot id, oldest first (the newest ids from lotCount)."""
        self.seed()
        count = self.client.lot_count()
        with self._lock:
            self._open.update(i for i in range(self._known + 1, count + 1)
                              if i not in self._ended)
            self._known = max(self._known, count)
            return sorted(self._open)

    def saw(self, lot: Lot) -> None:
        """A lot as just read from the chain: drop it if it ended; note its cleared price."""
        with self._lock:
            if lot.buyer is not None and lot.status in (LotStatus.OPEN, LotStatus.CLOSED):
                self._cleared[lot.id] = (lot.deadline, lot.price_per_kwh, lot.energy_wh)
            if lot.status in (LotStatus.CLOSED, LotStatus.EXPIRED):
                self._open.discard(lot.id)
                self._ended.add(lot.id)

    def start_price(self, lot_id: int) -> int | None:
        """The start price the listing's Listed event carried, if seen."""
        with self._lock:
            return self._start_prices.get(lot_id)

    def cleared(self, last: int = MAX_CLEARED) -> list[tuple[int, int, int, int]]:
        """(id, deadline, price, Wh) of the newest `last` auctions that ended with a buyer."""
        with self._lock:
            rows = [(i, *v) for i, v in self._cleared.items()]
        return sorted(rows, key=lambda row: (row[1], row[0]))[-last:]


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
        self.board = OpenLots(client)
        self._start_prices: dict[int, int] = {}

    # -- reads ----------------------------------------------------------------------------------

    def parameters(self) -> dict[str, int]:
        """The market's deployment parameters (read once)."""
        if self._params is None:
            self._params = self.client.market_parameters()
        return self._params

    def on_event(self, event: ChainEvent) -> None:
        """Listener subscriber: keep the set of open lots (and start prices) up to date."""
        if event.contract == "EnergyMarket":
            self.board.apply(event.name, event.args)

    def lots(self) -> list[Lot]:
        """Every Listed or Open lot, fresh from the chain, oldest first (exact: see OpenLots)."""
        out = []
        for lot in self.client.lots_by_id(self.board.open_ids()):
            self.board.saw(lot)
            if lot.status in (LotStatus.LISTED, LotStatus.OPEN):
                out.append(lot)
        return out

    def own(self, address: str) -> dict[str, Any]:
        """The account's own open trades (as buyer, in settlement order) and lots (as seller),
        from the market's per-account indexes; empty when the chain cannot be read."""
        try:
            buying = self.client.trades_of_buyer(address)
            selling = sorted(self.client.lots_of_seller(address))
        except ChainError as exc:
            log.debug("market: own lots of %s unknown: %s", address, exc)
            return {"buying": [], "selling": [], "active": None}
        return {"buying": buying, "selling": selling, "active": buying[0] if buying else None}

    def can_bid(self, address: str) -> bool:
        """Whether the account has the accepted load meter bidding needs (True if unknown)."""
        try:
            return rules.may_bid(self.client.load_meter_of(address))
        except ChainError:
            return True  # the chain is down: the bid itself will say so

    def start_price(self, lot: Lot) -> int | None:
        """The listing's start price: seen before its first bid, from the event, or looked up."""
        with self._lock:
            known = self._start_prices.get(lot.id)
        if known is None:
            known = self.board.start_price(lot.id)
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
            buyers: dict[str, tuple[int, int]] = {}  # buyer -> (active trade, carried Wh)
            open_trades = [lot for lot in lots
                           if lot.status == LotStatus.OPEN and lot.buyer is not None]
            stalls = self.client.stalls_at_many([lot.id for lot in open_trades])
            trades = []
            for lot, stall_at in zip(open_trades, stalls, strict=True):
                buyer = lot.buyer or ""
                if buyer not in buyers:
                    buyers[buyer] = (self.client.active_trade_of(buyer),
                                     self.client.carried_of(buyer))
                active, carried = buyers[buyer]
                trades.append(self._trade(lot, now, params, states, active, carried, stall_at))
        except ChainError as exc:
            return {"available": False, "message": chain_error_sentence(exc),
                    "listings": [], "trades": [], "cleared": [], "chain_time": None,
                    "server_time": time.time()}
        return {
            "available": True,
            "message": "",
            "chain_time": now,
            "server_time": time.time(),
            "parameters": {
                "min_duration": params["min_duration"],
                "max_duration": params["max_duration"],
                "min_increment": format_ether(params["min_increment_per_kwh"]),
                "stall_timeout": params["stall_timeout"],
                "close_grace": params["close_grace"],
                "min_charge_wh": params["min_charge_wh"],
                "min_charge_kwh": format_kwh(params["min_charge_wh"]),
            },
            "listings": listings,
            "trades": trades,
            "cleared": [
                {"id": lot_id, "time": deadline, "price": format_ether(price),
                 "price_wei": str(price), "energy_kwh": format_kwh(energy)}
                for lot_id, deadline, price, energy in self.board.cleared()
            ],
        }

    def _party(self, address: str | None) -> dict[str, Any]:
        return {"address": address, "name": self.names(address) or short_address(address)}

    def _listing(self, lot: Lot, now: int, params: dict[str, int]) -> dict[str, Any]:
        start = self.start_price(lot)
        has_bid = lot.buyer is not None
        minimum = rules.min_next_bid(lot.price_per_kwh, has_bid, params["min_increment_per_kwh"])
        charge_wh = rules.minimum_charge_wh(lot.energy_wh, params["min_charge_wh"])
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
            "min_charge_kwh": format_kwh(charge_wh),
            "min_charge_at_min_bid": format_ether(rules.paid_wei(charge_wh, minimum)),
            "min_charge_note": messages.minimum_charge_note(charge_wh,
                                                            rules.paid_wei(charge_wh, minimum)),
            "deadline": lot.deadline,
            "deadline_text": format_time(lot.deadline),
            "ends_in": max(0, lot.deadline - now),
            "ended": rules.auction_ended(now, lot.deadline),
        }

    def _trade(self, lot: Lot, now: int, params: dict[str, int], states: list,
               active_id: int, carried_wh: int, stall_at: int) -> dict[str, Any]:
        active = active_id == lot.id
        close_at = rules.seller_close_at(stall_at, lot.close_requested_at, params["close_grace"])
        grace_ends = (rules.grace_ends_at(lot.close_requested_at, params["close_grace"])
                      if lot.closing else None)
        buyer_close = rules.buyer_close(active, lot.close_requested_at, now,
                                        params["close_grace"])
        stalled = rules.seller_can_close(now, stall_at)
        charge_wh = rules.minimum_charge_wh(lot.energy_wh, params["min_charge_wh"])
        if lot.closing:
            state = "closing"
            note = messages.trade_closing_note(grace_ends or 0)
        elif not active:
            state = "queued"
            note = messages.trade_queued_note(active_id)
        elif stalled:
            state = "stalled"
            note = messages.trade_stalled_note(stall_at)
        else:
            state = "delivering"
            note = messages.trade_delivering_note(stall_at)
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
            "active": active,
            "state": state,
            "state_note": note,
            "closing": lot.closing,
            "close_requested_at": lot.close_requested_at or None,
            "grace_ends_at": grace_ends,
            "stalls_at": stall_at,
            "stalled": stalled,
            "carried_wh": carried_wh if active else 0,
            "carried_kwh": format_kwh(carried_wh if active else 0),
            "min_charge_kwh": format_kwh(charge_wh),
            "min_charge_fee": format_ether(rules.minimum_charge_fee_wei(
                lot.energy_wh, lot.delivered_wh, lot.price_per_kwh, params["min_charge_wh"])),
            "refund_if_closed": format_ether(self._refund_if_closed(
                lot, now, params, active and (stalled or buyer_close == rules.CLOSES),
                carried_wh, stall_at)),
            "seller_can_close_at": close_at,
            "seller_can_close": rules.seller_can_close(now, close_at),
            "buyer_close": buyer_close,
        }

    def _refund_if_closed(self, lot: Lot, now: int, params: dict[str, int], silent: bool,
                          carried_wh: int, stall_at: int) -> int:
        """The buyer's refund if the trade closed now; a silent active trade is first charged
        for its silence (rules.silence_charge_wh), as the market does."""
        delivered = lot.delivered_wh
        if silent:
            meter = self.client.load_meter_of(lot.buyer or "")
            info = self.client.meter(meter) if meter else None
            delivered += rules.silence_charge_wh(
                info.rated_power_w if info else 0, stall_at - params["stall_timeout"], now,
                lot.close_requested_at, params["stall_timeout"], carried_wh,
                lot.energy_wh - lot.delivered_wh)
        return rules.close_refund_wei(lot.energy_wh, delivered, lot.price_per_kwh,
                                      params["min_charge_wh"])

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
        params = sentenced(self.parameters)
        low, high = params["min_duration"], params["max_duration"]
        if not rules.duration_allowed(seconds, low, high):
            raise InvalidInput(messages.duration_out_of_range(seconds, low, high))
        balance = sentenced(lambda: self.client.token_balance(account.address))
        if wh > balance:
            raise ActionRefused(messages.not_enough_tokens(balance, wh))
        tx_hash = sentenced(lambda: self.client.sell(account, wh, wei, seconds))
        return {"tx_hash": tx_hash, "message": messages.listing_sent(wh, wei, seconds)}

    def _open_lot(self, lot_id: int) -> Lot:
        lot = sentenced(lambda: self.client.lot(lot_id))
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
        if not rules.may_bid(sentenced(lambda: self.client.load_meter_of(account.address))):
            raise ActionRefused(messages.NO_LOAD_METER)
        now = sentenced(self.client.latest_timestamp)
        if rules.auction_ended(now, lot.deadline):
            raise ActionRefused(messages.auction_ended(lot_id))
        params = sentenced(self.parameters)
        minimum = rules.min_next_bid(lot.price_per_kwh, lot.buyer is not None,
                                     params["min_increment_per_kwh"])
        if wei < minimum:
            raise ActionRefused(messages.bid_below_minimum(lot_id, minimum))
        deposit = rules.deposit_wei(lot.energy_wh, wei)
        balance = sentenced(lambda: self.client.ether_balance(account.address))
        if deposit >= balance:
            raise ActionRefused(messages.deposit_exceeds_balance(deposit, lot.energy_wh, balance))
        tx_hash = sentenced(lambda: self.client.bid(account, lot_id, wei))
        return {"tx_hash": tx_hash, "message": messages.bid_sent(wei, lot_id, deposit)}

    def close(self, account: LocalAccount, trade_id: object) -> dict[str, str]:
        """Close an open trade, or (the buyer, on its delivering trade) ask to close it.

        The buyer: a queued trade closes at once; the active one is a request (the relays open,
        the meter's next reading settles the tail), refused while a request is within its
        grace. The seller: once the trade is stalled or the buyer's request is past its grace.
        """
        trade_id = parse_lot_id(trade_id)
        lot = self._open_lot(trade_id)
        if lot.status != LotStatus.OPEN:
            raise ActionRefused(messages.trade_not_open(trade_id))
        if not (_eq(account.address, lot.buyer) or _eq(account.address, lot.seller)):
            raise ActionRefused(messages.not_trade_party(trade_id))
        grace = sentenced(self.parameters)["close_grace"]
        now = sentenced(self.client.latest_timestamp)
        if _eq(account.address, lot.buyer):
            active = sentenced(lambda: self.client.active_trade_of(account.address)) == trade_id
            effect = rules.buyer_close(active, lot.close_requested_at, now, grace)
            if effect == rules.WAITS:
                raise ActionRefused(messages.close_already_requested(
                    trade_id, rules.grace_ends_at(lot.close_requested_at, grace)))
        else:
            effect = rules.CLOSES
            close_at = rules.seller_close_at(sentenced(lambda: self.client.stalls_at(trade_id)),
                                             lot.close_requested_at, grace)
            if not rules.seller_can_close(now, close_at):
                raise ActionRefused(messages.seller_close_too_early(trade_id, close_at))
        tx_hash = sentenced(lambda: self.client.close_connection(account, trade_id))
        if effect == rules.REQUESTS:
            return {"tx_hash": tx_hash, "message": messages.close_request_sent(trade_id, grace)}
        return {"tx_hash": tx_hash, "message": messages.close_sent(trade_id)}

    def finalize(self, account: LocalAccount, lot_id: object) -> dict[str, str]:
        """End an auction whose deadline has passed (anyone may)."""
        lot_id = parse_lot_id(lot_id)
        lot = self._open_lot(lot_id)
        if lot.status != LotStatus.LISTED:
            raise ActionRefused(messages.already_finalized(lot_id))
        if not rules.auction_ended(sentenced(self.client.latest_timestamp), lot.deadline):
            raise ActionRefused(messages.auction_not_ended(lot_id, lot.deadline))
        tx_hash = sentenced(lambda: self.client.finalize(account, lot_id))
        return {"tx_hash": tx_hash, "message": messages.finalize_sent(lot_id)}



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
