"""Chain units, the limits the contracts store them in, and how they are written for people.

The parsing of what people type is in `amounts` (it refuses with sentences from `messages`);
this module has no sentences, so `messages` can use it to write amounts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

WEI_PER_ETHER = 10**18
# EnergyMarket stores lots in 48 bits (Wh) and prices in 96 bits (wei per kWh).
MAX_ENERGY_WH = 2**48 - 1
MAX_PRICE_WEI = 2**96 - 1
# More wei than exists on any chain this app will meet; larger amounts are typos.
MAX_ETHER_WEI = 10**9 * WEI_PER_ETHER
MAX_LOT_ID = 2**48 - 1
MAX_DURATION_S = 10 * 365 * 86_400  # longer durations are typos

PRICE_UNITS = {"ether": 10**18, "gwei": 10**9, "wei": 1}
DURATION_UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86_400}


def format_kwh(wh: int) -> str:
    """Wh → kWh as exact text without trailing zeros: 1500 → "1.5"."""
    return _trim(Decimal(int(wh)).scaleb(-3))


def format_ether(wei: int) -> str:
    """Wei → ether as exact text without trailing zeros: 10**15 → "0.001"."""
    return _trim(Decimal(int(wei)).scaleb(-18))


def format_kwh_fixed(wh: float) -> str:
    """Wh as kWh with exactly 3 decimals, for lines that align (the agent's log): 400 → "0.400"."""
    return f"{wh / 1000:.3f}"


def format_ether_fixed(wei: int) -> str:
    """Wei as ether with at least 4 decimals (more when needed), for the agent: 1e15 → "0.0010"."""
    value = Decimal(int(wei)).scaleb(-18)
    text = f"{value:.4f}"
    if Decimal(text) != value:
        text = format(value.normalize(), "f")
    return text


def _trim(value: Decimal) -> str:
    """Plain decimal text without exponent or trailing zeros."""
    text = f"{value:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def format_duration(seconds: int) -> str:
    """A duration in words: 90 → "1 min 30 s", 7200 → "2 h"."""
    seconds = max(0, int(seconds))
    parts = []
    for size, name in ((86_400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if seconds >= size:
            parts.append(f"{seconds // size} {name}")
            seconds %= size
    return " ".join(parts[:2]) or "0 s"


def format_time(timestamp: int) -> str:
    """A chain timestamp as UTC text."""
    return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def short_address(address: str | None) -> str:
    """0x1234…abcd for cards; "—" for none."""
    if not address:
        return "—"
    return f"{address[:6]}…{address[-4:]}"
