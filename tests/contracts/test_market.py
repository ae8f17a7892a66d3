"""EnergyMarket: list, bid, finalize, settle, close and withdraw, one function at a time."""

import dataclasses
from typing import NamedTuple

import pytest

from dapp.chain.contracts import decode_revert, load_artifact, revert_data_from_exception
from tests.contracts.conftest import PARAMS, PRICE, Chain, reverts
from tests.contracts.helpers import (
    LOAD,
    LOAD_W,
    ZERO_ADDRESS,
    Lot,
    Status,
    advance_to,
    block_time,
    buyer_closes,
    credit,
    deposit_wei,
    end_auction,
    ensure_load_meter,
    gas_cost,
    heartbeat,
    install_meter,
    list_lot,
    lot_of,
    market_event,
    measure,
    meter_of,
    mint,
    paid_wei,
    place_bid,
    recorded,
    run_ahead_of_wall_clock,
    supply,
    tokens,
    transfer,
    unchanged,
)

STOCK = 20_000  # Wh the seller's PV measured before each test
LOT = 1_500  # Wh in the lot under test
DURATION = 600
INC = PARAMS.min_increment_per_kwh
DEPOSIT = deposit_wei(LOT, PRICE)
TIMEOUT = PARAMS.stall_timeout


@pytest.fixture(autouse=True)
def _clock(chain: Chain) -> None:
    """Exact block times for every test (see tests/contracts/helpers.py)."""
    run_ahead_of_wall_clock(chain)


@pytest.fixture
def parties(seller: str, buyer: str, rival: str, stranger: str) -> list[str]:
    """Everyone whose balances, tokens and credits a refused call must leave alone."""
    return [seller, buyer, rival, stranger]


@pytest.fixture
def stocked(chain: Chain, operator: str, seller: str, supply_meter: str) -> None:
    """The seller holds STOCK Wh of tokens, minted by a supply reading."""
    mint(chain, operator, supply_meter, seller, STOCK)


@pytest.fixture
def listing(
    chain: Chain, stocked: None, operator: str, seller: str, buyer: str, rival: str,
    load_meter: str,
) -> int:
    """LOT Wh listed by the seller at PRICE for DURATION seconds; the buyer's load meter and
    the rival's are installed (only accounts with a load meter may bid)."""
    install_meter(chain, operator, load_meter, buyer, LOAD, LOAD_W)
    ensure_load_meter(chain, rival)
    return list_lot(chain, seller, LOT, PRICE, DURATION)


@pytest.fixture
def trade(chain: Chain, listing: int, buyer: str) -> int:
    """The buyer won the listing at PRICE."""
    place_bid(chain, buyer, listing, PRICE)
    end_auction(chain, listing, buyer)
    return listing


def who(request: pytest.FixtureRequest, name: str) -> str:
    """The address of a role fixture, by name."""
    return request.getfixturevalue(name)


# --- list ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("stocked")
def test_list_escrows_the_tokens(chain: Chain, seller: str):
    fn = chain.market.functions.list(LOT, PRICE, DURATION)
    assert fn.call({"from": seller}) == 1
    receipt = chain.send(fn, seller)
    deadline = block_time(chain, receipt) + DURATION
    assert chain.events(receipt) == [
        market_event(
            "Listed",
            listingId=1,
            seller=seller,
            energyWh=LOT,
            startPricePerKWh=PRICE,
            deadline=deadline,
        ),
        transfer(seller, chain.market.address, LOT),
    ]
    assert lot_of(chain, 1) == Lot(
        Status.LISTED, seller, ZERO_ADDRESS, LOT, PRICE, deadline, 0, 0, 0, 0
    )
    assert tokens(chain, seller) == STOCK - LOT
    assert tokens(chain, chain.market.address) == LOT
    assert chain.market.functions.lotCount().call() == 1
    assert list_lot(chain, seller, 1, 1) == 2


