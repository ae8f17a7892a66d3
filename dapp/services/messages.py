"""Every sentence the app says to people: refusals, confirmations, notices, reverts, failures.

Sentences are never hex and never error names. The market's pre-checks (services/market.py), the
live notices (web/live.py) and the contract's reverts use the same functions where they say the
same thing, so a page and the chain cannot word one refusal differently.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

from dapp.errors import (
    DROPPED_BEHIND_GAP,
    DROPPED_NONCE_USED,
    DROPPED_OTHER_CHAIN,
    ChainError,
    ChainUnavailable,
    ContractReverted,
    WalletError,
)
from dapp.services.errors import ActionRefused, ChainDown, InvalidInput, UserError
from dapp.services.units import (
    MAX_ENERGY_WH,
    format_duration,
    format_ether,
    format_ether_fixed,
    format_kwh,
    format_kwh_fixed,
    format_time,
)
from hardware.protocol import SUPPLY

T = TypeVar("T")

Args = tuple


def _arg(args: Args, index: int, default: object = 0) -> object:
    """args[index] if present (a malformed revert may come without arguments)."""
    return args[index] if len(args) > index else default


def _eth(value: object) -> str:
    return f"{format_ether(int(value))} ETH"  # type: ignore[arg-type]


def _kwh(value: object) -> str:
    return f"{format_kwh(int(value))} kWh"  # type: ignore[arg-type]


# MeterRegistry.MeterStatus, in declaration order, in a few words.
_METER_STATES = ("never offered", "waiting for its owner's answer", "accepted", "declined",
                 "deactivated")
_METER_INACTIVE = (
    "No meter was ever offered at that address.",
    "That meter is waiting for its owner's answer.",
    "That meter has already been accepted; there is no offer to answer.",
    "That meter's offer was declined; it counts for nobody unless the operator offers it again.",
    "That meter was deactivated by the grid operator; it counts for nobody.",
)


def _status_index(value: object) -> int:
    """A MeterStatus number from a revert (-1 when it is not one)."""
    index = int(value)  # type: ignore[call-overload]
    return index if 0 <= index < len(_METER_STATES) else -1


def _meter_state(value: object) -> str:
    """A MeterStatus number from a revert as a few words."""
    index = _status_index(value)
    return _METER_STATES[index] if index >= 0 else "in use"


def _meter_inactive(value: object) -> str:
    """MeterInactive's sentence for the meter's status."""
    index = _status_index(value)
    return _METER_INACTIVE[index] if index >= 0 else "That meter cannot be used for this now."


# -- what people type (dapp/services/amounts.py, the wallet's forms) ----------------------------


def _cap(text: str) -> str:
    """`text` with a capital first letter."""
    return text[:1].upper() + text[1:]


def enter(what: str) -> str:
    """A required field left empty."""
    return f"Enter {what}."


def not_a_number(what: str) -> str:
    """A field that is not text or a whole number (JSON true, a list, ...)."""
    return f"{_cap(what)} must be a number like 1.5."


def far_too_large(what: str) -> str:
    """A number typed with absurdly many digits."""
    return f"{_cap(what)} is far too large."


def negative(what: str) -> str:
    """A number typed with a minus sign."""
    return f"{_cap(what)} cannot be negative."


def not_a_plain_number(what: str) -> str:
    """Signs, exponents, commas, spaces."""
    return f"{_cap(what)} must be a number like 1.5 (digits and at most one decimal point)."


def not_whole(what: str) -> str:
    """Decimals where the unit allows none."""
    return f"{_cap(what)} must be a whole number."


def too_many_decimals(what: str, places: int) -> str:
    """More decimals than the unit can hold exactly."""
    return f"{_cap(what)} can have at most {places} decimal places."


def not_whole_seconds(what: str) -> str:
    """A duration that is not a whole number of seconds."""
    return f"{_cap(what)} must come to whole seconds."


ENERGY_ZERO = "The amount of energy must be more than 0 kWh."
PRICE_UNIT_UNKNOWN = "Choose the price unit: ether, gwei or wei per kWh."
PRICE_ZERO = "The price must be more than 0."
ETHER_ZERO = "The amount of Ether must be more than 0."
ETHER_ABSURD = "That amount of Ether is absurdly large; check the number."
DURATION_UNIT_UNKNOWN = "Choose the duration unit: seconds, minutes, hours or days."
DURATION_ZERO = "The duration must be more than 0."
DURATION_ABSURD = "That duration is absurdly long; check the number."
LOT_NUMBER_MISSING = "Enter the listing number."
NO_SUCH_LOT_NUMBER = "There is no listing or trade with that number."


def energy_too_large(max_wh: int) -> str:
    """A lot larger than the market stores."""
    return f"The amount of energy can be at most {format_kwh(max_wh)} kWh."


def price_too_large(max_wei: int) -> str:
    """A price larger than the market stores."""
    return f"The price can be at most {format_ether(max_wei)} ether per kWh."


def address_missing(what: str) -> str:
    """An address field left empty."""
    return f"Enter the address of {what}."


def not_an_address(what: str) -> str:
    """An address field that is not text, or far too long."""
    return f"The address of {what} is not an Ethereum address."


def bad_address(what: str) -> str:
    """Text that is not 0x and 40 hex digits with a valid checksum."""
    return (f"The address of {what} is not an Ethereum address (0x followed by 40 hex digits, "
            "with a correct checksum if it has capital letters).")


# -- accounts and the wallet (dapp/services/wallet.py) ------------------------------------------


def passphrase_too_long(what: str) -> str:
    """A passphrase longer than the server accepts."""
    return f"{_cap(what)} is too long."


def passphrase_too_short(minimum: int) -> str:
    """A new account's passphrase below the minimum length."""
    return f"Choose a passphrase of at least {minimum} characters."


