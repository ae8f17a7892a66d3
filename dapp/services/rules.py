"""The market's rules as the pages pre-check them, stated once (no Flask, no web3, no I/O).

Each function restates one rule of contracts/EnergyMarket.sol so a page can refuse a doomed
action with a sentence before anything is signed, and show the same numbers on its cards.
tests/contracts/test_rules.py compares every function here with the contract on generated
cases: a rule changed on one side fails that test.

Times are chain times (block timestamps, seconds). A page checks against the latest block; the
transaction is mined in a later block, never an earlier one, so "ended" and "timed out" computed
now stay true when it is mined.
"""

from __future__ import annotations

WH_PER_KWH = 1000  # prices are per kWh; lots, deliveries and tokens are counted in Wh


def deposit_wei(energy_wh: int, price_per_kwh: int) -> int:
    """EnergyMarket._deposit: the whole lot's price, rounded up so it covers every Wh."""
    return -(-energy_wh * price_per_kwh // WH_PER_KWH)


def paid_wei(delivered_wh: int, price_per_kwh: int) -> int:
    """EnergyMarket._paid: what the seller is owed for `delivered_wh`, rounded down."""
    return delivered_wh * price_per_kwh // WH_PER_KWH


def min_next_bid(price_per_kwh: int, has_bid: bool, min_increment_per_kwh: int) -> int:
    """EnergyMarket.bid: the start price for the first bid, else the highest plus the increment."""
    return price_per_kwh + min_increment_per_kwh if has_bid else price_per_kwh


def auction_ended(now: int, deadline: int) -> bool:
    """EnergyMarket.bid/finalize: from the deadline on, no bids and finalize is allowed."""
    return now >= deadline


def duration_allowed(seconds: int, min_duration: int, max_duration: int) -> bool:
    """EnergyMarket.list: an auction lasts between the deployment's bounds (inclusive)."""
    return min_duration <= seconds <= max_duration


def seller_close_at(last_delivery_at: int, delivery_timeout: int,
                    oldest_last_delivery_at: int | None = None) -> int:
    """EnergyMarket.closeConnection: when the seller may close the trade.

    The timeout runs from the trade's last delivery (or its opening). A trade queued behind the
    buyer's oldest open trade is delivered only after that one, so it also waits for the oldest
    trade's last delivery: pass `oldest_last_delivery_at` for it, None for the oldest itself.
    """
    last = last_delivery_at
    if oldest_last_delivery_at is not None:
        last = max(last, oldest_last_delivery_at)
    return last + delivery_timeout


def seller_can_close(now: int, close_at: int) -> bool:
    """EnergyMarket.closeConnection: the seller's close is accepted from `close_at` on."""
    return now >= close_at