@pytest.mark.usefixtures("stocked")
@pytest.mark.parametrize(
    ("energy_wh", "price", "duration", "error", "args"),
    [
        (0, PRICE, DURATION, "MarketEnergyOutOfRange", (0,)),
        (2**48, PRICE, DURATION, "MarketEnergyOutOfRange", (2**48,)),
        (LOT, 0, DURATION, "MarketPriceOutOfRange", (0,)),
        (LOT, 2**96, DURATION, "MarketPriceOutOfRange", (2**96,)),
        (LOT, PRICE, 0, "MarketDurationOutOfRange", (0, 60, 86_400)),
        (LOT, PRICE, 59, "MarketDurationOutOfRange", (59, 60, 86_400)),
        (LOT, PRICE, 86_401, "MarketDurationOutOfRange", (86_401, 60, 86_400)),
    ],
)
def test_list_refuses_out_of_range(
    chain: Chain, parties: list[str], seller: str, energy_wh, price, duration, error, args
):
    with unchanged(chain, parties), reverts(error, *args):
        chain.send(chain.market.functions.list(energy_wh, price, duration), seller)
    assert chain.market.functions.lotCount().call() == 0


@pytest.mark.usefixtures("stocked")
@pytest.mark.parametrize(
    ("energy_wh", "price", "duration"), [(1, 1, 60), (STOCK, 2**96 - 1, 86_400)]
)
def test_list_accepts_the_bounds(chain: Chain, seller: str, energy_wh, price, duration):
    listing_id = list_lot(chain, seller, energy_wh, price, duration)
    lot = lot_of(chain, listing_id)
    assert (lot.energy_wh, lot.price_per_kwh) == (energy_wh, price)
    assert lot.deadline == chain.now() + duration


# --- bid -------------------------------------------------------------------------------------


def test_first_bid_at_the_start_price(chain: Chain, listing: int, seller: str, buyer: str):
    assert chain.market.functions.depositFor(listing, PRICE).call() == DEPOSIT
    before = chain.balance(buyer)
    receipt = place_bid(chain, buyer, listing, PRICE)
    assert chain.events(receipt) == [
        market_event(
            "BidPlaced", listingId=listing, bidder=buyer, pricePerKWh=PRICE, depositWei=DEPOSIT
        )
    ]
    assert chain.balance(buyer) == before - DEPOSIT - gas_cost(receipt)
    assert chain.balance(chain.market.address) == DEPOSIT
    lot = lot_of(chain, listing)
    assert (lot.status, lot.buyer, lot.price_per_kwh, lot.deposit_wei) == (
        Status.LISTED,
        buyer,
        PRICE,
        DEPOSIT,
    )
    assert credit(chain, buyer) == 0


def test_outbid_credits_the_previous_bidder(chain: Chain, listing: int, buyer: str, rival: str):
    place_bid(chain, rival, listing, PRICE)
    higher = PRICE + INC  # exactly the minimum increment
    receipt = place_bid(chain, buyer, listing, higher)
    assert chain.events(receipt) == [
        market_event(
            "BidPlaced",
            listingId=listing,
            bidder=buyer,
            pricePerKWh=higher,
            depositWei=deposit_wei(LOT, higher),
        ),
        market_event("Credited", account=rival, lotId=listing, amountWei=DEPOSIT),
    ]
    assert credit(chain, rival) == DEPOSIT
    assert chain.market.functions.creditOf(buyer).call() == 0
    assert chain.balance(chain.market.address) == DEPOSIT + deposit_wei(LOT, higher)
    assert lot_of(chain, listing).buyer == buyer


def test_outbid_bidders_credits_add_up(chain: Chain, listing: int, buyer: str, rival: str):
    place_bid(chain, rival, listing, PRICE)
    place_bid(chain, buyer, listing, PRICE + INC)
    place_bid(chain, rival, listing, PRICE + 2 * INC)
    place_bid(chain, buyer, listing, PRICE + 3 * INC)
    assert credit(chain, rival) == DEPOSIT + deposit_wei(LOT, PRICE + 2 * INC)
    assert credit(chain, buyer) == deposit_wei(LOT, PRICE + INC)