PASSPHRASES_DIFFER = "The two passphrases do not match."
LABEL_NOT_TEXT = "The label must be text."


def label_unusable(max_length: int) -> str:
    """A label too long or with unprintable characters."""
    return f"A label can have at most {max_length} printable characters."


KEYFILE_MISSING = "Choose a keystore file to import."
KEYFILE_TOO_LARGE = "That file is too large to be a keystore file."
KEYFILE_NOT_JSON = "That file is not a keystore file (it is not JSON)."


def no_such_account(address: str) -> str:
    """Logging in as an address this server's keystore does not hold."""
    return f"There is no account {address} on this server."


def cannot_send_more_than(balance_wei: int, wei: int) -> str:
    """Sending more Ether than the account has."""
    return (f"You have only {format_ether(balance_wei)} ETH; you cannot send "
            f"{format_ether(wei)} ETH.")


def nothing_left_for_fee(wei: int, fee_wei: int) -> str:
    """Sending so much that the transaction fee cannot be paid."""
    return (f"Sending {format_ether(wei)} ETH leaves too little for the transaction fee "
            f"(about {format_ether(fee_wei)} ETH); send a little less.")


def ether_sent(amount: str, to: str) -> str:
    """An Ether transfer handed to the node."""
    return f"Sending {amount} ETH to {to}."


NO_CREDIT = "You have no credit to withdraw."


def withdraw_sent(credit_wei: int) -> str:
    """A withdrawal of market credit handed to the node."""
    return f"Withdrawing {format_ether(credit_wei)} ETH."


def mining_unavailable(detail: str) -> str:
    """Start/stop mining on a node that has no such control."""
    return "Mining cannot be started or stopped on this node: " + detail


def node_refused(reason: object) -> str:
    """The node answered a control request with an error."""
    return f"The node refused: {reason}"


# -- the market: refusals (pre-checks and reverts) --------------------------------------------


def duration_out_of_range(seconds: int, low: int, high: int) -> str:
    """An auction's duration outside the deployment's bounds."""
    return (f"An auction must last between {format_duration(low)} and "
            f"{format_duration(high)}; {format_duration(seconds)} is not allowed.")


def not_enough_tokens(balance_wh: int, wanted_wh: int) -> str:
    """Selling more energy tokens than the account holds."""
    return (f"You have only {format_kwh(balance_wh)} kWh of energy tokens; you cannot sell "
            f"{format_kwh(wanted_wh)} kWh.")


def no_such_listing(lot_id: int) -> str:
    """A lot id nobody listed."""
    return f"There is no listing #{lot_id}."


def listing_closed_for_bids(lot_id: int) -> str:
    """A bid on a lot that is no longer listed."""
    return f"Listing #{lot_id} is no longer open for bids."


SELLER_CANNOT_BID = "You cannot bid on your own listing."


def auction_ended(lot_id: object) -> str:
    """A bid after the deadline."""
    return f"The auction for listing #{lot_id} has ended; it takes no more bids."


def auction_not_ended(lot_id: object, deadline: int) -> str:
    """A finalize before the deadline."""
    return (f"The auction for listing #{lot_id} has not ended yet "
            f"(it ends at {format_time(deadline)}).")


