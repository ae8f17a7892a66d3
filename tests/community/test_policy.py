"""The trading agent's policy: what it does within its limits, why, and what it refuses."""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from dapp.agents.policy import (
    Bid,
    Close,
    HouseholdState,
    InvalidLimits,
    Limits,
    Listing,
    MarketTerms,
    Sell,
    Trade,
    decide,
)
from dapp.services.rules import deposit_wei, paid_wei
from dapp.services.units import format_ether_fixed

MILLI = 10**15  # 0.001 ETH
ME = "0xme"
LIMITS = Limits(reserve_percent=40, floor_wei_per_kwh=MILLI, ceiling_wei_per_kwh=3 * MILLI,
                daily_limit_wei=10 * MILLI)


def state(**kw) -> HouseholdState:
    """A 2.4 kWh household at chain time 1000 with no forecast load, overridable."""
    base = {"account": ME, "now_s": 1000, "soc": 0.5, "capacity_wh": 2400.0}
    base.update(kw)
    return HouseholdState(**base)


def lot(lot_id: int, energy_wh: int = 500, price: int = MILLI, deadline: int = 1300,
        seller: str = "0xother", bid: int = 0, bidder: str | None = None) -> Listing:
    return Listing(lot_id, seller, energy_wh, price, deadline, bid, bidder)


# --------------------------------------------------------------------------- selling


def test_it_sells_the_surplus_above_the_reserve_at_the_floor_and_says_why():
    decision = decide(state(soc=0.82, tokens_wh=5000), LIMITS)
    (sell,) = decision.actions
    assert isinstance(sell, Sell)
    assert sell.energy_wh == 1968 - 960  # 82 % and 40 % of 2400 Wh
    assert sell.start_price_wei_per_kwh == LIMITS.floor_wei_per_kwh
    assert sell.reason == ("offered 1.008 kWh: battery 82 % is above the 40 % reserve; "
                           "start price 0.0010 ETH/kWh (floor)")


def test_it_keeps_the_reserve_counting_what_is_listed_or_being_delivered():
    listed = lot(1, energy_wh=400, seller=ME)
    selling = Trade(2, ME, "0xb", energy_wh=300, delivered_wh=100, price_wei_per_kwh=MILLI)
    decision = decide(state(soc=0.82, tokens_wh=5000, listings=(listed,), trades=(selling,)),
                      LIMITS)
    (sell,) = decision.actions
    assert sell.energy_wh == 1968 - 960 - 400 - 200


def test_it_does_not_sell_at_or_below_the_reserve_nor_what_the_forecast_will_need():
    assert decide(state(soc=0.40, tokens_wh=5000), LIMITS).actions == ()
    # 82 % now, but 600 W for an hour takes it to 57 %: only that is above the reserve
    (sell,) = decide(state(soc=0.82, net_load_w=600, tokens_wh=5000), LIMITS).actions
    assert sell.energy_wh == 1968 - 600 - 960
    assert "battery 82 % (57 % expected in 1 h)" in sell.reason


def test_it_sells_no_more_tokens_than_it_holds():
    (sell,) = decide(state(soc=0.9, tokens_wh=250), LIMITS).actions
    assert sell.energy_wh == 250
    decision = decide(state(soc=0.9, tokens_wh=20), LIMITS)
    assert decision.actions == ()
    assert decision.notes == ("did not sell: battery 90 % is above the 40 % reserve but only "
                              "0.020 kWh of tokens are left to list",)


# --------------------------------------------------------------------------- buying


def test_it_bids_the_start_price_on_the_cheapest_lot_when_the_battery_runs_low():
    lots = (lot(1, price=2 * MILLI), lot(2, price=MILLI), lot(3, price=MILLI, seller=ME))
    decision = decide(state(soc=0.2), LIMITS)
    assert decision.actions == ()
    decision = decide(state(soc=0.2, listings=lots), LIMITS)
    first = decision.actions[0]
    assert isinstance(first, Bid)
    assert (first.lot_id, first.price_wei_per_kwh) == (2, MILLI)
    assert first.deposit_wei == deposit_wei(500, MILLI)
    assert first.reason == (
        "bid 0.0010 ETH/kWh on lot 2 (0.500 kWh): battery 20 % is below the 40 % reserve and "
        "needs 0.480 kWh; deposit 0.0005 ETH, 0.0095 ETH left of today's 0.0100 ETH limit")
    assert all(b.lot_id != 3 for b in decision.actions)  # never its own lot


def test_it_outbids_by_the_increment_and_covers_its_need_with_several_lots():
    lots = (lot(1, energy_wh=300, bid=MILLI + 5, bidder="0xrival"), lot(2, energy_wh=300))
    terms = MarketTerms(min_increment_wei_per_kwh=10)
    decision = decide(state(soc=0.2, listings=lots), LIMITS, terms)
    assert [(b.lot_id, b.price_wei_per_kwh) for b in decision.actions] == [
        (2, MILLI), (1, MILLI + 15)]


