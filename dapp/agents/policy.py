"""A household's trading agent, as a pure function: state and limits in, actions and reasons out.

No web3, no Flask, no clock: the caller gives the chain time, the battery, the market and what
was spent today; `decide` answers what to do and why, in sentences an owner can read in the log.

The rules, with `projected` = the battery's energy now minus the forecast net load over the
horizon (clamped to 0..capacity):
- **sell** what lies above the reserve, now and as projected, that is not already listed or
  being delivered, at the floor price (the auction raises it), if it is at least a lot;
- **bid** while the projected energy is below the reserve and nothing on order covers the gap:
  the cheapest open lots first, at the market's next bid, never above the ceiling, and only while
  today's spending (settled payments + deposits held on leading bids + escrow of open trades)
  plus the new deposit stays within the daily limit;
- **close** the connection of each trade it buys through once the projected energy is back at
  the reserve (the need is met): the rest of the escrow comes back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dapp.errors import MicrogridError
from dapp.services import messages
from dapp.services.rules import deposit_wei, min_next_bid, paid_wei
from dapp.services.units import WEI_PER_ETHER

# Settings beyond these are typos, not choices: 1000 ETH per kWh, a million ETH per day.
MAX_PRICE_WEI_PER_KWH = 1000 * WEI_PER_ETHER
MAX_DAILY_LIMIT_WEI = 10**6 * WEI_PER_ETHER


class InvalidLimits(MicrogridError, ValueError):
    """An agent setting is unusable; `str(exc)` is one sentence saying what to enter instead."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Limits:
    """What the owner allows: battery reserve (%), floor and ceiling (wei/kWh), daily limit (wei).

    Constructing one validates it; `Limits.parse` also takes the text a form or JSON sends.
    """

    reserve_percent: float
    floor_wei_per_kwh: int
    ceiling_wei_per_kwh: int
    daily_limit_wei: int

    def __post_init__(self) -> None:
        reserve = self.reserve_percent
        if (isinstance(reserve, bool) or not isinstance(reserve, int | float)
                or not math.isfinite(reserve)):
            raise InvalidLimits(messages.agent_reserve_not_percent(), "reserve_percent")
        if reserve < 0:
            raise InvalidLimits(messages.agent_amount_negative("battery reserve"),
                                "reserve_percent")
        if reserve > 100:
            raise InvalidLimits(messages.agent_reserve_above_all(), "reserve_percent")
        for name, what, most in (
            ("floor_wei_per_kwh", "floor price", MAX_PRICE_WEI_PER_KWH),
            ("ceiling_wei_per_kwh", "ceiling price", MAX_PRICE_WEI_PER_KWH),
            ("daily_limit_wei", "daily spending limit", MAX_DAILY_LIMIT_WEI),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidLimits(messages.agent_not_whole_wei(what), name)
            if value < 0:
                raise InvalidLimits(messages.agent_amount_negative(what), name)
            if value > most:
                raise InvalidLimits(messages.agent_amount_above(what, most), name)
        if self.floor_wei_per_kwh > self.ceiling_wei_per_kwh:
            raise InvalidLimits(messages.agent_floor_above_ceiling(
                self.floor_wei_per_kwh, self.ceiling_wei_per_kwh), "floor_wei_per_kwh")

    @classmethod
    def parse(cls, reserve_percent: object, floor_wei_per_kwh: object,
              ceiling_wei_per_kwh: object, daily_limit_wei: object) -> Limits:
        """Limits from typed text or JSON numbers; InvalidLimits with one sentence otherwise."""
        return cls(
            reserve_percent=_percent(reserve_percent),
            floor_wei_per_kwh=_wei(floor_wei_per_kwh, "floor price", "floor_wei_per_kwh"),
            ceiling_wei_per_kwh=_wei(ceiling_wei_per_kwh, "ceiling price", "ceiling_wei_per_kwh"),
            daily_limit_wei=_wei(daily_limit_wei, "daily spending limit", "daily_limit_wei"),
        )

    @property
    def reserve(self) -> float:
        """The reserve as a fraction of the battery's capacity."""
        return self.reserve_percent / 100.0


@dataclass(frozen=True)
class MarketTerms:
    """The deployment's market parameters the agent must respect."""

    min_increment_wei_per_kwh: int = 0
    auction_s: int = 300
    min_lot_wh: int = 100  # smaller surpluses and needs are not worth a transaction


@dataclass(frozen=True)
class Listing:
    """An open auction on the market (chain times in seconds, prices in wei per kWh)."""

    lot_id: int
    seller: str
    energy_wh: int
    start_price_wei_per_kwh: int
    deadline_s: int
    highest_bid_wei_per_kwh: int = 0
    highest_bidder: str | None = None


@dataclass(frozen=True)
class Trade:
    """An open trade (won lot being delivered)."""

    trade_id: int
    seller: str
    buyer: str
    energy_wh: int
    delivered_wh: int
    price_wei_per_kwh: int

    @property
    def remaining_wh(self) -> int:
        """Energy still to deliver."""
        return max(0, self.energy_wh - self.delivered_wh)

    @property
    def escrow_wei(self) -> int:
        """The buyer's Ether still held for this trade."""
        return deposit_wei(self.energy_wh, self.price_wei_per_kwh) - paid_wei(
            self.delivered_wh, self.price_wei_per_kwh)


@dataclass(frozen=True)
class HouseholdState:
    """What the agent knows about its household and the market at chain time `now_s`.

    `net_load_w` is the forecast (or recent) mean of load minus PV over `horizon_s`: positive
    drains the battery. `spent_today_wei` counts only payments already settled today; the agent
    adds the deposits and escrow it holds itself.
    """

    account: str
    now_s: int
    soc: float
    capacity_wh: float
    net_load_w: float = 0.0
    horizon_s: float = 3600.0
    tokens_wh: int = 0
    listings: tuple[Listing, ...] = ()
    trades: tuple[Trade, ...] = ()
    spent_today_wei: int = 0

    @property
    def stored_wh(self) -> float:
        """Energy in the battery now."""
        return self.soc * self.capacity_wh

    @property
    def projected_wh(self) -> float:
        """Energy expected in the battery at the end of the horizon."""
        drawn = self.net_load_w * self.horizon_s / 3600.0
        return min(self.capacity_wh, max(0.0, self.stored_wh - drawn))

    @property
    def committed_wei(self) -> int:
        """Today's spending so far: settled, plus deposits on leading bids, plus open escrow."""
        held = sum(deposit_wei(lot.energy_wh, lot.highest_bid_wei_per_kwh)
                   for lot in self.listings if lot.highest_bidder == self.account)
        escrow = sum(t.escrow_wei for t in self.trades if t.buyer == self.account)
        return self.spent_today_wei + held + escrow


@dataclass(frozen=True)
class Sell:
    """List `energy_wh` tokens at `start_price_wei_per_kwh` for `duration_s`."""

    energy_wh: int
    start_price_wei_per_kwh: int
    duration_s: int
    reason: str


@dataclass(frozen=True)
class Bid:
    """Bid `price_wei_per_kwh` on lot `lot_id`, sending `deposit_wei`."""

    lot_id: int
    price_wei_per_kwh: int
    deposit_wei: int
    reason: str


@dataclass(frozen=True)
class Close:
    """Close the connection of trade `trade_id` (the buyer's close)."""

    trade_id: int
    reason: str


Action = Sell | Bid | Close


@dataclass(frozen=True)
class Decision:
    """What to do now (`actions`, each with its reason) and what was left undone and why."""

    actions: tuple[Action, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def log(self) -> tuple[str, ...]:
        """Every sentence, actions first: what the owner's page shows."""
        return tuple(a.reason for a in self.actions) + self.notes


def decide(state: HouseholdState, limits: Limits, terms: MarketTerms | None = None) -> Decision:
    """The agent's actions for `state` within `limits`, each with the sentence saying why."""
    terms = terms or MarketTerms()
    if state.capacity_wh <= 0 or not 0 <= state.soc <= 1:
        raise ValueError("the household state needs a positive capacity and a SoC in 0..1")
    actions: list[Action] = []
    notes: list[str] = []
    reserve_wh = limits.reserve * state.capacity_wh
    battery = _battery_words(state)

    sell = _sell(state, limits, terms, reserve_wh, battery)
    if isinstance(sell, Sell):
        actions.append(sell)
    elif sell:
        notes.append(sell)

    if state.projected_wh >= reserve_wh:
        for trade in state.trades:
            if trade.buyer == state.account and trade.remaining_wh > 0:
                actions.append(Close(trade.trade_id, messages.agent_log_closed(
                    trade.trade_id, trade.delivered_wh, trade.energy_wh, battery,
                    limits.reserve_percent)))
        return Decision(tuple(actions), tuple(notes))

    bids, bid_notes = _bids(state, limits, terms, reserve_wh, battery)
    return Decision(tuple(actions + bids), tuple(notes + bid_notes))


def _sell(state: HouseholdState, limits: Limits, terms: MarketTerms, reserve_wh: float,
          battery: str) -> Sell | str | None:
    """A Sell of the surplus, a note why not, or None when there is no surplus to speak of."""
    listed = sum(lot.energy_wh for lot in state.listings if lot.seller == state.account)
    selling = sum(t.remaining_wh for t in state.trades if t.seller == state.account)
    above = min(state.stored_wh, state.projected_wh) - reserve_wh
    surplus = math.floor(round(above - listed - selling, 6))  # 0.82 x 2400 is 1968, not 1967
    if surplus < terms.min_lot_wh:
        return None
    energy = min(surplus, state.tokens_wh)
    if energy < terms.min_lot_wh:
        return messages.agent_log_few_tokens(battery, limits.reserve_percent, state.tokens_wh)
    price = max(limits.floor_wei_per_kwh, 1)
    return Sell(energy, price, terms.auction_s, messages.agent_log_offered(
        energy, battery, limits.reserve_percent, price))


def _bids(state: HouseholdState, limits: Limits, terms: MarketTerms, reserve_wh: float,
          battery: str) -> tuple[list[Action], list[str]]:
    """Bids on the cheapest open lots until the need is covered, within ceiling and daily limit."""
    on_order = sum(t.remaining_wh for t in state.trades if t.buyer == state.account)
    on_order += sum(lot.energy_wh for lot in state.listings
                    if lot.highest_bidder == state.account)
    need = math.ceil(round(reserve_wh - state.projected_wh - on_order, 6))
    if need < terms.min_lot_wh:
        return [], []
    committed = state.committed_wei
    candidates = []
    for lot in state.listings:
        if (lot.seller == state.account or lot.highest_bidder == state.account
                or state.now_s >= lot.deadline_s or lot.energy_wh <= 0):
            continue
        price = min_next_bid(max(lot.start_price_wei_per_kwh, lot.highest_bid_wei_per_kwh),
                             lot.highest_bidder is not None, terms.min_increment_wei_per_kwh)
        candidates.append((price, lot.energy_wh > need, lot.deadline_s, lot.lot_id, lot))
    if not candidates:
        return [], [messages.agent_log_no_lot(need, battery, limits.reserve_percent)]
    actions: list[Action] = []
    notes: list[str] = []
    for price, _, _, _, lot in sorted(candidates):
        if need <= 0:
            break
        if price > limits.ceiling_wei_per_kwh:
            notes.append(messages.agent_log_above_ceiling(lot.lot_id, price,
                                                          limits.ceiling_wei_per_kwh))
            continue
        deposit = deposit_wei(lot.energy_wh, price)
        if committed + deposit > limits.daily_limit_wei:
            notes.append(messages.agent_log_over_daily_limit(lot.lot_id, deposit, committed,
                                                             limits.daily_limit_wei))
            continue
        committed += deposit
        actions.append(Bid(lot.lot_id, price, deposit, messages.agent_log_bid(
            lot.lot_id, lot.energy_wh, price, battery, limits.reserve_percent, need, deposit,
            limits.daily_limit_wei - committed, limits.daily_limit_wei)))
        need -= lot.energy_wh
    return actions, notes


def _battery_words(state: HouseholdState) -> str:
    """"battery 82 %", plus the projection when the forecast moves it."""
    return messages.agent_log_battery(100 * state.soc,
                                      100 * state.projected_wh / state.capacity_wh,
                                      state.horizon_s / 3600.0)


def _number_text(value: object) -> str | None:
    """`value` as stripped text if it is text or a plain number, else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return value.strip()
    return None


def _percent(value: object) -> float:
    """A reserve typed as "40", "40.5", "40 %" or sent as a number -> percent."""
    text = _number_text(value)
    if text is not None and text.endswith("%"):
        text = text[:-1].strip()
    try:
        percent = float(text) if text else math.nan
    except ValueError:
        percent = math.nan
    if not math.isfinite(percent):
        raise InvalidLimits(messages.agent_reserve_not_percent(), "reserve_percent")
    return percent


def _wei(value: object, what: str, field: str) -> int:
    """A whole number of wei, typed or sent as JSON; InvalidLimits naming `what` otherwise."""
    text = _number_text(value)
    if text and text.startswith("-") and text[1:].strip().replace(".", "", 1).isdigit():
        raise InvalidLimits(messages.agent_amount_negative(what), field)
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    if not text or not text.isdigit() or not text.isascii():
        raise InvalidLimits(messages.agent_not_whole_wei(what), field)
    if len(text) > 40:
        raise InvalidLimits(messages.far_too_large(f"the {what}"), field)
    return int(text)