def test_the_highest_bidder_may_raise(chain: Chain, listing: int, buyer: str):
    place_bid(chain, buyer, listing, PRICE)
    receipt = place_bid(chain, buyer, listing, 2 * PRICE)
    assert chain.events(receipt)[1] == market_event(
        "Credited", account=buyer, lotId=listing, amountWei=DEPOSIT
    )
    assert credit(chain, buyer) == DEPOSIT


class BadBid(NamedTuple):
    """A bid the market must refuse, and the error it must name."""

    bidder: str
    price: int
    value: int
    error: str
    args: tuple
    listing_id: int = 1
    rival_first: bool = False  # the rival holds the highest bid at PRICE


BAD_BIDS = {
    "unknown listing": BadBid("buyer", PRICE, DEPOSIT, "MarketListingNotOpen", (2,), 2),
    "below the start price": BadBid(
        "buyer", PRICE - 1, deposit_wei(LOT, PRICE - 1), "MarketBidTooLow", (PRICE, PRICE - 1)
    ),
    "equal to the highest": BadBid(
        "buyer", PRICE, DEPOSIT, "MarketBidTooLow", (PRICE + INC, PRICE), rival_first=True
    ),
    "one wei short of the increment": BadBid(
        "buyer",
        PRICE + INC - 1,
        deposit_wei(LOT, PRICE + INC - 1),
        "MarketBidTooLow",
        (PRICE + INC, PRICE + INC - 1),
        rival_first=True,
    ),
    "deposit one wei short": BadBid(
        "buyer", PRICE, DEPOSIT - 1, "MarketDepositMismatch", (DEPOSIT, DEPOSIT - 1)
    ),
    "deposit one wei over": BadBid(
        "buyer", PRICE, DEPOSIT + 1, "MarketDepositMismatch", (DEPOSIT, DEPOSIT + 1)
    ),
    "no deposit": BadBid("buyer", PRICE, 0, "MarketDepositMismatch", (DEPOSIT, 0)),
    "outbid with the old deposit": BadBid(
        "buyer",
        PRICE + INC,
        DEPOSIT,
        "MarketDepositMismatch",
        (deposit_wei(LOT, PRICE + INC), DEPOSIT),
        rival_first=True,
    ),
    "the seller's own lot": BadBid("seller", PRICE, DEPOSIT, "MarketSellerCannotBid", (1,)),
    "price above 96 bits": BadBid("buyer", 2**96, DEPOSIT, "MarketPriceOutOfRange", (2**96,)),
}


@pytest.mark.parametrize("bad", list(BAD_BIDS.values()), ids=list(BAD_BIDS))
def test_bad_bids_are_refused(
    chain: Chain,
    request: pytest.FixtureRequest,
    listing: int,
    parties: list[str],
    rival: str,
    bad: BadBid,
):
    if bad.rival_first:
        place_bid(chain, rival, listing, PRICE)
    bidder = who(request, bad.bidder)
    with unchanged(chain, parties), reverts(bad.error, *bad.args):
        chain.send(chain.market.functions.bid(bad.listing_id, bad.price), bidder, bad.value)


@pytest.mark.parametrize("late", [0, 1, 3_600])
def test_no_bids_from_the_deadline_on(
    chain: Chain, listing: int, parties: list[str], buyer: str, rival: str, late: int
):
    place_bid(chain, rival, listing, PRICE)
    deadline = lot_of(chain, listing).deadline
    advance_to(chain, deadline + late)
    with unchanged(chain, parties), reverts("MarketAuctionEnded", listing, deadline):
        chain.send(chain.market.functions.bid(listing, PRICE + INC), buyer, DEPOSIT)


def test_a_bid_one_second_before_the_deadline_counts(chain: Chain, listing: int, buyer: str):
    advance_to(chain, lot_of(chain, listing).deadline - 1)
    place_bid(chain, buyer, listing, PRICE)
    assert lot_of(chain, listing).buyer == buyer