def test_it_never_bids_above_its_ceiling():
    decision = decide(state(soc=0.2, listings=(lot(1, price=4 * MILLI),)), LIMITS)
    assert decision.actions == ()
    assert decision.notes == ("did not bid on lot 1: its next bid 0.0040 ETH/kWh is above the "
                              "0.0030 ETH/kWh ceiling",)


def test_deposits_count_against_the_daily_limit():
    big = lot(1, energy_wh=4000, price=2 * MILLI)  # deposit 0.008 ETH
    assert isinstance(decide(state(soc=0.2, listings=(big,)), LIMITS).actions[0], Bid)
    spent = decide(state(soc=0.2, listings=(big,), spent_today_wei=3 * MILLI), LIMITS)
    assert spent.actions == ()
    assert spent.notes == ("did not bid on lot 1: its deposit 0.0080 ETH would bring today's "
                           "spending to 0.0110 ETH, above the 0.0100 ETH daily limit",)
    # a deposit already held on another lot it leads counts too
    leading = lot(2, energy_wh=500, price=MILLI, bid=5 * MILLI, bidder=ME)  # holds 0.0025 ETH
    held = decide(state(soc=0.2, listings=(big, leading), net_load_w=300), LIMITS)
    assert held.actions == ()
    assert held.notes == ("did not bid on lot 1: its deposit 0.0080 ETH would bring today's "
                          "spending to 0.0105 ETH, above the 0.0100 ETH daily limit",)


def test_it_does_not_bid_on_ended_auctions_nor_twice_on_a_lot_it_leads():
    ended = lot(1, deadline=1000)
    leading = lot(2, energy_wh=200, bid=MILLI, bidder=ME)
    decision = decide(state(soc=0.2, listings=(ended, leading)), LIMITS)
    assert decision.actions == ()
    assert decision.notes == ("wanted 0.280 kWh (battery 20 % is below the 40 % reserve) "
                              "but no lot is open",)


def test_energy_on_order_covers_the_need():
    incoming = Trade(5, "0xs", ME, energy_wh=600, delivered_wh=0, price_wei_per_kwh=MILLI)
    decision = decide(state(soc=0.2, listings=(lot(1),), trades=(incoming,)), LIMITS)
    assert decision.actions == ()


# --------------------------------------------------------------------------- closing


def test_it_closes_its_connection_once_the_need_is_met():
    trade = Trade(7, "0xs", ME, energy_wh=500, delivered_wh=350, price_wei_per_kwh=MILLI)
    still_low = decide(state(soc=0.3, net_load_w=100, trades=(trade,)), LIMITS)
    assert not any(isinstance(a, Close) for a in still_low.actions)
    met = decide(state(soc=0.3, net_load_w=-500, trades=(trade,)), LIMITS)
    assert met.actions == (Close(7, (
        "closed trade 7 after 0.350 of 0.500 kWh: battery 30 % (51 % expected in 1 h) is at "
        "or above the 40 % reserve, so the need is met")),)


