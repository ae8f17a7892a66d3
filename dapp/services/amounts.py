"""Exact conversion of what people type (kWh, ether, minutes) into chain units.

Energy is typed in kWh with at most 3 decimals (the token counts Wh), prices in ether (or gwei,
or wei) per kWh, Ether amounts in ether. Everything goes through `Decimal` with a private,
generous precision, so "0.1" ether is exactly 10^17 wei and never a float's 99999999999999999.
Anything else (empty, signs, exponents, commas, too many decimals, absurd sizes) is refused with
an `InvalidInput` whose message (from `messages`) says what to type instead. Writing amounts
back for people is `units`.
"""

from __future__ import annotations

import re
from decimal import Context, Decimal, localcontext

from dapp.errors import WalletError
from dapp.services import messages
from dapp.services.errors import InvalidInput
from dapp.services.rules import WH_PER_KWH
from dapp.services.units import (
    DURATION_UNITS,
    MAX_DURATION_S,
    MAX_ENERGY_WH,
    MAX_ETHER_WEI,
    MAX_LOT_ID,
    MAX_PRICE_WEI,
    PRICE_UNITS,
    WEI_PER_ETHER,
)
from dapp.wallet.keystore import checksum_address

# Digits with at most one decimal point; no sign, exponent, spaces or thousands separators.
_NUMBER = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)$")
_MAX_TEXT = 40
_CONTEXT = Context(prec=120)


def _decimal(text: object, what: str) -> Decimal:
    """`text` as a non-negative Decimal; InvalidInput naming `what` otherwise."""
    if text is None or (isinstance(text, str) and not text.strip()):
        raise InvalidInput(messages.enter(what))
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise InvalidInput(messages.not_a_number(what))
    value = str(text).strip()
    if len(value) > _MAX_TEXT:
        raise InvalidInput(messages.far_too_large(what))
    if value.startswith("-"):
        raise InvalidInput(messages.negative(what))
    if not _NUMBER.match(value):
        raise InvalidInput(messages.not_a_plain_number(what))
    with localcontext(_CONTEXT):
        return Decimal(value)


def _scaled(value: Decimal, scale: int, places: int, what: str) -> int:
    """`value` × `scale` as an exact integer; InvalidInput if it has more than `places` decimals."""
    with localcontext(_CONTEXT):
        scaled = value * scale
        if scaled != scaled.to_integral_value():
            if places == 0:
                raise InvalidInput(messages.not_whole(what))
            raise InvalidInput(messages.too_many_decimals(what, places))
        return int(scaled)


def parse_energy(text: object) -> int:
    """kWh as typed (up to 3 decimals) → Wh; refuses zero and lots the market cannot hold."""
    what = "the amount of energy (kWh)"
    wh = _scaled(_decimal(text, what), WH_PER_KWH, 3, what)
    if wh <= 0:
        raise InvalidInput(messages.ENERGY_ZERO)
    if wh > MAX_ENERGY_WH:
        raise InvalidInput(messages.energy_too_large(MAX_ENERGY_WH))
    return wh


def parse_price(text: object, unit: object = "ether") -> int:
    """A price per kWh in `unit` (ether, gwei or wei) → wei per kWh; must be above zero."""
    factor = PRICE_UNITS.get(str(unit or "ether").strip().lower())
    if factor is None:
        raise InvalidInput(messages.PRICE_UNIT_UNKNOWN)
    places = len(str(factor)) - 1
    what = f"the price ({unit} per kWh)"
    wei = _scaled(_decimal(text, what), factor, places, what)
    if wei <= 0:
        raise InvalidInput(messages.PRICE_ZERO)
    if wei > MAX_PRICE_WEI:
        raise InvalidInput(messages.price_too_large(MAX_PRICE_WEI))
    return wei


def parse_ether(text: object) -> int:
    """An amount of Ether as typed (up to 18 decimals) → wei; must be above zero."""
    what = "the amount of Ether"
    wei = _scaled(_decimal(text, what), WEI_PER_ETHER, 18, what)
    if wei <= 0:
        raise InvalidInput(messages.ETHER_ZERO)
    if wei > MAX_ETHER_WEI:
        raise InvalidInput(messages.ETHER_ABSURD)
    return wei


def parse_duration(text: object, unit: object = "minutes") -> int:
    """A duration in `unit` (seconds, minutes, hours, days) → whole seconds, above zero."""
    factor = DURATION_UNITS.get(str(unit or "minutes").strip().lower())
    if factor is None:
        raise InvalidInput(messages.DURATION_UNIT_UNKNOWN)
    what = f"the duration ({unit})"
    value = _decimal(text, what)
    with localcontext(_CONTEXT):
        seconds = value * factor
        if seconds != seconds.to_integral_value():
            raise InvalidInput(messages.not_whole_seconds(what))
    if seconds <= 0:
        raise InvalidInput(messages.DURATION_ZERO)
    if seconds > MAX_DURATION_S:
        raise InvalidInput(messages.DURATION_ABSURD)
    return int(seconds)


def parse_lot_id(text: object) -> int:
    """A listing or trade number (1, 2, ...)."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if text is None or (isinstance(text, str) and not text.strip()):
        raise InvalidInput(messages.LOT_NUMBER_MISSING)
    value = text.strip() if isinstance(text, str) else ""
    if not value.isascii() or not value.isdigit() or len(value) > 15:
        raise InvalidInput(messages.NO_SUCH_LOT_NUMBER)
    number = int(value)
    if number < 1 or number > MAX_LOT_ID:
        raise InvalidInput(messages.NO_SUCH_LOT_NUMBER)
    return number


def parse_address(text: object, what: str = "the recipient") -> str:
    """A checksummed Ethereum address; InvalidInput with a sentence for anything else."""
    if text is None or (isinstance(text, str) and not text.strip()):
        raise InvalidInput(messages.address_missing(what))
    if not isinstance(text, str) or len(text) > 100:
        raise InvalidInput(messages.not_an_address(what))
    try:
        return checksum_address(text)
    except WalletError:
        raise InvalidInput(messages.bad_address(what)) from None
