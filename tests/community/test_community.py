"""Many households on one DC bus: relays gate the flows, and every Wh is accounted for."""

from __future__ import annotations

import math
import random

import pytest

from hardware.community import Community, Household, Weather
from hardware.models import LeadAcidBattery, LoadProfile, SolarArray

DAY = 86_400.0


def seller_and_buyer(seller_soc: float = 0.9, buyer_soc: float = 0.2) -> Community:
    """A seller with a charged battery and a buyer with an empty one, night, steady loads."""
    seller = Household("seller", battery=LeadAcidBattery(capacity_wh=2400, soc=seller_soc),
                       load=LoadProfile.constant(100))
    buyer = Household("buyer", battery=LeadAcidBattery(capacity_wh=2400, soc=buyer_soc),
                      load=LoadProfile.constant(300))
    return Community([seller, buyer])


def assert_household_balances(community: Community) -> None:
    """produced + imported = consumed + exported + stored + curtailed + losses, to the Wh."""
    for house in community.households.values():
        c = house.counters
        stored = c.stored_wh - house.initial_stored_wh
        ins = c.generation_wh + c.imported_wh
        outs = c.consumed_wh + c.exported_wh + stored + c.curtailed_wh + c.losses_wh
        assert ins == pytest.approx(outs, abs=1.0)
        assert c.demand_wh == pytest.approx(c.consumed_wh + c.unmet_wh, abs=1.0)
        assert c.consumed_wh == pytest.approx(c.own_wh + c.imported_wh, abs=1e-6)
        # the losses are the battery's efficiencies at work, computed independently here
        battery = house.battery
        delivered = c.own_wh + c.exported_wh
        expected = (c.charged_wh * (1 - battery.charge_efficiency)
                    + delivered * (1 / battery.discharge_efficiency - 1))
        assert c.losses_wh == pytest.approx(expected, abs=1.0)
        assert c.generation_wh == pytest.approx(c.charged_wh + c.curtailed_wh, abs=1e-6)


def test_energy_crosses_the_bus_only_while_both_relays_are_closed():
    community = seller_and_buyer()
    community.set_relay("seller", "buyer", "seller", True)
    community.advance(3600)
    buyer = community.households["buyer"].counters
    assert buyer.imported_wh == 0
    assert buyer.unmet_wh == pytest.approx(300)  # its battery is at the floor: all shed

    community.set_relay("seller", "buyer", "buyer", True)
    community.advance(3600)
    buyer = community.households["buyer"].counters
    seller = community.households["seller"].counters
    assert buyer.imported_wh == pytest.approx(300)
    assert seller.exported_wh == pytest.approx(300)
    assert community.connection("seller", "buyer").delivered_wh == pytest.approx(300)
    assert buyer.unmet_wh == pytest.approx(300)  # only the first hour was shed

    community.set_relay("seller", "buyer", "seller", False)
    community.advance(3600)
    assert community.households["buyer"].counters.imported_wh == pytest.approx(300)
    assert community.households["buyer"].counters.unmet_wh == pytest.approx(600)
    assert_household_balances(community)


def test_set_connection_closes_and_opens_both_relays():
    community = seller_and_buyer()
    community.set_connection("seller", "buyer", True)
    link = community.connection("seller", "buyer")
    assert (link.seller_relay, link.buyer_relay, link.closed) == (True, True, True)
    community.set_connection("seller", "buyer", False)
    assert (link.seller_relay, link.buyer_relay, link.closed) == (False, False, False)


def test_a_connected_buyer_uses_the_sellers_battery_before_its_own():
    community = seller_and_buyer(buyer_soc=0.8)
    buyer_before = community.households["buyer"].battery.stored_wh
    community.set_connection("seller", "buyer", True)
    community.advance(1800)
    assert community.households["buyer"].battery.stored_wh == pytest.approx(buyer_before)
    assert community.households["buyer"].counters.imported_wh == pytest.approx(150)


def test_a_seller_that_runs_dry_leaves_the_rest_to_the_buyers_own_battery_then_sheds():
    community = seller_and_buyer(seller_soc=0.25, buyer_soc=0.3)
    community.set_connection("seller", "buyer", True)
    community.advance(6 * 3600)
    seller = community.households["seller"]
    buyer = community.households["buyer"].counters
    assert seller.battery.soc == pytest.approx(seller.battery.min_soc)
    # the seller had 0.05 x 2400 Wh above its floor, 95 % of it reaches the terminals
    assert buyer.imported_wh + seller.counters.own_wh == pytest.approx(120 * 0.95)
    assert buyer.own_wh == pytest.approx(240 * 0.95)
    assert buyer.unmet_wh > 0 and seller.counters.unmet_wh > 0
    assert_household_balances(community)