@pytest.mark.parametrize("with_bid", [False, True], ids=["expired", "finalized"])
def test_no_bids_after_finalize(
    chain: Chain, listing: int, parties: list[str], buyer: str, rival: str, with_bid: bool
):
    if with_bid:
        place_bid(chain, rival, listing, PRICE)
    end_auction(chain, listing, buyer)
    with unchanged(chain, parties), reverts("MarketListingNotOpen", listing):
        place_bid(chain, buyer, listing, 2 * PRICE)


# --- finalize --------------------------------------------------------------------------------


@pytest.mark.parametrize("early", [DURATION // 2, 1])
def test_finalize_waits_for_the_deadline(
    chain: Chain, listing: int, parties: list[str], buyer: str, stranger: str, early: int
):
    place_bid(chain, buyer, listing, PRICE)
    deadline = lot_of(chain, listing).deadline
    advance_to(chain, deadline - early)
    with unchanged(chain, parties), reverts("MarketAuctionNotEnded", listing, deadline):
        chain.send(chain.market.functions.finalize(listing), stranger)


def test_finalize_without_bids_expires_and_returns_the_tokens(
    chain: Chain, listing: int, seller: str, stranger: str
):
    receipt = end_auction(chain, listing, stranger)
    assert chain.events(receipt) == [
        market_event("ListingExpired", listingId=listing, seller=seller, energyWh=LOT),
        transfer(chain.market.address, seller, LOT),
    ]
    assert lot_of(chain, listing).status == Status.EXPIRED
    assert tokens(chain, seller) == STOCK
    assert tokens(chain, chain.market.address) == 0


def test_finalize_with_bids_opens_the_trade(
    chain: Chain, listing: int, seller: str, buyer: str, rival: str, stranger: str
):
    place_bid(chain, rival, listing, PRICE)
    place_bid(chain, buyer, listing, PRICE + INC)
    receipt = end_auction(chain, listing, stranger)  # anyone may finalize, at the deadline
    assert block_time(chain, receipt) == lot_of(chain, listing).deadline
    assert chain.events(receipt) == [
        market_event(
            "TradeOpened",
            tradeId=listing,
            seller=seller,
            buyer=buyer,
            energyWh=LOT,
            pricePerKWh=PRICE + INC,
        )
    ]
    lot = lot_of(chain, listing)
    assert (lot.status, lot.buyer, lot.price_per_kwh) == (Status.OPEN, buyer, PRICE + INC)
    assert lot.active_since == block_time(chain, receipt)
    assert chain.market.functions.openTradesOf(buyer).call() == [listing, listing]
    assert chain.market.functions.nextTradeOfBuyer(listing).call() == 0
    assert tokens(chain, chain.market.address) == LOT
    assert chain.balance(chain.market.address) == DEPOSIT + deposit_wei(LOT, PRICE + INC)
    assert credit(chain, rival) == DEPOSIT


@pytest.mark.parametrize("with_bid", [False, True], ids=["expired", "opened"])
def test_finalize_twice(chain: Chain, listing: int, parties: list[str], buyer: str, with_bid: bool):
    if with_bid:
        place_bid(chain, buyer, listing, PRICE)
    end_auction(chain, listing, buyer)
    with unchanged(chain, parties), reverts("MarketListingNotOpen", listing):
        chain.send(chain.market.functions.finalize(listing), buyer)


def test_finalize_unknown_listing(chain: Chain, parties: list[str], stranger: str):
    with unchanged(chain, parties), reverts("MarketListingNotOpen", 5):
        chain.send(chain.market.functions.finalize(5), stranger)


# --- settleDelivery --------------------------------------------------------------------------


@pytest.mark.parametrize("caller", ["operator", "buyer", "seller", "load_meter"])
def test_only_the_registry_settles(
    chain: Chain, request: pytest.FixtureRequest, trade: int, parties: list[str], buyer, caller
):
    sender = who(request, caller)
    with (
        unchanged(chain, [*parties, sender]),
        reverts("MarketCallerNotRegistry", sender),
    ):
        chain.send(chain.market.functions.settleDelivery(buyer, 100), sender)


def test_a_load_reading_settles_the_trade(
    chain: Chain, trade: int, seller: str, buyer: str, load_meter: str
):
    before = meter_of(chain, load_meter)
    opened_at = lot_of(chain, trade).active_since
    receipt = measure(chain, load_meter, 400)
    paid = paid_wei(400, PRICE)
    assert chain.events(receipt) == [
        recorded(load_meter, before.energy_wh + 400, before.sequence + 1, 400),
        market_event("DeliverySettled", tradeId=trade, energyWh=400, paidWei=paid, deliveredWh=400),
    ]
    assert credit(chain, seller) == paid
    lot = lot_of(chain, trade)
    assert (lot.status, lot.delivered_wh, lot.paid_wei) == (Status.OPEN, 400, paid)
    assert lot.active_since == opened_at  # the trade's silence counts from the meter's reading
    assert meter_of(chain, load_meter).read_at == block_time(chain, receipt)
    assert credit(chain, buyer) == 0
    assert supply(chain) == STOCK  # burned only when the trade closes


# --- closeConnection -------------------------------------------------------------------------


MIN_FEE = paid_wei(PARAMS.min_charge_wh, PRICE)  # walking away costs the minimum charge


def test_buyer_closes_before_any_delivery(
    chain: Chain, trade: int, seller: str, buyer: str, load_meter: str
):
    # Phase one: the request; the relays open, nothing is settled yet.
    receipt = chain.send(chain.market.functions.closeConnection(trade), buyer)
    asked_at = block_time(chain, receipt)
    assert chain.events(receipt) == [
        market_event(
            "CloseRequested", tradeId=trade, buyer=buyer, settlesBy=asked_at + PARAMS.close_grace
        )
    ]
    assert lot_of(chain, trade).close_requested_at == asked_at
    assert lot_of(chain, trade).status == Status.OPEN
    assert chain.market.functions.activeTradeOf(buyer).call() == trade
    # Phase two: the meter's next reading (a heartbeat) settles the tail (none) and closes.
    before = meter_of(chain, load_meter)
    receipt = heartbeat(chain, load_meter)
    assert chain.events(receipt) == [
        recorded(load_meter, before.energy_wh, before.sequence + 1, 0),
        market_event(
            "ConnectionClosed",
            tradeId=trade,
            closedBy=buyer,
            deliveredWh=0,
            refundWei=DEPOSIT - MIN_FEE,
            returnedWh=LOT,
        ),
        market_event("Credited", account=seller, lotId=trade, amountWei=MIN_FEE),
        market_event("Credited", account=buyer, lotId=trade, amountWei=DEPOSIT - MIN_FEE),
        transfer(chain.market.address, seller, LOT),
    ]
    assert lot_of(chain, trade).status == Status.CLOSED
    assert (credit(chain, buyer), credit(chain, seller)) == (DEPOSIT - MIN_FEE, MIN_FEE)
    assert tokens(chain, seller) == STOCK
    assert supply(chain) == STOCK
    assert chain.market.functions.openTradesOf(buyer).call() == [0, 0]
    assert chain.market.functions.activeTradeOf(buyer).call() == 0


def test_buyer_closes_after_part_of_the_lot(
    chain: Chain, trade: int, seller: str, buyer: str, load_meter: str
):
    measure(chain, load_meter, 600)
    chain.advance(60)  # the buyer may close at any time
    chain.send(chain.market.functions.closeConnection(trade), buyer)
    with reverts("MarketCloseAlreadyRequested", trade, chain.now() + PARAMS.close_grace):
        chain.send(chain.market.functions.closeConnection(trade), buyer)
    # The relays opened a few seconds late: the next reading bills those 5 Wh, then closes.
    receipt = measure(chain, load_meter, 5)
    paid = paid_wei(605, PRICE)
    assert chain.events(receipt)[1:] == [
        market_event(
            "DeliverySettled",
            tradeId=trade,
            energyWh=5,
            paidWei=paid - paid_wei(600, PRICE),
            deliveredWh=605,
        ),
        market_event(
            "ConnectionClosed",
            tradeId=trade,
            closedBy=buyer,
            deliveredWh=605,
            refundWei=DEPOSIT - paid,
            returnedWh=LOT - 605,
        ),
        market_event("Credited", account=buyer, lotId=trade, amountWei=DEPOSIT - paid),
        transfer(chain.market.address, ZERO_ADDRESS, 605),
        transfer(chain.market.address, seller, LOT - 605),
    ]
    assert (credit(chain, buyer), credit(chain, seller)) == (DEPOSIT - paid, paid)
    assert tokens(chain, seller) == STOCK - 605
    assert supply(chain) == STOCK - 605


@pytest.mark.parametrize("activity", ["none", "delivery", "heartbeat"])
def test_seller_closes_a_stalled_trade_and_is_paid_for_the_silence(
    chain: Chain,
    trade: int,
    parties: list[str],
    seller: str,
    buyer: str,
    load_meter: str,
    activity: str,
):
    opened_at = lot_of(chain, trade).active_since
    silent_since = opened_at
    delivered = 0
    if activity != "none":
        chain.advance(TIMEOUT // 2)
        receipt = measure(chain, load_meter, 200) if activity == "delivery" else heartbeat(
            chain, load_meter
        )
        silent_since = block_time(chain, receipt)  # any reading restarts the stall clock
        delivered = 200 if activity == "delivery" else 0
    stalls_at = silent_since + TIMEOUT
    assert chain.market.functions.stallsAt(trade).call() == stalls_at
    advance_to(chain, stalls_at - 1)
    with unchanged(chain, parties), reverts("MarketTradeNotStalled", trade, stalls_at):
        chain.send(chain.market.functions.closeConnection(trade), seller)
    advance_to(chain, stalls_at)  # the refused call mined no block
    receipt = chain.send(chain.market.functions.closeConnection(trade), seller)
    # The most a 3,000 W meter draws in 900 s of silence: 750 Wh, charged as delivered.
    charged = LOAD_W * TIMEOUT // 3600
    total = delivered + charged
    refund = DEPOSIT - paid_wei(total, PRICE)
    assert chain.events(receipt) == [
        market_event(
            "StallCharged",
            tradeId=trade,
            silentSince=silent_since,
            silentUntil=stalls_at,
            energyWh=charged,
        ),
        market_event(
            "DeliverySettled",
            tradeId=trade,
            energyWh=charged,
            paidWei=paid_wei(total, PRICE) - paid_wei(delivered, PRICE),
            deliveredWh=total,
        ),
        market_event(
            "ConnectionClosed",
            tradeId=trade,
            closedBy=seller,
            deliveredWh=total,
            refundWei=refund,
            returnedWh=LOT - total,
        ),
        market_event("Credited", account=buyer, lotId=trade, amountWei=refund),
        transfer(chain.market.address, ZERO_ADDRESS, total),
        transfer(chain.market.address, seller, LOT - total),
    ]
    assert (credit(chain, buyer), credit(chain, seller)) == (refund, paid_wei(total, PRICE))
    assert tokens(chain, seller) == STOCK - total


@pytest.mark.parametrize("caller", ["stranger", "rival", "operator", "load_meter"])
def test_only_the_parties_close(
    chain: Chain, request: pytest.FixtureRequest, trade: int, parties: list[str], caller: str
):
    sender = who(request, caller)
    chain.advance(10 * TIMEOUT)  # the timeout does not make a stranger a party
    with unchanged(chain, [*parties, sender]), reverts("MarketNotTradeParty", trade, sender):
        chain.send(chain.market.functions.closeConnection(trade), sender)


@pytest.mark.parametrize("state", ["listed", "expired", "closed", "unknown"])
def test_close_needs_an_open_trade(
    chain: Chain, listing: int, parties: list[str], seller: str, buyer: str, state: str
):
    lot_id = listing
    if state == "expired":
        end_auction(chain, listing, seller)
    elif state == "closed":
        place_bid(chain, buyer, listing, PRICE)
        end_auction(chain, listing, seller)
        buyer_closes(chain, listing, buyer)
    elif state == "unknown":
        lot_id = 9
    for caller in (buyer, seller):
        with unchanged(chain, parties), reverts("MarketTradeNotOpen", lot_id):
            chain.send(chain.market.functions.closeConnection(lot_id), caller)


# --- withdraw --------------------------------------------------------------------------------


@pytest.mark.parametrize("caller", ["stranger", "buyer", "seller"])
def test_withdraw_nothing(
    chain: Chain, request: pytest.FixtureRequest, listing: int, parties: list[str], caller: str
):
    sender = who(request, caller)
    with unchanged(chain, parties), reverts("MarketNothingToWithdraw", sender):
        chain.send(chain.market.functions.withdraw(), sender)


def test_withdraw_pays_the_whole_credit(chain: Chain, listing: int, buyer: str, rival: str):
    place_bid(chain, rival, listing, PRICE)
    place_bid(chain, buyer, listing, PRICE + INC)
    market_before = chain.balance(chain.market.address)
    rival_before = chain.balance(rival)
    receipt = chain.send(chain.market.functions.withdraw(), rival)
    assert chain.events(receipt) == [market_event("Withdrawn", account=rival, amountWei=DEPOSIT)]
    assert chain.balance(rival) == rival_before + DEPOSIT - gas_cost(receipt)
    assert chain.balance(chain.market.address) == market_before - DEPOSIT
    assert credit(chain, rival) == 0
    with reverts("MarketNothingToWithdraw", rival):
        chain.send(chain.market.functions.withdraw(), rival)


# --- views -----------------------------------------------------------------------------------


def test_parameters(chain: Chain):
    market = chain.market.functions
    assert market.parameters().call() == [
        chain.token.address,
        chain.registry.address,
        PARAMS.min_duration,
        PARAMS.max_duration,
        PARAMS.min_increment_per_kwh,
        PARAMS.stall_timeout,
        PARAMS.close_grace,
        PARAMS.min_charge_wh,
    ]
    assert market.MAX_TRADES_PER_READING().call() == 4
    assert market.lotCount().call() == 0
    assert lot_of(chain, 1) == Lot(Status.NONE, ZERO_ADDRESS, ZERO_ADDRESS, 0, 0, 0, 0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("energy_wh", "price", "expected"),
    [
        (LOT, PRICE, LOT * PRICE // 1000),
        (1, 1, 1),
        (999, 1, 1),
        (1000, 1, 1),
        (1001, 1, 2),
        (1234, 10**15 + 1, 1_234 * 10**12 + 2),
    ],
)
def test_deposit_for_rounds_up(
    chain: Chain, stocked: None, seller: str, energy_wh: int, price: int, expected: int
):
    listing_id = list_lot(chain, seller, energy_wh, 1)
    assert chain.market.functions.depositFor(listing_id, price).call() == expected


@pytest.mark.parametrize(
    "change",
    [
        {"min_duration": 0},
        {"max_duration": 59},
        {"max_duration": 2**32},
        {"stall_timeout": 0},
        {"close_grace": 0},
    ],
)
def test_deployment_refuses_bad_parameters(chain: Chain, change: dict):
    rules = dataclasses.replace(PARAMS, **change)
    art = load_artifact("EnergyMarket")
    factory = chain.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    fn = factory.constructor(chain.token.address, chain.registry.address, *rules.args())
    with pytest.raises(Exception) as info:  # noqa: PT011 - the revert data is checked below
        fn.estimate_gas({"from": chain.addresses[0]})  # a dry run of the deployment
    assert decode_revert(revert_data_from_exception(info.value)).name == "MarketInvalidParameters"