def bid_below_minimum(lot_id: int, minimum_wei: int) -> str:
    """A bid below the start price or the highest bid plus the increment (pre-check)."""
    return f"Bid at least {format_ether(minimum_wei)} ETH per kWh on listing #{lot_id}."


def deposit_exceeds_balance(deposit_wei: int, energy_wh: int, balance_wei: int) -> str:
    """A bid whose deposit (plus the fee) the bidder cannot pay."""
    return (f"This bid needs a deposit of {format_ether(deposit_wei)} ETH for the whole lot "
            f"({format_kwh(energy_wh)} kWh) plus the fee; you have "
            f"{format_ether(balance_wei)} ETH.")


def trade_not_open(trade_id: object) -> str:
    """Closing a lot that is not an open trade."""
    return f"Trade #{trade_id} is not open."


def not_trade_party(trade_id: object) -> str:
    """Closing someone else's trade."""
    return f"Only the buyer or the seller of trade #{trade_id} can close it."


def seller_close_too_early(trade_id: object, close_at: int) -> str:
    """The seller closing before the trade stalls or the buyer's close request's grace ends."""
    return (f"As the seller you can close trade #{trade_id} only once it is stalled (the "
            "buyer's meter silent for the stall timeout) or the buyer's close request has "
            f"waited its grace time: from {format_time(close_at)}.")


def close_already_requested(trade_id: object, grace_ends_at: int) -> str:
    """The buyer asking again to close while its request is within the grace time."""
    return (f"You already asked to close trade #{trade_id}: the relays are open and your "
            "meter's next reading settles the tail and closes it. If no reading comes, you "
            f"can close it from {format_time(grace_ends_at)}.")


NO_LOAD_METER = ("Only an account with an accepted load meter can bid: its signed readings "
                 "are what settle a trade. Accept the load meter the grid operator offered "
                 "you on the wallet page (or ask the operator for one), then bid.")


def minimum_charge_note(charge_wh: int, charge_wei: int) -> str:
    """On a listing's card: what winning costs even if the winner takes nothing."""
    return (f"Winning costs at least {format_ether(charge_wei)} ETH at this bid (the minimum "
            f"charge, {format_kwh(charge_wh)} kWh), even if you take nothing.")


def trade_closing_note(grace_ends_at: int) -> str:
    """On a trade's card: the buyer asked to close (two-phase close)."""
    return ("Closing: relays open; the buyer's next reading settles the tail (if none comes, "
            f"either party can close it from {format_time(grace_ends_at)}).")


def trade_queued_note(active_id: int) -> str:
    """On a queued trade's card: another trade of the buyer is being settled first."""
    return (f"Queued behind trade #{active_id}: its seller does not export and is not paid "
            "until this trade is the buyer's active one.")


def trade_stalled_note(stall_at: int) -> str:
    """On a stalled trade's card."""
    return (f"Stalled since {format_time(stall_at)}: the buyer's meter is silent; the seller's "
            "relay is open and the seller may close it, charging the most the meter could "
            "have drawn.")


def trade_delivering_note(stall_at: int) -> str:
    """On a delivering trade's card: when it stalls if the buyer's meter stays silent."""
    return (f"Delivering; it stalls at {format_time(stall_at)} if the buyer's meter stays "
            "silent until then (each reading moves this on).")


def already_finalized(lot_id: int) -> str:
    """Finalizing a lot that is no longer listed."""
    return f"Listing #{lot_id} has already been finalized."


# -- the market: what was sent ----------------------------------------------------------------


def listing_sent(energy_wh: int, price_wei: int, seconds: int) -> str:
    """A listing is on its way."""
    return (f"Listing {format_kwh(energy_wh)} kWh from {format_ether(price_wei)} ETH per kWh for "
            f"{format_duration(seconds)}.")


def bid_sent(price_wei: int, lot_id: int, deposit_wei: int) -> str:
    """A bid is on its way."""
    return (f"Bidding {format_ether(price_wei)} ETH per kWh on listing #{lot_id} "
            f"(deposit {format_ether(deposit_wei)} ETH).")


def close_sent(trade_id: int) -> str:
    """A close is on its way."""
    return f"Closing the connection of trade #{trade_id}."


def close_request_sent(trade_id: int, grace_seconds: int) -> str:
    """The buyer's close request (first phase) is on its way."""
    return (f"Asking to close trade #{trade_id}: the relays open once it is mined, and your "
            "meter's next reading settles the tail and closes the trade (if no reading comes "
            f"within {format_duration(grace_seconds)}, close it again).")


