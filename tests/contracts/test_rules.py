"""dapp/services/rules.py against EnergyMarket on generated cases: one rule, two sides, one answer.

Each test lets Hypothesis pick lots, prices and times, asks the Python rule what the market will
do, and has the market do it: the deposit the rule computes is the one the market takes (and one
wei less is refused), a bid at the rule's minimum is accepted and one wei below is refused, a
bid or finalize at the rule's deadline goes the way the rule says, and the seller's close is
refused one second before the rule's timeout and accepted at it, also for a trade queued behind
the buyer's oldest. Every example starts from the same snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from dapp.services import rules
from tests.contracts.conftest import PARAMS, PRICE, Chain, reverts
from tests.contracts.helpers import (
    LOAD,
    LOAD_W,
    Status,
    advance_to,
    block_time,
    end_auction,
    install_meter,
    list_lot,
    lot_of,
    measure,
    mint,
    open_trade,
    run_ahead_of_wall_clock,
)

STOCK = 40_000  # Wh the seller holds when an example starts
TIMEOUT = PARAMS.delivery_timeout
INC = PARAMS.min_increment_per_kwh
MAX_PRICE = 2**96 - 1
RICH = 10**21  # deposits up to 1000 ether: every test account can pay them

EXAMPLES = settings(
    max_examples=15,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),  # shrinking a chain story is slow
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def market(chain: Chain, operator: str, seller: str, buyer: str, supply_meter: str,
           load_meter: str) -> Chain:
    """The seller holds STOCK Wh of tokens; the buyer's load meter is installed."""
    run_ahead_of_wall_clock(chain)
    mint(chain, operator, supply_meter, seller, STOCK)
    install_meter(chain, operator, load_meter, buyer, LOAD, LOAD_W)
    return chain


@contextmanager
def fresh(chain: Chain) -> Iterator[None]:
    """Run one example and put the chain back as it was."""
    snapshot = chain.tester.take_snapshot()
    try:
        yield
    finally:
        chain.tester.revert_to_snapshot(snapshot)


def bid(chain: Chain, bidder: str, lot: int, price: int, value: int) -> dict:
    """Send a bid with exactly `value` wei."""
    return chain.send(chain.market.functions.bid(lot, price), bidder, value=value)


@EXAMPLES
@given(energy=st.integers(1, 20_000), price=st.integers(1, MAX_PRICE),
       offer=st.integers(1, MAX_PRICE))
