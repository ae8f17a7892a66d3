"""Exact conversion of what people type (kWh, ether, minutes) into chain units, and back.

Energy is typed in kWh with at most 3 decimals (the token counts Wh), prices in ether (or gwei,
or wei) per kWh, Ether amounts in ether. Everything goes through `Decimal` with a private,
generous precision, so "0.1" ether is exactly 10^17 wei and never a float's 99999999999999999.
Anything else (empty, signs, exponents, commas, too many decimals, absurd sizes) is refused with
an `InvalidInput` whose message says what to type instead.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Context, Decimal, localcontext

from dapp.errors import WalletError
from dapp.services.errors import InvalidInput
from dapp.services.rules import WH_PER_KWH
from dapp.wallet.keystore import checksum_address

WEI_PER_ETHER = 10**18
# EnergyMarket stores lots in 48 bits (Wh) and prices in 96 bits (wei per kWh).
MAX_ENERGY_WH = 2**48 - 1
MAX_PRICE_WEI = 2**96 - 1
# More wei than exists on any chain this app will meet; larger amounts are typos.
MAX_ETHER_WEI = 10**9 * WEI_PER_ETHER
MAX_LOT_ID = 2**48 - 1

PRICE_UNITS = {"ether": 10**18, "gwei": 10**9, "wei": 1}
DURATION_UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86_400}

# Digits with at most one decimal point; no sign, exponent, spaces or thousands separators.
_NUMBER = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)$")
_MAX_TEXT = 40
_CONTEXT = Context(prec=120)


def _decimal(text: object, what: str) -> Decimal:
    """`text` as a non-negative Decimal; InvalidInput naming `what` otherwise."""
    if text is None or (isinstance(text, str) and not text.strip()):
        raise InvalidInput(f"Enter {what}.")
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise InvalidInput(f"{_cap(what)} must be a number like 1.5.")
    value = str(text).strip()
    if len(value) > _MAX_TEXT:
        raise InvalidInput(f"{_cap(what)} is far too large.")
    if value.startswith("-"):
        raise InvalidInput(f"{_cap(what)} cannot be negative.")
    if not _NUMBER.match(value):
        raise InvalidInput(
            f"{_cap(what)} must be a number like 1.5 (digits and at most one decimal point)."
        )
    with localcontext(_CONTEXT):
        return Decimal(value)


def _cap(text: str) -> str:
    """`text` with a capital first letter."""
    return text[:1].upper() + text[1:]


def _scaled(value: Decimal, scale: int, places: int, what: str) -> int:
    """`value` × `scale` as an exact integer; InvalidInput if it has more than `places` decimals."""
    with localcontext(_CONTEXT):
        scaled = value * scale
        if scaled != scaled.to_integral_value():
            if places == 0:
                raise InvalidInput(f"{_cap(what)} must be a whole number.")
            raise InvalidInput(f"{_cap(what)} can have at most {places} decimal places.")
        return int(scaled)


def parse_energy(text: object) -> int:
    """kWh as typed (up to 3 decimals) → Wh; refuses zero and lots the market cannot hold."""
    what = "the amount of energy (kWh)"
    wh = _scaled(_decimal(text, what), WH_PER_KWH, 3, what)
    if wh <= 0:
        raise InvalidInput("The amount of energy must be more than 0 kWh.")
    if wh > MAX_ENERGY_WH:
        raise InvalidInput(f"The amount of energy can be at most {format_kwh(MAX_ENERGY_WH)} kWh.")
    return wh


def parse_price(text: object, unit: object = "ether") -> int:
    """A price per kWh in `unit` (ether, gwei or wei) → wei per kWh; must be above zero."""
    factor = PRICE_UNITS.get(str(unit or "ether").strip().lower())
    if factor is None:
        raise InvalidInput("Choose the price unit: ether, gwei or wei per kWh.")
    places = len(str(factor)) - 1
    what = f"the price ({unit} per kWh)"
    wei = _scaled(_decimal(text, what), factor, places, what)
    if wei <= 0:
        raise InvalidInput("The price must be more than 0.")
    if wei > MAX_PRICE_WEI:
        raise InvalidInput(
            f"The price can be at most {format_ether(MAX_PRICE_WEI)} ether per kWh."
        )
    return wei


def parse_ether(text: object) -> int:
    """An amount of Ether as typed (up to 18 decimals) → wei; must be above zero."""
    what = "the amount of Ether"
    wei = _scaled(_decimal(text, what), WEI_PER_ETHER, 18, what)
    if wei <= 0:
        raise InvalidInput("The amount of Ether must be more than 0.")
    if wei > MAX_ETHER_WEI:
        raise InvalidInput("That amount of Ether is absurdly large; check the number.")
    return wei


def parse_duration(text: object, unit: object = "minutes") -> int:
    """A duration in `unit` (seconds, minutes, hours, days) → whole seconds, above zero."""
    factor = DURATION_UNITS.get(str(unit or "minutes").strip().lower())
    if factor is None:
        raise InvalidInput("Choose the duration unit: seconds, minutes, hours or days.")
    what = f"the duration ({unit})"
    value = _decimal(text, what)
    with localcontext(_CONTEXT):
        seconds = value * factor
        if seconds != seconds.to_integral_value():
            raise InvalidInput(f"{_cap(what)} must come to whole seconds.")
    if seconds <= 0:
        raise InvalidInput("The duration must be more than 0.")
    if seconds > 10 * 365 * 86_400:
        raise InvalidInput("That duration is absurdly long; check the number.")
    return int(seconds)


def parse_lot_id(text: object) -> int:
    """A listing or trade number (1, 2, ...)."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if text is None or (isinstance(text, str) and not text.strip()):
        raise InvalidInput("Enter the listing number.")
    value = text.strip() if isinstance(text, str) else ""
    if not value.isascii() or not value.isdigit() or len(value) > 15:
        raise InvalidInput("There is no listing or trade with that number.")
    number = int(value)
    if number < 1 or number > MAX_LOT_ID:
        raise InvalidInput("There is no listing or trade with that number.")
    return number


def parse_address(text: object, what: str = "the recipient") -> str:
    """A checksummed Ethereum address; InvalidInput with a sentence for anything else."""
    if text is None or (isinstance(text, str) and not text.strip()):
        raise InvalidInput(f"Enter the address of {what}.")
    if not isinstance(text, str) or len(text) > 100:
        raise InvalidInput(f"The address of {what} is not an Ethereum address.")
    try:
        return checksum_address(text)
    except WalletError:
        raise InvalidInput(
            f"The address of {what} is not an Ethereum address (0x followed by 40 hex digits, "
            "with a correct checksum if it has capital letters)."
        ) from None


def format_kwh(wh: int) -> str:
    """Wh → kWh as exact text without trailing zeros: 1500 → "1.5"."""
    return _trim(Decimal(int(wh)).scaleb(-3))


def format_ether(wei: int) -> str:
    """Wei → ether as exact text without trailing zeros: 10**15 → "0.001"."""
    return _trim(Decimal(int(wei)).scaleb(-18))


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