def finalize_sent(lot_id: int) -> str:
    """A finalize is on its way."""
    return f"Finalizing listing #{lot_id}."


# -- live notices (pushed to the people an event concerns) -------------------------------------


def new_bid_notice(lot_id: object, price_wei: int) -> str:
    """To the seller: someone bid."""
    return f"New bid on your listing #{lot_id}: {format_ether(price_wei)} ETH per kWh."


def bid_in_notice(lot_id: object, price_wei: int) -> str:
    """To the bidder: the bid is mined."""
    return f"Your bid of {format_ether(price_wei)} ETH per kWh on listing #{lot_id} is in."


def credited_notice(amount_wei: int, lot_id: object) -> str:
    """To the account credited (outbid deposit, refund)."""
    return (f"{format_ether(amount_wei)} ETH was credited to you "
            f"(lot #{lot_id}); withdraw it from your wallet.")


def expired_notice(lot_id: object, energy_wh: int) -> str:
    """To the seller: no bids."""
    return (f"Listing #{lot_id} ended without bids; your "
            f"{format_kwh(energy_wh)} kWh are back.")


def sold_notice(trade_id: object, price_wei: int) -> str:
    """To the seller: the auction ended with a buyer."""
    return (f"Listing #{trade_id} sold at {format_ether(price_wei)} ETH per kWh; the trade "
            "is open.")


def won_notice(trade_id: object, price_wei: int) -> str:
    """To the buyer: the auction ended in their favour."""
    return (f"You won listing #{trade_id} at {format_ether(price_wei)} ETH per kWh; the "
            "trade is open.")


def trade_closed_notice(trade_id: object, delivered_wh: int) -> str:
    """To both parties: the trade closed."""
    return f"Trade #{trade_id} closed after {format_kwh(delivered_wh)} kWh delivered."


def withdrawn_notice(amount_wei: int) -> str:
    """To the account that withdrew."""
    return f"{format_ether(amount_wei)} ETH withdrawn to your account."


def transaction_failed_notice(kind: str, reason: str) -> str:
    """To the sender: a transaction sent from the pages failed when mined."""
    return f"Your {kind} failed: {reason}"


_DROPPED = {
    DROPPED_NONCE_USED: "another transaction of your account took its place, so it was never "
                        "carried out. Nothing was paid or changed by it; please send it again "
                        "if you still want it.",
    DROPPED_BEHIND_GAP: "the node lost an earlier transaction of your account, so this one "
                        "could never be carried out. Nothing was paid or changed by it; "
                        "please send it again.",
    DROPPED_OTHER_CHAIN: "it was signed for another chain (the node was reset), so it was "
                         "never sent to this one. Nothing was paid or changed by it.",
}


def transaction_dropped(why: str) -> str:
    """Why a transaction that left the pending list was never mined (a DROPPED_* code)."""
    return _DROPPED.get(why, "the node gave it up, so it was never carried out. Nothing was "
                             "paid or changed by it; please send it again.")


# -- meters offered to their owners (consent) --------------------------------------------------

_STATUS_WORDS = {
    "active": "has already been accepted",
    "declined": "was declined",
    "deactivated": "was deactivated by the grid operator",
    "offered": "is waiting for its owner's answer",
}


def meter_never_offered(address: str) -> str:
    """Accepting or declining an address no meter was ever offered at."""
    return (f"No meter {address} was ever offered; check the address the meter (or the grid "
            "operator) gave you.")


def meter_not_yours(address: str) -> str:
    """Accepting or declining a meter offered to another account."""
    return (f"Meter {address} was not offered to you; only the account it was offered to can "
            "accept or decline it.")


def meter_not_pending(address: str, status: str) -> str:
    """Accepting or declining a meter that is no longer (or not) an open offer."""
    state = _STATUS_WORDS.get(status, "is not an open offer")
    return f"Meter {address} {state}; there is no offer to answer."


def second_load_meter(current: str) -> str:
    """Accepting a load meter while another load meter of the owner is active."""
    return (f"You already have an active load meter ({current}); only one load meter settles "
            "your trades. Ask the grid operator to deactivate it before you accept another.")


def meter_accept_sent(address: str, kind: str) -> str:
    """An accept is on its way."""
    effect = ("mint energy tokens for you" if kind == SUPPLY
              else "settle your trades")
    return f"Accepting the {kind} meter {address}: once mined, its signed readings {effect}."