def test_a_full_battery_curtails_pv_and_an_empty_one_sheds_load():
    sunny = Household("sunny", pv=SolarArray(peak_w=2000),
                      battery=LeadAcidBattery(capacity_wh=1000, soc=1.0),
                      load=LoadProfile.constant(0))
    dark = Household("dark", battery=LeadAcidBattery(capacity_wh=1000, soc=0.2),
                     load=LoadProfile.constant(50))
    community = Community([sunny, dark], time_s=0.0)
    community.advance(DAY)
    assert sunny.counters.curtailed_wh == pytest.approx(sunny.counters.generation_wh)
    assert sunny.counters.generation_wh == pytest.approx(2000 * 12 * 2 / math.pi, rel=1e-3)
    assert dark.counters.unmet_wh == pytest.approx(50 * 24)
    assert_household_balances(community)


def test_a_generated_community_balances_every_household_and_the_whole_to_the_wh():
    community = Community.generate(8, seed=11)
    rng = random.Random(5)
    names = list(community.households)
    for _ in range(3 * 24):  # three days, relays thrown at random every hour
        seller, buyer = rng.sample(names, 2)
        community.set_relay(seller, buyer, rng.choice(("seller", "buyer")), rng.random() < 0.7)
        community.advance(3600)
    totals = community.totals()
    assert totals.imported_wh > 0  # some energy did cross the bus
    assert totals.imported_wh == pytest.approx(totals.exported_wh, abs=1e-6)
    stored = totals.stored_wh - community.initial_stored_wh
    assert totals.generation_wh == pytest.approx(
        totals.consumed_wh + stored + totals.curtailed_wh + totals.losses_wh, abs=1.0)
    assert_household_balances(community)
    assert community.time_s == pytest.approx(3 * DAY)


def test_the_same_seed_gives_the_same_households_and_sky_and_another_seed_does_not():
    one, two, other = (Community.generate(12, seed=s) for s in (3, 3, 4))
    for community in (one, two, other):
        community.advance(DAY)

    def fingerprint(c: Community) -> list[tuple]:
        return [(h.pv.peak_w, h.battery.capacity_wh, h.load.points, h.counters)
                for h in c.households.values()]

    assert fingerprint(one) == fingerprint(two)
    assert fingerprint(one) != fingerprint(other)


def test_generated_households_look_like_households():
    community = Community.generate(40, seed=1)
    houses = list(community.households.values())
    pv = [h.pv.peak_w for h in houses]
    assert any(p == 0 for p in pv) and any(p > 0 for p in pv)
    assert all(0 <= p <= 3500 for p in pv)
    assert len({h.battery.capacity_wh for h in houses}) > 1
    for h in houses:
        night = h.load.power_at(3)
        assert max(h.load.power_at(x / 4) for x in range(5 * 4, 11 * 4)) > night  # morning peak
        assert max(h.load.power_at(x / 4) for x in range(17 * 4, 24 * 4)) > night  # evening peak
    assert any(h.load.power_at(13) > h.load.power_at(3) for h in houses)  # some at home midday
    assert any(h.load.power_at(13) == h.load.power_at(3) for h in houses)  # some out
    assert len({h.load.points for h in houses}) == len(houses)


def test_the_weather_varies_from_day_to_day_and_is_the_same_for_the_same_seed():
    weather = Weather(seed=9)
    days = [weather.clearness(d) for d in range(30)]
    assert all(weather.low <= x <= 1 for x in days)
    assert len(set(days)) == 30
    assert max(days) - min(days) > 0.3
    assert days == [Weather(seed=9).clearness(d) for d in range(30)]
    assert Weather(seed=None).clearness(4) == 1.0


def test_a_cloudy_day_makes_less_pv_than_a_clear_one():
    def day_of_pv(weather: Weather, day: int) -> float:
        house = Household("h", pv=SolarArray(peak_w=1000),
                          battery=LeadAcidBattery(capacity_wh=1e6, soc=0.2))
        community = Community([house], weather, time_s=day * DAY)
        community.advance(DAY)
        return house.counters.generation_wh

    weather = Weather(seed=2)
    clear = day_of_pv(Weather(seed=None), 0)
    for day in range(3):
        assert day_of_pv(weather, day) == pytest.approx(clear * weather.clearness(day), rel=1e-3)


def test_time_runs_only_on_advance_and_the_step_size_does_not_change_the_result():
    coarse, fine = Community.generate(3, seed=8), Community.generate(3, seed=8)
    coarse.advance(7200)
    for _ in range(120):
        fine.advance(60)
    assert coarse.time_s == fine.time_s == 7200
    for a, b in zip(coarse.households.values(), fine.households.values(), strict=True):
        assert a.counters.generation_wh == pytest.approx(b.counters.generation_wh)
        assert a.counters.consumed_wh == pytest.approx(b.counters.consumed_wh)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.set_relay("seller", "buyer", "middle", True), ValueError),
        (lambda c: c.set_connection("seller", "nobody", True), KeyError),
        (lambda c: c.set_connection("seller", "seller", True), ValueError),
        (lambda c: c.advance(-1), ValueError),
    ],
)
def test_bad_wiring_is_refused(call, error):
    community = seller_and_buyer()
    with pytest.raises(error):
        call(community)
    assert community.connections == {} or not any(
        link.closed for link in community.connections.values())


def test_a_community_needs_distinct_households():
    with pytest.raises(ValueError, match="two households"):
        Community([Household("a"), Household("a")])
    with pytest.raises(ValueError):
        Community([])
