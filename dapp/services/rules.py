"""The market's rules as the pages pre-check them, stated once (no Flask, no web3, no I/O).

Each function restates one rule of contracts/EnergyMarket.sol so a page can refuse a doomed
action with a sentence before anything is signed, and show the same numbers on its cards.
tests/contracts/test_rules.py compares every function here with the contract on generated
cases: a rule changed on one side fails that test.

Times are chain times (block timestamps, seconds). A page checks against the latest block; the
transaction is mined in a later block, never an earlier one, so "ended" and "stalled" computed
now stay true when it is mined.
"""

from __future__ import annotations

WH_PER_KWH = 1000  # prices are per kWh; lots, deliveries and tokens are counted in Wh

# What the buyer's Close does to a trade (buyer_close).
CLOSES = "closes"  # a queued trade, or a close request past its grace: it closes now
REQUESTS = "requests"  # the active trade: the relays open, the next reading settles the tail
WAITS = "waits"  # already requested and within the grace: the next reading ends it


def deposit_wei(energy_wh: int, price_per_kwh: int) -> int:
    """EnergyMarket._deposit: the whole lot's price, rounded up so it covers every Wh."""
    return -(-energy_wh * price_per_kwh // WH_PER_KWH)


def paid_wei(delivered_wh: int, price_per_kwh: int) -> int:
    """EnergyMarket._paid: what the seller is owed for `delivered_wh`, rounded down."""
    return delivered_wh * price_per_kwh // WH_PER_KWH


def may_bid(load_meter: str | None) -> bool:
    """EnergyMarket.bid: only an account with an accepted, active load meter may bid."""
    return load_meter is not None


def min_next_bid(price_per_kwh: int, has_bid: bool, min_increment_per_kwh: int) -> int:
    """EnergyMarket.bid: the start price for the first bid, else the highest plus the increment."""
    return price_per_kwh + min_increment_per_kwh if has_bid else price_per_kwh


def auction_ended(now: int, deadline: int) -> bool:
    """EnergyMarket.bid/finalize: from the deadline on, no bids and finalize is allowed."""
    return now >= deadline


def duration_allowed(seconds: int, min_duration: int, max_duration: int) -> bool:
    """EnergyMarket.list: an auction lasts between the deployment's bounds (inclusive)."""
    return min_duration <= seconds <= max_duration


def minimum_charge_wh(energy_wh: int, min_charge_wh: int) -> int:
    """EnergyMarket._close: every trade pays for at least `min_charge_wh` (or the whole lot)."""
    return min(min_charge_wh, energy_wh)


def minimum_charge_fee_wei(energy_wh: int, delivered_wh: int, price_per_kwh: int,
                           min_charge_wh: int) -> int:
    """EnergyMarket._close: what closing now credits the seller beyond the delivered energy."""
    minimum = minimum_charge_wh(energy_wh, min_charge_wh)
    if delivered_wh >= minimum:
        return 0
    return paid_wei(minimum, price_per_kwh) - paid_wei(delivered_wh, price_per_kwh)


def close_refund_wei(energy_wh: int, delivered_wh: int, price_per_kwh: int,
                     min_charge_wh: int) -> int:
    """EnergyMarket._close: the buyer's refund, deposit - paid - the minimum-charge fee."""
    return (deposit_wei(energy_wh, price_per_kwh) - paid_wei(delivered_wh, price_per_kwh)
            - minimum_charge_fee_wei(energy_wh, delivered_wh, price_per_kwh, min_charge_wh))


def silence_charge_wh(rated_power_w: int, silent_since: int, now: int, close_requested_at: int,
                      stall_timeout: int, carried_wh: int, undelivered_wh: int) -> int:
    """EnergyMarket._chargeSilence: what closing a silent active trade at `now` charges as
    delivered: the carried-over energy plus rating x silence (until now, the close request or
    the stall, whichever is first), capped at the undelivered lot."""
    until = now
    if close_requested_at and close_requested_at < until:
        until = close_requested_at
    until = min(until, silent_since + stall_timeout)
    silent_wh = rated_power_w * (until - silent_since) // 3600 if until > silent_since else 0
    return min(undelivered_wh, min(carried_wh, undelivered_wh) + silent_wh)


def stalls_at(last_reading_at: int, active_since: int, stall_timeout: int) -> int:
    """EnergyMarket.stallsAt: the buyer's load meter's last accepted reading, or when the trade
    opened or became active if later, plus the stall timeout."""
    return max(last_reading_at, active_since) + stall_timeout


def grace_ends_at(close_requested_at: int, close_grace: int) -> int:
    """EnergyMarket.closeConnection: a close request ends by the next reading or at this time."""
    return close_requested_at + close_grace


def seller_close_at(stall_at: int, close_requested_at: int, close_grace: int) -> int:
    """EnergyMarket.closeConnection: the seller may close from when the trade stalls, or from
    the end of the buyer's close request's grace if that comes first (0: not requested)."""
    if close_requested_at:
        return min(stall_at, grace_ends_at(close_requested_at, close_grace))
    return stall_at


def seller_can_close(now: int, close_at: int) -> bool:
    """EnergyMarket.closeConnection: the seller's close is accepted from `close_at` on."""
    return now >= close_at


def buyer_close(active: bool, close_requested_at: int, now: int, close_grace: int) -> str:
    """EnergyMarket.closeConnection by the buyer: CLOSES, REQUESTS or WAITS.

    A queued trade closes at once (its seller never exported). The active trade closes in two
    phases: the first call is a request; within the grace a second call is refused; after it,
    the call closes the trade under the stall rule.
    """
    if not active:
        return CLOSES
    if not close_requested_at:
        return REQUESTS
    if now < grace_ends_at(close_requested_at, close_grace):
        return WAITS
    return CLOSES
