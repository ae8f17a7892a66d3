"""dapp/services/rules.py against EnergyMarket on generated cases: one rule, two sides, one answer.

Each test lets Hypothesis pick lots, prices and times, asks the Python rule what the market will
do, and has the market do it: the deposit the rule computes is the one the market takes (and one
wei less is refused), a bid at the rule's minimum is accepted and one wei below is refused, a
bid or finalize at the rule's deadline goes the way the rule says, the stall time the rule computes
is the market's `stallsAt` and the seller's close is refused one second before the rule's time
and accepted at it (active and queued trades, with and without the buyer's close request), the
buyer's close is a request, a refusal or a close as the rule says, the refund and the seller's
minimum-charge fee are the rule's to the wei, and a bidder without a load meter is refused.
Every example starts from the same snapshot.
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
    ZERO_ADDRESS,
    Status,
    advance_to,
    block_time,
    buyer_closes,
    credit,
    ensure_load_meter,
    install_meter,
    list_lot,
    lot_of,
    measure,
    mint,
    open_trade,
    paid_wei,
    run_ahead_of_wall_clock,
)

STOCK = 40_000  # Wh the seller holds when an example starts
STALL = PARAMS.stall_timeout
GRACE = PARAMS.close_grace
MIN_CHARGE = PARAMS.min_charge_wh
INC = PARAMS.min_increment_per_kwh
MAX_PRICE = 2**96 - 1
RICH = 10**21  # deposits up to 1000 ether: every test account can pay them

EXAMPLES = settings(
    max_examples=15,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),  # shrinking a chain story is slow
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FEW = settings(EXAMPLES, max_examples=8)  # examples that walk a whole trade (the suite < ~30 s)


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
            ensure_load_meter(market, rival)
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
    gap=st.integers(0, 2 * STALL),
    delivered=st.integers(0, 4_000),
    silence=st.integers(0, 2 * STALL),
    request=st.booleans(),
    target=st.sampled_from(["active", "queued"]),
)
# Always: a reading, then silence past the grace of a close request (the grace ends it first).
@example(energies=(1_000, 1_000), gap=30, delivered=300, silence=GRACE + 5, request=True,
         target="active")
# Always: the queued trade's seller waits for the buyer's silence, counted from its reading.
@example(energies=(1_000, 1_000), gap=0, delivered=300, silence=60, request=False,
         target="queued")
def test_seller_close_needs_a_stall(market, seller, buyer, load_meter, energies, gap, delivered,
                                    silence, request, target):
    with fresh(market):
        oldest = open_trade(market, seller, buyer, energies[0], PRICE)
        if gap:
            market.advance(gap)
        queued = open_trade(market, seller, buyer, energies[1], PRICE)
        if delivered:
            measure(market, load_meter, delivered)
        head = market.market.functions.activeTradeOf(buyer).call()
        if request and head:
            market.send(market.market.functions.closeConnection(head), buyer)
            assert lot_of(market, head).close_requested_at == market.now()
        if silence:
            market.advance(silence)
        open_ids = [i for i in (oldest, queued) if lot_of(market, i).status == Status.OPEN]
        if not open_ids:
            return
        trade = open_ids[0] if target == "active" else open_ids[-1]
        info = lot_of(market, trade)
        read_at, _ = market.registry.functions.lastLoadReadingOf(buyer).call()
        stall = rules.stalls_at(read_at, info.active_since, STALL)
        assert market.market.functions.stallsAt(trade).call() == stall
        close_at = rules.seller_close_at(stall, info.close_requested_at, GRACE)
        close = market.market.functions.closeConnection(trade)
        if close_at - 1 > market.now():
            advance_to(market, close_at - 1)
            assert not rules.seller_can_close(close_at - 1, close_at)
            with reverts("MarketTradeNotStalled", trade, close_at):
                market.send(close, seller)
        if close_at > market.now():
            advance_to(market, close_at)
        at = block_time(market, market.send(close, seller))
        assert rules.seller_can_close(at, close_at)
        assert lot_of(market, trade).status == Status.CLOSED


@EXAMPLES
@given(
    queued=st.booleans(),
    second_after=st.none() | st.integers(1, 2 * GRACE),
    energy=st.integers(1, 3_000),
    delivered=st.integers(0, 3_000),
)
@example(queued=False, second_after=GRACE - 1, energy=500, delivered=0)
@example(queued=False, second_after=GRACE, energy=500, delivered=0)
def test_the_buyers_close_is_two_phase(market, seller, buyer, load_meter, queued, second_after,
                                       energy, delivered):
    with fresh(market):
        first = open_trade(market, seller, buyer, 20_000 if queued else energy, PRICE)
        trade = open_trade(market, seller, buyer, energy, PRICE) if queued else first
        if delivered:
            measure(market, load_meter, min(delivered, energy - 1) or 1)
        if lot_of(market, trade).status != Status.OPEN:
            return
        active = market.market.functions.activeTradeOf(buyer).call() == trade
        info = lot_of(market, trade)
        close = market.market.functions.closeConnection(trade)
        # Every block is one second after the last (run_ahead_of_wall_clock): the call's block.
        effect = rules.buyer_close(active, info.close_requested_at, market.now() + 1, GRACE)
        market.send(close, buyer)
        info = lot_of(market, trade)
        if effect == rules.CLOSES:
            assert info.status == Status.CLOSED
            return
        assert effect == rules.REQUESTS
        assert info.status == Status.OPEN and info.close_requested_at == market.now()
        if second_after is None:
            return
        ends = rules.grace_ends_at(info.close_requested_at, GRACE)
        at = info.close_requested_at + second_after  # the second call is mined then
        advance_to(market, at)
        effect = rules.buyer_close(True, info.close_requested_at, at, GRACE)
        if effect == rules.WAITS:
            with reverts("MarketCloseAlreadyRequested", trade, ends):
                market.send(close, buyer)
        else:
            market.send(close, buyer)
            assert lot_of(market, trade).status == Status.CLOSED


@FEW
@given(energy=st.integers(1, 3_000), price=st.integers(1, 10**18),
       delivered=st.integers(0, 3_000))
@example(energy=50, price=PRICE, delivered=0)  # a lot below the minimum charge
@example(energy=1_000, price=PRICE, delivered=MIN_CHARGE + 1)  # delivered beyond it
def test_minimum_charge(market, seller, buyer, load_meter, energy, price, delivered):
    with fresh(market):
        trade = open_trade(market, seller, buyer, energy, min(price, RICH // energy))
        price = lot_of(market, trade).price_per_kwh
        delivered = min(delivered, energy - 1)
        if delivered:
            measure(market, load_meter, delivered)
        delivered = lot_of(market, trade).delivered_wh
        refund = rules.close_refund_wei(energy, delivered, price, MIN_CHARGE)
        fee = rules.minimum_charge_fee_wei(energy, delivered, price, MIN_CHARGE)
        seller_before = credit(market, seller)
        buyer_before = credit(market, buyer)
        buyer_closes(market, trade, buyer)  # the request, then a heartbeat settles and closes
        assert lot_of(market, trade).status == Status.CLOSED
        assert credit(market, buyer) - buyer_before == refund
        assert credit(market, seller) - seller_before == fee
        assert paid_wei(delivered, price) + fee == rules.paid_wei(
            max(delivered, rules.minimum_charge_wh(energy, MIN_CHARGE)), price)


@FEW
@given(energy=st.integers(1, 3_000), delivered=st.integers(0, 3_000),
       silence=st.integers(1, 3 * STALL), request=st.booleans(), wait=st.integers(0, 2 * STALL))
@example(energy=3_000, delivered=300, silence=STALL, request=False, wait=10 * STALL)
@example(energy=1_000, delivered=0, silence=GRACE, request=True, wait=0)
def test_closing_a_silent_trade_charges_the_rule(market, seller, buyer, load_meter, energy,
                                                 delivered, silence, request, wait):
    """The seller closes the buyer's silent active trade once it may, possibly after waiting:
    the silence charge, the refund and the seller's credit are the rule's to the wei."""
    with fresh(market):
        trade = open_trade(market, seller, buyer, energy, PRICE)
        delivered = min(delivered, energy - 1)
        if delivered:
            measure(market, load_meter, delivered)
        if request:
            market.send(market.market.functions.closeConnection(trade), buyer)
        market.advance(silence)
        info = lot_of(market, trade)
        if info.status != Status.OPEN:
            return
        read_at, rated = market.registry.functions.lastLoadReadingOf(buyer).call()
        stall = rules.stalls_at(read_at, info.active_since, STALL)
        close_at = rules.seller_close_at(stall, info.close_requested_at, GRACE)
        at = max(close_at, market.now() + 1) + wait
        advance_to(market, at)  # the seller's close is mined at `at`
        charged = rules.silence_charge_wh(rated, stall - STALL, at, info.close_requested_at,
                                          STALL, market.market.functions.carriedOf(buyer).call(),
                                          energy - info.delivered_wh)
        total = info.delivered_wh + charged
        refund = rules.close_refund_wei(energy, total, PRICE, MIN_CHARGE)
        seller_before, buyer_before = credit(market, seller), credit(market, buyer)
        assert block_time(market, market.send(market.market.functions.closeConnection(trade),
                                               seller)) == at
        assert lot_of(market, trade).delivered_wh == total
        assert credit(market, buyer) - buyer_before == refund
        assert credit(market, seller) - seller_before == (
            rules.deposit_wei(energy, PRICE) - paid_wei(info.delivered_wh, PRICE) - refund)


def test_only_a_bidder_with_a_load_meter_may_bid(market, seller, buyer, rival):
    with fresh(market):
        lot = list_lot(market, seller, 100, PRICE)
        deposit = rules.deposit_wei(100, PRICE)
        meter = market.registry.functions.loadMeterOf(rival).call()
        assert not rules.may_bid(None if meter == ZERO_ADDRESS else meter)
        with reverts("MarketBidderHasNoLoadMeter", rival):
            bid(market, rival, lot, PRICE, deposit)
        assert rules.may_bid(market.registry.functions.loadMeterOf(buyer).call())
        bid(market, buyer, lot, PRICE, deposit)


@FEW
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
