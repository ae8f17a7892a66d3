"""What people type becomes exact chain units, or a sentence saying what to type instead."""

from __future__ import annotations

import pytest

from dapp.errors import ChainError, ChainUnavailable, ContractReverted, WalletError
from dapp.services.amounts import (
    parse_address,
    parse_duration,
    parse_energy,
    parse_ether,
    parse_lot_id,
    parse_price,
)
from dapp.services.errors import ActionRefused, ChainDown, InvalidInput
from dapp.services.messages import as_user_error, revert_sentence
from dapp.services.units import MAX_ENERGY_WH, format_duration, format_ether, format_kwh


@pytest.mark.parametrize(
    ("text", "wh"),
    [("1", 1000), ("1.5", 1500), ("0.001", 1), (".25", 250), ("2.", 2000), (" 3.250 ", 3250),
     (7, 7000), ("281474976710.655", MAX_ENERGY_WH)],
)
def test_energy_in_kwh_becomes_exact_wh(text, wh):
    assert parse_energy(text) == wh


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Enter the amount of energy"),
        ("   ", "Enter the amount of energy"),
        (None, "Enter the amount of energy"),
        ("-1", "cannot be negative"),
        ("abc", "must be a number"),
        ("1e3", "must be a number"),
        ("1,5", "must be a number"),
        ("0x10", "must be a number"),
        ("NaN", "must be a number"),
        ("1.2.3", "must be a number"),
        ("0.0001", "at most 3 decimal places"),
        ("0", "more than 0 kWh"),
        ("0.000", "more than 0 kWh"),
        ("281474976710.656", "at most 281474976710.655 kWh"),
        ("9" * 41, "far too large"),
        (True, "must be a number"),
        ([1], "must be a number"),
    ],
)
def test_bad_energy_is_refused_with_a_sentence(text, message):
    with pytest.raises(InvalidInput, match=message):
        parse_energy(text)


@pytest.mark.parametrize(
    ("text", "unit", "wei"),
    [("0.001", "ether", 10**15), ("0.1", "ether", 10**17), ("1", "gwei", 10**9),
     ("1.5", "gwei", 1_500_000_000), ("12", "wei", 12), ("0.000000000000000001", "ether", 1),
     ("2", "ETHER", 2 * 10**18)],
)
def test_prices_convert_exactly_in_every_unit(text, unit, wei):
    assert parse_price(text, unit) == wei


@pytest.mark.parametrize(
    ("text", "unit", "message"),
    [("0.0000000000000000001", "ether", "at most 18 decimal places"),
     ("1.5", "wei", "whole number"),
     ("0", "ether", "more than 0"),
     ("1", "dollar", "Choose the price unit"),
     ("80000000000", "ether", "at most"),
     ("-0.1", "ether", "negative")],
)
def test_bad_prices_are_refused(text, unit, message):
    with pytest.raises(InvalidInput, match=message):
        parse_price(text, unit)


def test_ether_amounts_are_exact_and_bounded():
    assert parse_ether("0.1") == 10**17
    assert parse_ether("1.000000000000000001") == 10**18 + 1
    with pytest.raises(InvalidInput, match="absurdly large"):
        parse_ether("1000000001")
    with pytest.raises(InvalidInput, match="at most 18 decimal places"):
        parse_ether("0.1234567890123456789")


@pytest.mark.parametrize(
    ("text", "unit", "seconds"),
    [("90", "seconds", 90), ("1.5", "minutes", 90), ("2", "hours", 7200), ("1", "days", 86400)],
)
def test_durations_in_every_unit(text, unit, seconds):
    assert parse_duration(text, unit) == seconds


@pytest.mark.parametrize(
    ("text", "unit", "message"),
    [("0.5", "seconds", "whole seconds"), ("0", "minutes", "more than 0"),
     ("5", "weeks", "Choose the duration unit"), ("99999", "days", "absurdly long")],
)
def test_bad_durations_are_refused(text, unit, message):
    with pytest.raises(InvalidInput, match=message):
        parse_duration(text, unit)


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "x", "", str(2**48)])
def test_bad_lot_numbers_are_refused(text):
    with pytest.raises(InvalidInput):
        parse_lot_id(text)


def test_addresses_are_checksummed_and_bad_checksums_refused():
    lower = "0x" + "ab" * 20
    assert parse_address(lower) == parse_address(lower.upper().replace("0X", "0x"))
    checksummed = parse_address(lower)
    wrong = checksummed[:2] + checksummed[2:].swapcase()
    with pytest.raises(InvalidInput, match="not an Ethereum address"):
        parse_address(wrong)
    with pytest.raises(InvalidInput, match="Enter the address"):
        parse_address("")
    with pytest.raises(InvalidInput, match="not an Ethereum address"):
        parse_address("0x1234")


def test_formatting_is_exact_without_trailing_zeros():
    assert format_kwh(1500) == "1.5"
    assert format_kwh(0) == "0"
    assert format_ether(10**15) == "0.001"
    assert format_ether(10**18 + 1) == "1.000000000000000001"
    assert format_duration(90) == "1 min 30 s"
    assert format_duration(7200) == "2 h"
    assert format_duration(0) == "0 s"


@pytest.mark.parametrize(
    ("name", "args", "sentence"),
    [
        ("MarketBidTooLow", (2 * 10**15, 10**15),
         "Your bid of 0.001 ETH per kWh is too low: bid at least 0.002 ETH per kWh."),
        ("MarketSellerCannotBid", (1,), "You cannot bid on your own listing."),
        ("MarketListingNotOpen", (7,), "Listing #7 is not open for bids"),
        ("MarketNothingToWithdraw", ("0x" + "00" * 20,), "You have no credit to withdraw."),
        ("ERC20InsufficientBalance", ("0x" + "00" * 20, 1500, 2000),
         "You have only 1.5 kWh of energy tokens; this needs 2 kWh."),
        ("MarketDurationOutOfRange", (1, 60, 3600), "between 1 min and 1 h"),
        ("Panic", (0x11,), "internal error"),
        ("SomethingNew", (), "The contract refused the transaction."),
        ("MarketBidTooLow", (), "too low"),  # malformed revert data: still a sentence
    ],
)
def test_reverts_become_sentences_without_hex(name, args, sentence):
    text = revert_sentence(ContractReverted(name, args))
    assert sentence in text
    assert "0x" not in text and name not in text


def test_service_errors_map_to_statuses():
    assert isinstance(as_user_error(ContractReverted("MarketTradeNotOpen", (1,))), ActionRefused)
    assert isinstance(as_user_error(ChainUnavailable("down")), ChainDown)
    refused = as_user_error(ChainError("the node refused the transaction: insufficient funds"))
    assert "enough Ether" in refused.message
    assert as_user_error(WalletError("wrong passphrase or damaged keystore")).message == \
        "Wrong passphrase (or a damaged key file)."