def test_deposit_is_what_the_market_takes(market, seller, buyer, energy, price, offer):
    with fresh(market):
        lot = list_lot(market, seller, energy, min(price, RICH // energy))
        view = market.market.functions.depositFor
        assert view(lot, offer).call() == rules.deposit_wei(energy, offer)
        price = lot_of(market, lot).price_per_kwh
        deposit = rules.deposit_wei(energy, price)
        if deposit:
            with reverts("MarketDepositMismatch", deposit, deposit - 1):
                bid(market, buyer, lot, price, deposit - 1)
        bid(market, buyer, lot, price, deposit)
        assert lot_of(market, lot).deposit_wei == deposit


@EXAMPLES
@given(energy=st.integers(1, 20_000), start=st.integers(1, 10**17),
       first_bid=st.none() | st.integers(0, 10**17))
def test_minimum_next_bid(market, seller, buyer, rival, energy, start, first_bid):
    with fresh(market):
        lot = list_lot(market, seller, energy, start)
        if first_bid is not None:
            opening = start + first_bid
            bid(market, rival, lot, opening, rules.deposit_wei(energy, opening))
        info = lot_of(market, lot)
        minimum = rules.min_next_bid(info.price_per_kwh, first_bid is not None, INC)
        with reverts("MarketBidTooLow", minimum, minimum - 1):
            bid(market, buyer, lot, minimum - 1, rules.deposit_wei(energy, minimum - 1))
        bid(market, buyer, lot, minimum, rules.deposit_wei(energy, minimum))
        assert lot_of(market, lot).price_per_kwh == minimum


@EXAMPLES
@given(duration=st.integers(PARAMS.min_duration, 2 * PARAMS.min_duration),
       offset=st.integers(-3, 3), finalize=st.booleans())
def test_auction_end(market, seller, buyer, duration, offset, finalize):
    with fresh(market):
        assert rules.duration_allowed(duration, PARAMS.min_duration, PARAMS.max_duration)
        lot = list_lot(market, seller, 100, PRICE, duration)
        deadline = lot_of(market, lot).deadline
        at = deadline + offset
        if at > market.now():
            advance_to(market, at)
        else:
            at = market.now() + 1  # the next block
        ended = rules.auction_ended(at, deadline)
        if finalize:
            call = market.market.functions.finalize(lot)
            refused = None if ended else ("MarketAuctionNotEnded", lot, deadline)
        else:
            call = market.market.functions.bid(lot, PRICE)
            refused = ("MarketAuctionEnded", lot, deadline) if ended else None
        value = 0 if finalize else rules.deposit_wei(100, PRICE)
        if refused:
            with reverts(*refused):
                market.send(call, buyer, value=value)
        else:
            assert block_time(market, market.send(call, buyer, value=value)) == at


@EXAMPLES
@given(
    energies=st.tuples(st.integers(50, 3_000), st.integers(50, 3_000)),
    gap=st.integers(0, 2 * TIMEOUT),
    delivered=st.integers(0, 6_000),
    deliver_after_second=st.booleans(),
    wait=st.integers(0, 2 * TIMEOUT),
    buyer_closes_oldest=st.booleans(),
    target=st.sampled_from(["oldest", "queued"]),
)
# Always: the oldest trade is delivered to after the queued one opened (the queued trade waits).
@example(energies=(1_000, 1_000), gap=0, delivered=300, deliver_after_second=True, wait=60,
         buyer_closes_oldest=False, target="queued")
def test_seller_close_timeout(market, seller, buyer, load_meter, energies, gap, delivered,
                              deliver_after_second, wait, buyer_closes_oldest, target):
    with fresh(market):
        oldest = open_trade(market, seller, buyer, energies[0], PRICE)
        if delivered and not deliver_after_second:
            measure(market, load_meter, delivered)
        if gap:
            market.advance(gap)
        queued = list_lot(market, seller, energies[1], PRICE)
        bid(market, buyer, queued, PRICE, rules.deposit_wei(energies[1], PRICE))
        end_auction(market, queued, seller)
        if wait:
            market.advance(wait)
        if delivered and deliver_after_second:
            measure(market, load_meter, delivered)
        if buyer_closes_oldest and lot_of(market, oldest).status == Status.OPEN:
            market.send(market.market.functions.closeConnection(oldest), buyer)
        trade = oldest if target == "oldest" else queued
        if lot_of(market, trade).status != Status.OPEN:  # delivered in full, or closed by the buyer
            trade = queued if lot_of(market, queued).status == Status.OPEN else None
        if trade is None:
            return
        head = market.market.functions.openTradesOf(buyer).call()[0]
        close_at = rules.seller_close_at(
            lot_of(market, trade).last_delivery_at, TIMEOUT,
            None if head == trade else lot_of(market, head).last_delivery_at,
        )
        close = market.market.functions.closeConnection(trade)
        if close_at - 1 > market.now():
            advance_to(market, close_at - 1)
            assert not rules.seller_can_close(close_at - 1, close_at)
            with reverts("MarketDeliveryNotTimedOut", trade, close_at):
                market.send(close, seller)
        if close_at > market.now():
            advance_to(market, close_at)
        at = block_time(market, market.send(close, seller))
        assert rules.seller_can_close(at, close_at)
        assert lot_of(market, trade).status == Status.CLOSED


@EXAMPLES
@given(energy=st.integers(10, 3_000), price=st.integers(1, 10**18),
       readings=st.lists(st.integers(1, 3_000), min_size=1, max_size=3))
def test_payment_for_delivered_energy(market, seller, buyer, load_meter, energy, price,
                                      readings):
    with fresh(market):
        trade = open_trade(market, seller, buyer, energy, min(price, RICH // energy))
        price = lot_of(market, trade).price_per_kwh
        for wh in readings:
            if lot_of(market, trade).status != Status.OPEN:
                break
            measure(market, load_meter, wh)
            info = lot_of(market, trade)
            assert info.paid_wei == rules.paid_wei(info.delivered_wh, price)
            assert info.paid_wei <= rules.deposit_wei(energy, price)
