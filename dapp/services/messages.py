"""Contract reverts and chain failures as sentences for people (never hex, never error names)."""

from __future__ import annotations

from collections.abc import Callable

from dapp.errors import ChainError, ChainUnavailable, ContractReverted, WalletError
from dapp.services.amounts import (
    MAX_ENERGY_WH,
    format_duration,
    format_ether,
    format_kwh,
    format_time,
)
from dapp.services.errors import ActionRefused, ChainDown, InvalidInput, UserError

Args = tuple


def _arg(args: Args, index: int, default: object = 0) -> object:
    """args[index] if present (a malformed revert may come without arguments)."""
    return args[index] if len(args) > index else default


def _eth(value: object) -> str:
    return f"{format_ether(int(value))} ETH"  # type: ignore[arg-type]


def _kwh(value: object) -> str:
    return f"{format_kwh(int(value))} kWh"  # type: ignore[arg-type]


_SENTENCES: dict[str, Callable[[Args], str]] = {
    # EnergyMarket
    "MarketEnergyOutOfRange": lambda a: (
        f"A lot must hold more than 0 and at most {format_kwh(MAX_ENERGY_WH)} kWh."
    ),
    "MarketPriceOutOfRange": lambda a: "That price is out of range: it must be above zero.",
    "MarketDurationOutOfRange": lambda a: (
        f"An auction must last between {format_duration(_arg(a, 1))} and "
        f"{format_duration(_arg(a, 2))}; {format_duration(_arg(a, 0))} is not allowed."
    ),
    "MarketListingNotOpen": lambda a: (
        f"Listing #{_arg(a, 0)} is not open for bids (it has ended or does not exist)."
    ),
    "MarketAuctionEnded": lambda a: (
        f"The auction for listing #{_arg(a, 0)} has ended; it takes no more bids."
    ),
    "MarketAuctionNotEnded": lambda a: (
        f"The auction for listing #{_arg(a, 0)} has not ended yet "
        f"(it ends at {format_time(_arg(a, 1))})."
    ),
    "MarketSellerCannotBid": lambda a: "You cannot bid on your own listing.",
    "MarketBidTooLow": lambda a: (
        f"Your bid of {_eth(_arg(a, 1))} per kWh is too low: bid at least "
        f"{_eth(_arg(a, 0))} per kWh."
    ),
    "MarketDepositMismatch": lambda a: (
        f"The deposit sent ({_eth(_arg(a, 1))}) is not the {_eth(_arg(a, 0))} this bid needs."
    ),
    "MarketTradeNotOpen": lambda a: f"Trade #{_arg(a, 0)} is not open.",
    "MarketNotTradeParty": lambda a: (
        f"Only the buyer or the seller of trade #{_arg(a, 0)} can close it."
    ),
    "MarketDeliveryNotTimedOut": lambda a: (
        f"As the seller you can close trade #{_arg(a, 0)} only after deliveries stop; "
        f"wait until {format_time(_arg(a, 1))}."
    ),
    "MarketCallerNotRegistry": lambda a: "Only the meter registry can report deliveries.",
    "MarketNothingToWithdraw": lambda a: "You have no credit to withdraw.",
    "MarketWithdrawalFailed": lambda a: (
        "Sending your credit failed; it is still credited to you. Try again later."
    ),
    "MarketInvalidParameters": lambda a: "The market parameters are invalid.",
    "ReentrancyGuardReentrantCall": lambda a: "The market refused a re-entrant call.",
    # EnergyToken (OpenZeppelin ERC-20 errors included)
    "ERC20InsufficientBalance": lambda a: (
        f"You have only {_kwh(_arg(a, 1))} of energy tokens; this needs {_kwh(_arg(a, 2))}."
    ),
    "ERC20InsufficientAllowance": lambda a: "The token allowance is too small for this.",
    "ERC20InvalidReceiver": lambda a: "Energy tokens cannot be sent to that address.",
    "ERC20InvalidSender": lambda a: "Energy tokens cannot be sent from that address.",
    "ERC20InvalidApprover": lambda a: "That address cannot approve token transfers.",
    "ERC20InvalidSpender": lambda a: "That address cannot spend tokens.",
    "EnergyTokenCallerNotMarket": lambda a: "Only the market can move tokens in escrow.",
    "EnergyTokenCallerNotRegistry": lambda a: "Only the meter registry can mint energy tokens.",
    # MeterRegistry
    "AccessControlUnauthorizedAccount": lambda a: (
        "Your account is not allowed to do this (only the grid operator is)."
    ),
    "AccessControlBadConfirmation": lambda a: "The role change was not confirmed correctly.",
    "MeterZeroAddress": lambda a: "The meter and its owner need real addresses.",
    "MeterZeroRatedPower": lambda a: "A meter needs a rated power above zero.",
    "MeterAlreadyRegistered": lambda a: "That meter is already registered.",
    "MeterNotRegistered": lambda a: "That meter is not registered.",
    "MeterInactive": lambda a: "That meter has been deactivated by the operator.",
    "MeterReadingNotNewer": lambda a: (
        f"The meter reading ({_kwh(_arg(a, 1))}) is not newer than the last one "
        f"({_kwh(_arg(a, 0))})."
    ),
    "MeterReadingOutOfRange": lambda a: "The meter reading is out of range.",
    "MeterReadingImplausible": lambda a: (
        f"The meter reading is implausible: {_kwh(_arg(a, 0))} in "
        f"{format_duration(_arg(a, 2))} is more than the meter's rating allows "
        f"({_kwh(_arg(a, 1))})."
    ),
    # Solidity built-ins
    "Error": lambda a: f"The contract refused: {_arg(a, 0, 'no reason given')}.",
    "Panic": lambda a: "The contract stopped with an internal error.",
}


