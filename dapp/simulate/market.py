"""The simulation's view of the market, kept from the chain's events (no scans of every lot).

`MarketBook.on_event` is subscribed to the run's one `EventListener`; it keeps the open
listings and trades the agents decide on, the route of each buyer (the seller of its oldest
open trade: the one the market settles deliveries to), and the Ether and energy flows per
account that the report needs: deposits sent with bids, withdrawals, payments settled, the
prices of opened trades, minimum charges and stall charges, and every reading the registry
recorded or rejected.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from eth_utils import to_checksum_address

from dapp.agents.policy import Listing, Trade
from dapp.chain.listener import ChainEvent


@dataclass
class LotView:
    """One lot as its events told it."""

    id: int
    seller: str
    energy_wh: int
    start_price: int
    deadline: int
    price: int = 0  # highest bid (0: none yet)
    buyer: str | None = None
    status: str = "listed"  # listed, open, closed, expired
    delivered_wh: int = 0
    paid_wei: int = 0
    closing: bool = False  # the buyer asked to close (two-phase close)


class MarketBook:
    """Open listings and trades, and the flows of Ether and energy, from contract events.

    `block_day(block_number)` gives the simulated day a block belongs to (to count today's
    spending).
    """

    def __init__(self, block_day: Callable[[int], int] = lambda block: 0) -> None:
        self.block_day = block_day
        self.lots: dict[int, LotView] = {}
        self.open_trades: dict[int, LotView] = {}  # in the order the trades opened
        self.finalizing: set[int] = set()
        # Flows since the last `drain` (per account), and totals.
        self.interval: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.spent_by_day: dict[tuple[str, int], int] = defaultdict(int)
        self.trade_prices: list[int] = []
        self.bids: list[tuple[str, int, int]] = []  # (bidder, lot, price)
        self.listings: list[tuple[str, int, int]] = []  # (seller, lot, start price)
        self.tokens: dict[str, int] = defaultdict(int)  # token balances (Wh)
        self.on_reading: Callable[[ChainEvent], None] | None = None
        self.events = 0

    def _add(self, account: str, name: str, amount: int) -> None:
        self.interval[account][name] += amount
        self.totals[account][name] += amount

    def drain(self) -> dict[str, dict[str, int]]:
        """The flows since the last call, per account, and start a new interval."""
        out = {account: dict(flows) for account, flows in self.interval.items()}
        self.interval.clear()
        return out

    def on_event(self, event: ChainEvent) -> None:
        """Apply one contract event."""
        self.events += 1
        a = event.args
        name = event.name
        if name == "Listed":
            lot = LotView(int(a["listingId"]), to_checksum_address(a["seller"]),
                          int(a["energyWh"]), int(a["startPricePerKWh"]), int(a["deadline"]))
            self.lots[lot.id] = lot
            self.listings.append((lot.seller, lot.id, lot.start_price))
        elif name == "BidPlaced":
            lot = self.lots[int(a["listingId"])]
            lot.buyer = to_checksum_address(a["bidder"])
            lot.price = int(a["pricePerKWh"])
            self._add(lot.buyer, "deposited_wei", int(a["depositWei"]))
            self.bids.append((lot.buyer, lot.id, lot.price))
        elif name == "TradeOpened":
            lot = self.lots[int(a["tradeId"])]
            lot.status = "open"
            lot.buyer = to_checksum_address(a["buyer"])
            lot.price = int(a["pricePerKWh"])
            self.open_trades[lot.id] = lot
            self.finalizing.discard(lot.id)
            self.trade_prices.append(lot.price)
        elif name == "ListingExpired":
            lot = self.lots[int(a["listingId"])]
            lot.status = "expired"
            self.finalizing.discard(lot.id)
        elif name == "DeliverySettled":
            lot = self.lots[int(a["tradeId"])]
            paid = int(a["paidWei"])
            energy = int(a["energyWh"])
            lot.delivered_wh = int(a["deliveredWh"])
            lot.paid_wei += paid
            assert lot.buyer is not None
            self._add(lot.buyer, "paid_wei", paid)
            self._add(lot.buyer, "settled_wh", energy)
            self._add(lot.seller, "earned_wei", paid)
            self.spent_by_day[(lot.buyer, self.block_day(event.block_number))] += paid
        elif name == "ConnectionClosed":
            lot = self.lots[int(a["tradeId"])]
            lot.status = "closed"
            self.open_trades.pop(lot.id, None)
        elif name == "Credited":
            account = to_checksum_address(a["account"])
            amount = int(a["amountWei"])
            self._add(account, "credited_wei", amount)
            lot = self.lots.get(int(a["lotId"]))
            if lot is not None and account == lot.seller and lot.buyer is not None:
                # The minimum charge of a trade closed below it: the buyer pays it too.
                self._add(lot.buyer, "paid_wei", amount)
                self._add(lot.buyer, "min_charge_wei", amount)
                self.spent_by_day[(lot.buyer, self.block_day(event.block_number))] += amount
        elif name == "CloseRequested":
            self.lots[int(a["tradeId"])].closing = True
        elif name == "StallCharged":
            lot = self.lots[int(a["tradeId"])]
            assert lot.buyer is not None
            self._add(lot.buyer, "stall_charged_wh", int(a["energyWh"]))
        elif name == "Transfer":
            value = int(a["value"])
            self.tokens[to_checksum_address(a["from"])] -= value
            self.tokens[to_checksum_address(a["to"])] += value
        elif name == "Withdrawn":
            self._add(to_checksum_address(a["account"]), "withdrawn_wei", int(a["amountWei"]))
        elif name in ("ReadingRecorded", "ReadingRejected") and self.on_reading is not None:
            self.on_reading(event)

    # ------------------------------------------------------------------ what agents see

    def open_listings(self, now_s: int) -> tuple[Listing, ...]:
        """Auctions still taking bids at chain time `now_s`."""
        return tuple(
            Listing(lot.id, lot.seller, lot.energy_wh, lot.start_price, lot.deadline,
                    lot.price, lot.buyer)
            for lot in self.lots.values() if lot.status == "listed" and now_s < lot.deadline)

    def to_finalize(self, now_s: int) -> list[int]:
        """Listings whose auction ended by `now_s` and that nobody finalized yet."""
        return [lot.id for lot in self.lots.values()
                if lot.status == "listed" and lot.deadline <= now_s
                and lot.id not in self.finalizing]

    def trades_of(self, account: str) -> tuple[Trade, ...]:
        """`account`'s open trades (as seller or buyer)."""
        return tuple(
            Trade(lot.id, lot.seller, lot.buyer or "", lot.energy_wh, lot.delivered_wh,
                  lot.price)
            for lot in self.open_trades.values() if account in (lot.seller, lot.buyer))

    def routes(self) -> dict[str, str]:
        """buyer -> seller of its oldest open trade (the one deliveries settle)."""
        out: dict[str, str] = {}
        for lot in self.open_trades.values():
            if lot.buyer is not None and lot.buyer not in out:
                out[lot.buyer] = lot.seller
        return out

    def credit(self, account: str) -> int:
        """`account`'s withdrawable credit: refunds and earnings credited, less withdrawals."""
        flows = self.totals.get(account, {})
        return (flows.get("credited_wei", 0) + flows.get("earned_wei", 0)
                - flows.get("withdrawn_wei", 0))

    def spent_today(self, account: str, day: int) -> int:
        """Payments settled for `account`'s purchases on simulated day `day`."""
        return self.spent_by_day.get((account, day), 0)

    def held_in_lots(self) -> int:
        """Ether the market holds in deposits of listings and escrow of open trades."""
        held = 0
        for lot in self.lots.values():
            if lot.buyer is None or lot.status in ("closed", "expired"):
                continue
            held += -(-lot.energy_wh * lot.price // 1000) - lot.paid_wei
        return held