def meter_decline_sent(address: str) -> str:
    """A decline is on its way."""
    return f"Declining meter {address}: its readings will never count for you."


METER_FORM = "Choose a meter offered to you."


# -- the web app: requests, sessions, forms ----------------------------------------------------

CSRF_REFUSED = ("The request came without a valid security (CSRF) token, so nothing was "
                "changed. Reload the page and try again.")
HTTP_ERRORS = {
    404: "There is no such page.",
    405: "That address does not take this kind of request.",
    413: "That upload is too large.",
}
REQUEST_REFUSED = "The request was refused."
TITLE_REFUSED = "Request refused"
TITLE_NOT_POSSIBLE = "Not possible"
TITLE_SERVER_ERROR = "Server error"
ACCOUNTS_FROM_THIS_MACHINE = (
    "New accounts are created and imported on the server's own machine only; ask its operator "
    "(or set MICROGRID_ACCOUNTS_FROM_NETWORK)."
)


def too_many_new_accounts(wait_seconds: float) -> str:
    """Account creation refused by the per-client limit."""
    return f"Too many new accounts from here; wait {math.ceil(wait_seconds)} seconds and try again."


def unknown_host(host: str, own_names: list[str]) -> str:
    """A request whose Host header is not one of the server's names."""
    return (f"This server does not answer to the name {host[:100]!r}. Open it by one of its "
            f"own names ({', '.join(own_names[:4])}) or have its operator allow this name "
            "(--allowed-host / MICROGRID_ALLOWED_HOSTS).")


SERVER_ERROR = "Something went wrong on the server. Please try again."
API_LOGIN_FIRST = "Log in first (POST /api/v1/session)."
SOCKET_LOGIN_FIRST = "Log in first: this connection needs a logged-in session."
LOGGED_OUT = "You are logged out; your key was removed from the server's memory."
JSON_OBJECT_EXPECTED = "Send a JSON object as the request body."
MINING_ACTION_API = "Set 'action' to \"start\" or \"stop\"."
MINING_ACTION_FORM = "Choose whether to start or stop mining."


def too_many_attempts(wait_seconds: float) -> str:
    """A login, account creation or import over the rate limit."""
    return f"Too many attempts; wait {math.ceil(wait_seconds)} seconds and try again."


def account_ready(address: str, imported: bool = False) -> str:
    """An account was created or imported."""
    return f"Account {address} {'imported' if imported else 'created'}. Log in with its passphrase."


def field_not_text(name: str) -> str:
    """A JSON field that is a list, an object or a boolean."""
    return f"The field {name!r} must be text or a number."


def transaction_pending(message: str, tx_hash: str) -> str:
    """After an action from a page: what was sent, and that it is pending."""
    return f"{message} Transaction {tx_hash} is pending."


def mining_switched(mining: bool, detail: str) -> str:
    """After Start/Stop mining on the wallet page."""
    return f"Mining {'started' if mining else 'stopped'}: {detail}."


# -- contract reverts ---------------------------------------------------------------------------