def test_it_closes_only_trades_it_buys_through():
    selling = Trade(8, ME, "0xb", energy_wh=500, delivered_wh=100, price_wei_per_kwh=MILLI)
    decision = decide(state(soc=0.9, trades=(selling,)), LIMITS)
    assert not any(isinstance(a, Close) for a in decision.actions)


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("args", "field", "message"),
    [
        (("-1", MILLI, MILLI, MILLI), "reserve_percent", "The battery reserve cannot be negative."),
        (("101", MILLI, MILLI, MILLI), "reserve_percent",
         "The battery reserve can be at most 100 %."),
        (("lots", MILLI, MILLI, MILLI), "reserve_percent",
         "The battery reserve must be a number of percent, like 40."),
        (("", MILLI, MILLI, MILLI), "reserve_percent",
         "The battery reserve must be a number of percent, like 40."),
        ((None, MILLI, MILLI, MILLI), "reserve_percent",
         "The battery reserve must be a number of percent, like 40."),
        ((float("nan"), MILLI, MILLI, MILLI), "reserve_percent",
         "The battery reserve must be a number of percent, like 40."),
        (("inf", MILLI, MILLI, MILLI), "reserve_percent",
         "The battery reserve must be a number of percent, like 40."),
        ((True, MILLI, MILLI, MILLI), "reserve_percent",
         "The battery reserve must be a number of percent, like 40."),
        ((40, "-5", MILLI, MILLI), "floor_wei_per_kwh", "The floor price cannot be negative."),
        ((40, -5, MILLI, MILLI), "floor_wei_per_kwh", "The floor price cannot be negative."),
        ((40, "cheap", MILLI, MILLI), "floor_wei_per_kwh",
         "The floor price must be a whole number of wei, like 1000000000000000."),
        ((40, "1.5", MILLI, MILLI), "floor_wei_per_kwh",
         "The floor price must be a whole number of wei, like 1000000000000000."),
        ((40, 0, "1e18", MILLI), "ceiling_wei_per_kwh",
         "The ceiling price must be a whole number of wei, like 1000000000000000."),
        ((40, 0, 10**22, MILLI), "ceiling_wei_per_kwh",
         "The ceiling price can be at most 1000.0000 ETH."),
        ((40, 0, "9" * 41, MILLI), "ceiling_wei_per_kwh", "The ceiling price is far too large."),
        ((40, 2 * MILLI, MILLI, MILLI), "floor_wei_per_kwh",
         "The floor price (0.0020 ETH/kWh) cannot be above the ceiling price (0.0010 ETH/kWh)."),
        ((40, 0, MILLI, "-1"), "daily_limit_wei", "The daily spending limit cannot be negative."),
        ((40, 0, MILLI, "a lot"), "daily_limit_wei",
         "The daily spending limit must be a whole number of wei, like 1000000000000000."),
        ((40, 0, MILLI, 10**25), "daily_limit_wei",
         "The daily spending limit can be at most 1000000.0000 ETH."),
        ((40, 0, MILLI, [1]), "daily_limit_wei",
         "The daily spending limit must be a whole number of wei, like 1000000000000000."),
    ],
)
def test_every_bad_setting_is_refused_with_one_sentence(args, field, message):
    with pytest.raises(InvalidLimits) as caught:
        Limits.parse(*args)
    assert isinstance(caught.value, ValueError)
    assert (str(caught.value), caught.value.field) == (message, field)
    assert "\n" not in message and message.endswith(".")


def test_good_settings_parse_from_text_and_numbers():
    assert Limits.parse("40 %", "1000000000000000", 3 * MILLI, "10000000000000000") == LIMITS
    assert Limits.parse(40.0, float(MILLI), 3 * MILLI, 10 * MILLI) == LIMITS
    assert Limits.parse("0", "0", "0", "0").reserve == 0.0
    assert Limits.parse("100", 0, 0, 0).reserve == 1.0


def test_limits_built_directly_are_checked_too():
    with pytest.raises(InvalidLimits, match="cannot be above the ceiling"):
        Limits(40, 5, 4, 0)
    with pytest.raises(InvalidLimits, match="whole number of wei"):
        Limits(40, 1.5, 4, 0)


def test_the_agents_ether_keeps_small_amounts_exact():
    assert (format_ether_fixed(MILLI), format_ether_fixed(0), format_ether_fixed(15)) == (
        "0.0010", "0.0000", "0.000000000000000015")


# --------------------------------------------------------------------------- never past limits

addresses = st.sampled_from(["0xa", "0xb", "0xc", ME])
prices = st.integers(0, 5 * MILLI)
listings = st.builds(Listing, lot_id=st.integers(0, 50), seller=addresses,
                     energy_wh=st.integers(1, 3000), start_price_wei_per_kwh=prices,
                     deadline_s=st.integers(900, 1500), highest_bid_wei_per_kwh=prices,
                     highest_bidder=st.one_of(st.none(), addresses))
limits = st.builds(
    lambda r, a, b, d: Limits(r, min(a, b), max(a, b), d),
    st.floats(0, 100), prices, prices, st.integers(0, 20 * MILLI))


@st.composite
def trades(draw):
    energy = draw(st.integers(1, 3000))
    seller, buyer = draw(st.lists(addresses, min_size=2, max_size=2, unique=True))
    return Trade(draw(st.integers(0, 50)), seller, buyer, energy,
                 draw(st.integers(0, energy)), draw(prices))


states = st.builds(
    HouseholdState, account=st.just(ME), now_s=st.just(1000), soc=st.floats(0, 1),
    capacity_wh=st.floats(500, 20_000), net_load_w=st.floats(-3000, 3000),
    horizon_s=st.floats(0, 7200), tokens_wh=st.integers(0, 10_000),
    listings=st.lists(listings, max_size=6, unique_by=lambda x: x.lot_id).map(tuple),
    trades=st.lists(trades(), max_size=3, unique_by=lambda x: x.trade_id).map(tuple),
    spent_today_wei=st.integers(0, 20 * MILLI))