def revert_sentence(exc: ContractReverted) -> str:
    """The contract's custom error as a sentence."""
    make = _SENTENCES.get(exc.name)
    if make is None:
        return "The contract refused the transaction."
    try:
        return make(tuple(exc.args_))
    except (TypeError, ValueError, OverflowError, OSError):
        return "The contract refused the transaction."


def chain_error_sentence(exc: ChainError) -> str:
    """A chain failure other than a revert, as a sentence."""
    text = str(exc)
    lower = text.lower()
    if isinstance(exc, ChainUnavailable):
        return "The chain is not reachable right now; nothing was sent. Try again in a moment."
    if "insufficient funds" in lower:
        return "You do not have enough Ether for this and its transaction fee."
    if "no microgrid contracts" in lower or "not an energymarket" in lower:
        return (
            "There are no Microgrid contracts on this chain yet; the operator must deploy them "
            "(microgrid deploy)."
        )
    if "nonce" in lower:
        return "The node refused the transaction's number (nonce); try again."
    if "not mined within" in lower:
        return "The transaction was sent but is not mined yet; it stays in the pending list."
    return "The chain refused the transaction; nothing changed."


def unavailable_detail(exc: ChainError) -> str:
    """Why the chain cannot be read, for the banner: "The Ethereum node does not answer (...)"."""
    if isinstance(exc, ChainUnavailable):
        detail = str(exc).removeprefix("chain unavailable: ").strip()
        return f"The Ethereum node does not answer ({detail})."
    return chain_error_sentence(exc)


def wallet_sentence(exc: WalletError) -> str:
    """A keystore failure as a sentence (the keystore's messages are already plain words)."""
    text = str(exc).strip()
    if text == "wrong passphrase or damaged keystore":
        return "Wrong passphrase (or a damaged key file)."
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def as_user_error(exc: BaseException) -> UserError:
    """Any error the services know, as the UserError to show (UserErrors pass through)."""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, ContractReverted):
        return ActionRefused(revert_sentence(exc))
    if isinstance(exc, ChainUnavailable):
        return ChainDown(chain_error_sentence(exc))
    if isinstance(exc, ChainError):
        sentence = chain_error_sentence(exc)
        if "no Microgrid contracts" in sentence:
            return ChainDown(sentence)
        return ActionRefused(sentence)
    if isinstance(exc, WalletError):
        return InvalidInput(wallet_sentence(exc))
    raise TypeError(f"not a service error: {exc!r}")