_SENTENCES: dict[str, Callable[[Args], str]] = {
    # EnergyMarket
    "MarketEnergyOutOfRange": lambda a: (
        f"A lot must hold more than 0 and at most {format_kwh(MAX_ENERGY_WH)} kWh."
    ),
    "MarketPriceOutOfRange": lambda a: "That price is out of range: it must be above zero.",
    "MarketDurationOutOfRange": lambda a: duration_out_of_range(
        int(_arg(a, 0)), int(_arg(a, 1)), int(_arg(a, 2))  # type: ignore[call-overload]
    ),
    "MarketListingNotOpen": lambda a: (
        f"Listing #{_arg(a, 0)} is not open for bids (it has ended or does not exist)."
    ),
    "MarketAuctionEnded": lambda a: auction_ended(_arg(a, 0)),
    "MarketAuctionNotEnded": lambda a: auction_not_ended(
        _arg(a, 0), int(_arg(a, 1))  # type: ignore[call-overload]
    ),
    "MarketSellerCannotBid": lambda a: SELLER_CANNOT_BID,
    "MarketBidTooLow": lambda a: (
        f"Your bid of {_eth(_arg(a, 1))} per kWh is too low: bid at least "
        f"{_eth(_arg(a, 0))} per kWh."
    ),
    "MarketDepositMismatch": lambda a: (
        f"The deposit sent ({_eth(_arg(a, 1))}) is not the {_eth(_arg(a, 0))} this bid needs."
    ),
    "MarketTradeNotOpen": lambda a: trade_not_open(_arg(a, 0)),
    "MarketNotTradeParty": lambda a: not_trade_party(_arg(a, 0)),
    "MarketTradeNotStalled": lambda a: seller_close_too_early(
        _arg(a, 0), int(_arg(a, 1))  # type: ignore[call-overload]
    ),
    "MarketCloseAlreadyRequested": lambda a: close_already_requested(
        _arg(a, 0), int(_arg(a, 1))  # type: ignore[call-overload]
    ),
    "MarketBidderHasNoLoadMeter": lambda a: NO_LOAD_METER,
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
    "MeterAlreadyRegistered": lambda a: (
        f"That meter was offered before ({_meter_state(_arg(a, 1))}); it can be offered again "
        "only after its owner declines it."
    ),
    "MeterNotRegistered": lambda a: "No meter was ever offered at that address.",
    "MeterNotAccepted": lambda a: (
        "Its owner has not accepted that meter yet, so its readings do not count."
    ),
    "MeterInactive": lambda a: _meter_inactive(_arg(a, 1)),
    "MeterNotOwner": lambda a: (
        "That meter was not offered to you; only the account it was offered to can accept or "
        "decline it."
    ),
    "MeterLoadMeterExists": lambda a: (
        "You already have an active load meter; only one load meter settles your trades. Ask "
        "the grid operator to deactivate it before you accept another."
    ),
    "MeterSignatureInvalid": lambda a: (
        "That reading was not signed by the meter for this chain and registry; it was refused."
    ),
    "MeterSequenceNotNewer": lambda a: (
        "That reading is not newer than the last one the meter signed (a replay); it was "
        "refused."
    ),
    "MeterReadingBackwards": lambda a: (
        f"The meter reading ({_kwh(_arg(a, 1))}) is below the last one ({_kwh(_arg(a, 0))})."
    ),
    "MeterReadingImplausible": lambda a: (
        f"The meter reading is implausible: {_kwh(_arg(a, 0))} in "
        f"{format_duration(_arg(a, 2))} is more than the meter's rating allows "
        f"({_kwh(_arg(a, 1))})."
    ),
    "MeterReadingStale": lambda a: (
        f"That reading signed block {_arg(a, 0)}, more than 32 blocks ago (the oldest accepted "
        f"now is {_arg(a, 1)}); it was refused. The meter's next reading will be fresh."
    ),
    "MeterReadingBlockUnknown": lambda a: (
        f"That reading signed block {_arg(a, 0)}, which is not mined yet (this is block "
        f"{_arg(a, 1)}); it was refused."
    ),
    "MeterBatchMalformed": lambda a: (
        f"That batch of readings is malformed ({_arg(a, 0)} bytes is not a whole number of "
        "readings); nothing in it was recorded."
    ),
    # EIP-712 domain strings (only the registry's constructor can raise these)
    "InvalidShortString": lambda a: "The registry's signing domain is malformed.",
    "StringTooLong": lambda a: "The registry's signing domain is malformed.",
    # Solidity built-ins
    "Error": lambda a: f"The contract refused: {_arg(a, 0, 'no reason given')}.",
    "Panic": lambda a: "The contract stopped with an internal error.",
    # Not the contract's: the transaction's gas limit (dapp.chain.tx) ran out when mined
    "OutOfGas": lambda a: (
        "The transaction ran out of gas when it was mined (the chain changed after its estimate); "
        "nothing it asked for happened. Try again."
    ),
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


def sentenced(action: Callable[[], T]) -> T:
    """Run a chain read or action; a chain, contract or wallet failure becomes its sentence."""
    try:
        return action()
    except (ContractReverted, ChainError, WalletError) as exc:
        raise as_user_error(exc) from None


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


# -- the network, for DApp developers (GET /api/v1/chain, the wallet's Network panel) ----------


def no_abi(name: str, known: list[str]) -> str:
    """An ABI asked for by a name that is none of the deployment's contracts."""
    return f"There is no contract {name!r} here; the ABIs are {', '.join(known)}."


def deployment_unknown(exc: ChainError) -> str:
    """Why the chain answers but the contracts' addresses are not known."""
    if isinstance(exc, ChainUnavailable):
        return unavailable_detail(exc)
    text = str(exc).strip()
    text = text[:1].upper() + text[1:]
    return "The Microgrid contracts on this chain are not known: " + \
        (text if text.endswith(".") else text + ".")


# -- the terminal: one line per trade event (`microgrid serve`, `microgrid demo`) --------------


def trade_event_line(name: str, args: dict, who: Callable[[str], str]) -> str | None:
    """The terminal's line for a market event (listed, bid, won, ended, closed), else None.

    `who` names an account (its label, or its short address).
    """
    if name == "Listed":
        return (f"listed: #{args['listingId']} {_kwh(args['energyWh'])} by "
                f"{who(args['seller'])}, from {_eth(args['startPricePerKWh'])} per kWh")
    if name == "BidPlaced":
        return (f"bid: #{args['listingId']} {_eth(args['pricePerKWh'])} per kWh by "
                f"{who(args['bidder'])}")
    if name == "TradeOpened":
        return (f"won: #{args['tradeId']} by {who(args['buyer'])} at "
                f"{_eth(args['pricePerKWh'])} per kWh; the trade is open")
    if name == "ListingExpired":
        return f"ended: #{args['listingId']} without bids; the tokens went back"
    if name == "ConnectionClosed":
        return (f"closed: trade #{args['tradeId']} after {_kwh(args['deliveredWh'])} "
                "delivered")
    return None


# -- trading agents (dapp/services/agents.py) --------------------------------------------------

AGENT_KEY_NOTE = (
    "While the agent is on, the server keeps your decrypted key in its memory (never on disk) so "
    "it can sign for you, as it does for a logged-in session. Logging out does not stop the "
    "agent; turning it off, the server stopping, or {hours} hours after you last turned it on "
    "or changed its limits forgets the key."
)
AGENT_SIGNAL_NOTE = (
    "The chain does not know your battery's charge. While this server reads your supply meter, "
    "the agent takes the charge from the voltage it measures at your battery (a {volts} V "
    "lead-acid bank of {capacity} kWh, set by the server); otherwise it counts your energy "
    "tokens (with those listed or still to deliver, and energy delivered to you on open trades), "
    "which do not fall when your household uses energy itself. The expected use is your meters' "
    "net power of the last hour."
)
AGENT_ON_FIELD = "Set 'on' to true or false."
AGENT_ON_FORM = "Choose whether to turn the agent on or off."
AGENT_WAITING = "waiting: a transaction of yours is still pending"


def agent_amount_not_number(what: str, unit: str, example: str) -> str:
    """An agent price or limit that is not a decimal number."""
    return f"The {what} must be a number of {unit}, like {example}."


def agent_amount_negative(what: str) -> str:
    """An agent price or limit below zero."""
    return f"The {what} cannot be negative."


def agent_amount_decimals(what: str) -> str:
    """An agent price or limit finer than a wei."""
    return f"The {what} can have at most 18 decimal places."


def agent_reserve_not_percent() -> str:
    """An agent reserve that is not a number."""
    return "The battery reserve must be a number of percent, like 40."


def agent_reserve_above_all() -> str:
    """An agent reserve above the whole battery."""
    return "The battery reserve can be at most 100 %."


def agent_not_whole_wei(what: str) -> str:
    """An agent price or limit, given in wei, that is not a whole number."""
    return f"The {what} must be a whole number of wei, like 1000000000000000."


def agent_amount_above(what: str, most_wei: int) -> str:
    """An agent price or limit beyond what anyone means (a typo)."""
    return f"The {what} can be at most {format_ether_fixed(most_wei)} ETH."


def agent_floor_above_ceiling(floor_wei: int, ceiling_wei: int) -> str:
    """An agent whose lowest selling price is above its highest buying price."""
    return (f"The floor price ({format_ether_fixed(floor_wei)} ETH/kWh) cannot be above the "
            f"ceiling price ({format_ether_fixed(ceiling_wei)} ETH/kWh).")


# The agent's log: one line per decision, in fixed decimals so the lines align.
def _pct(percent: float) -> str:
    return f"{percent:.0f} %"


def agent_log_battery(now_percent: float, later_percent: float, hours: float) -> str:
    """"battery 82 %", plus the projection when the forecast moves it."""
    now, later = _pct(now_percent), _pct(later_percent)
    if later == now:
        return f"battery {now}"
    return f"battery {now} ({later} expected in {hours:g} h)"


def agent_log_offered(energy_wh: int, battery: str, reserve_percent: float,
                      price_wei: int) -> str:
    """The agent listed its surplus at the floor price."""
    return (f"offered {format_kwh_fixed(energy_wh)} kWh: {battery} is above the "
            f"{_pct(reserve_percent)} reserve; start price {format_ether_fixed(price_wei)} "
            "ETH/kWh (floor)")


def agent_log_few_tokens(battery: str, reserve_percent: float, tokens_wh: int) -> str:
    """The battery has a surplus but too few tokens are left to list it."""
    return (f"did not sell: {battery} is above the {_pct(reserve_percent)} reserve but only "
            f"{format_kwh_fixed(tokens_wh)} kWh of tokens are left to list")


def agent_log_closed(trade_id: int, delivered_wh: int, energy_wh: int, battery: str,
                     reserve_percent: float) -> str:
    """The agent closed a trade it buys through: the need is met."""
    return (f"closed trade {trade_id} after {format_kwh_fixed(delivered_wh)} of "
            f"{format_kwh_fixed(energy_wh)} kWh: {battery} is at or above the "
            f"{_pct(reserve_percent)} reserve, so the need is met")


def agent_log_no_lot(need_wh: int, battery: str, reserve_percent: float) -> str:
    """The agent would buy, but nothing is for sale."""
    return (f"wanted {format_kwh_fixed(need_wh)} kWh ({battery} is below the "
            f"{_pct(reserve_percent)} reserve) but no lot is open")


def agent_log_above_ceiling(lot_id: int, price_wei: int, ceiling_wei: int) -> str:
    """A lot whose next bid is above the agent's ceiling."""
    return (f"did not bid on lot {lot_id}: its next bid {format_ether_fixed(price_wei)} ETH/kWh "
            f"is above the {format_ether_fixed(ceiling_wei)} ETH/kWh ceiling")


def agent_log_over_daily_limit(lot_id: int, deposit_wei: int, committed_wei: int,
                               daily_limit_wei: int) -> str:
    """A lot whose deposit would take today's spending past the agent's limit."""
    return (f"did not bid on lot {lot_id}: its deposit {format_ether_fixed(deposit_wei)} ETH "
            f"would bring today's spending to {format_ether_fixed(committed_wei + deposit_wei)} "
            f"ETH, above the {format_ether_fixed(daily_limit_wei)} ETH daily limit")


def agent_log_bid(lot_id: int, energy_wh: int, price_wei: int, battery: str,
                  reserve_percent: float, need_wh: int, deposit_wei: int, left_wei: int,
                  daily_limit_wei: int) -> str:
    """The agent bid on a lot to cover its need."""
    return (f"bid {format_ether_fixed(price_wei)} ETH/kWh on lot {lot_id} "
            f"({format_kwh_fixed(energy_wh)} kWh): {battery} is below the "
            f"{_pct(reserve_percent)} reserve and needs {format_kwh_fixed(need_wh)} kWh; deposit "
            f"{format_ether_fixed(deposit_wei)} ETH, {format_ether_fixed(left_wei)} ETH left of "
            f"today's {format_ether_fixed(daily_limit_wei)} ETH limit")


def agent_turned_on(reserve: str, floor: str, ceiling: str, daily: str) -> str:
    """The owner turned the agent on (or changed its limits while on)."""
    return (f"Agent on: keeps a {reserve} % reserve, sells at no less than {floor} ETH/kWh, "
            f"buys at up to {ceiling} ETH/kWh and {daily} ETH a day. It acts on the next block.")


def agent_limits_saved(reserve: str, floor: str, ceiling: str, daily: str) -> str:
    """The owner saved limits with the agent off."""
    return (f"Agent off; limits saved: {reserve} % reserve, floor {floor} ETH/kWh, ceiling "
            f"{ceiling} ETH/kWh, {daily} ETH a day.")


AGENT_TURNED_OFF = "Agent off: it sends nothing more, and the server forgot your key."


def agent_expired(hours: float) -> str:
    """The agent turned itself off after its time limit."""
    return (f"Agent off: {hours:g} hours passed since you turned it on; the server forgot your "
            "key. Turn it on again to go on trading.")


def agent_action_failed(what: str, reason: str) -> str:
    """An action the agent decided on was refused (pre-check or revert)."""
    return f"could not {what}: {reason}"


def agent_close_pending(trade_id: object) -> str:
    """The agent asked to close the active trade; the next load reading finishes it."""
    return (f"trade {trade_id}: close requested, the relays are open; your load meter's next "
            "reading settles what was delivered, then the trade closes")


AGENT_NO_LOAD_METER = (
    "did not bid: only accounts with an accepted load meter may bid (its readings settle the "
    "trade); accept the operator's offer of one on this page")


def agent_finalized(lot_id: object) -> str:
    """The agent ended its own (or its won) auction because the server has no finalizer."""
    return f"finalized listing {lot_id}: its auction has ended"