@settings(max_examples=300, deadline=None)
@given(states, limits)
def test_one_decision_never_passes_a_limit(s, lim):
    decision = decide(s, lim)
    reserve_wh = lim.reserve * s.capacity_wh
    new_sales = sum(a.energy_wh for a in decision.actions if isinstance(a, Sell))
    if new_sales:
        listed = sum(x.energy_wh for x in s.listings if x.seller == ME)
        selling = sum(t.remaining_wh for t in s.trades if t.seller == ME)
        assert listed + selling + new_sales <= min(s.stored_wh, s.projected_wh) - reserve_wh + 1e-6
        assert new_sales <= s.tokens_wh
    open_lots = {x.lot_id: x for x in s.listings}
    bids = [a for a in decision.actions if isinstance(a, Bid)]
    for a in decision.actions:
        if isinstance(a, Sell):
            assert a.start_price_wei_per_kwh >= lim.floor_wei_per_kwh
        elif isinstance(a, Bid):
            target = open_lots[a.lot_id]
            assert a.price_wei_per_kwh <= lim.ceiling_wei_per_kwh
            assert target.seller != ME and target.highest_bidder != ME
            assert s.now_s < target.deadline_s
            assert a.price_wei_per_kwh >= target.start_price_wei_per_kwh
            assert a.deposit_wei == deposit_wei(target.energy_wh, a.price_wei_per_kwh)
        else:
            assert any(t.trade_id == a.trade_id and t.buyer == ME for t in s.trades)
        assert a.reason
    if bids:
        assert s.committed_wei + sum(b.deposit_wei for b in bids) <= lim.daily_limit_wei
        assert s.projected_wh < reserve_wh


# limits under which the agent does buy, so the sequence test is not vacuous
busy_limits = st.builds(Limits, st.floats(20, 80), st.integers(0, MILLI),
                        st.integers(2 * MILLI, 5 * MILLI), st.integers(MILLI, 8 * MILLI))


@settings(max_examples=60, deadline=None)
@given(busy_limits, st.integers(0, 2**32),
       st.lists(st.floats(-1000, 3000), min_size=5, max_size=40))
def test_over_a_day_of_trading_the_agent_never_spends_past_its_daily_limit(lim, seed, loads):
    """A small market around the agent: its bids win at the deadline, trades deliver and bill.

    Each step the agent decides, rivals list fresh lots, won lots become trades, each open
    trade delivers up to 200 Wh and the payment joins what was spent today. At no point may
    spent + deposits + open escrow pass the daily limit, nor a price pass floor or ceiling.
    """
    import random

    rng = random.Random(seed)
    now, soc, spent, next_id = 0, 0.1, 0, 1
    bids = 0
    market: list[Listing] = []
    open_trades: list[Trade] = []
    for load in loads:
        for _ in range(rng.randint(0, 2)):
            market.append(Listing(next_id, rng.choice(["0xa", "0xb"]), rng.randint(100, 2000),
                                  rng.randint(0, 5 * MILLI), now + 300))
            next_id += 1
        s = HouseholdState(ME, now, soc, 2400.0, net_load_w=load, tokens_wh=0,
                           listings=tuple(market), trades=tuple(open_trades),
                           spent_today_wei=spent)
        assert s.committed_wei <= lim.daily_limit_wei
        decision = decide(s, lim)
        assert s.committed_wei + sum(
            a.deposit_wei for a in decision.actions if isinstance(a, Bid)) <= lim.daily_limit_wei
        for a in decision.actions:
            if isinstance(a, Bid):
                bids += 1
                assert a.price_wei_per_kwh <= lim.ceiling_wei_per_kwh
                market = [Listing(x.lot_id, x.seller, x.energy_wh, x.start_price_wei_per_kwh,
                                  x.deadline_s, a.price_wei_per_kwh, ME)
                          if x.lot_id == a.lot_id else x for x in market]
            elif isinstance(a, Close):
                closing = next(t for t in open_trades if t.trade_id == a.trade_id)
                open_trades.remove(closing)  # the rest of the escrow comes back
        now += 120
        for x in [x for x in market if x.deadline_s <= now]:
            market.remove(x)
            if x.highest_bidder == ME:
                open_trades.append(Trade(x.lot_id, x.seller, ME, x.energy_wh, 0,
                                         x.highest_bid_wei_per_kwh))
        delivered = []
        for t in open_trades:
            wh = min(t.remaining_wh, 200)
            spent += paid_wei(t.delivered_wh + wh, t.price_wei_per_kwh) - paid_wei(
                t.delivered_wh, t.price_wei_per_kwh)
            soc = min(1.0, soc + wh / 2400)
            delivered.append(Trade(t.trade_id, t.seller, t.buyer, t.energy_wh,
                                   t.delivered_wh + wh, t.price_wei_per_kwh))
        open_trades = [t for t in delivered if t.remaining_wh > 0]
        soc = min(1.0, max(0.0, soc - load * 120 / 3600 / 2400))
        s = HouseholdState(ME, now, soc, 2400.0, listings=tuple(market),
                           trades=tuple(open_trades), spent_today_wei=spent)
        assert s.committed_wei <= lim.daily_limit_wei
    event("bid" if bids else "no bid")
