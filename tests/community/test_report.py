"""The baseline, the oracle trader and the report: KPIs, balances, report.json and index.html."""

from __future__ import annotations

import json
import re

import pytest

from dapp.simulate.baseline import (
    ORACLE_PRICE_WEI_PER_KWH,
    run_baseline,
    run_oracle,
    simulate,
    surplus_deficit_scenario,
)
from dapp.simulate.report import (
    HouseholdSeries,
    Interval,
    RunSeries,
    balance,
    build_report,
    kpis,
    write_report,
)
from hardware.community import Community

DAY = 86_400.0


def test_an_oracle_trader_raises_self_sufficiency_over_the_baseline_and_balances_close():
    baseline = run_baseline(surplus_deficit_scenario(), DAY)
    trading = run_oracle(surplus_deficit_scenario(), DAY)
    report = build_report(trading, baseline)
    with_trade, alone = report["trading"], report["baseline"]
    assert alone["traded_kwh"] == 0
    assert with_trade["traded_kwh"] > 1
    assert with_trade["self_sufficiency"] > alone["self_sufficiency"] + 0.2
    assert with_trade["self_consumption"] > alone["self_consumption"]
    assert with_trade["unmet_demand_kwh"] < alone["unmet_demand_kwh"]
    assert with_trade["curtailed_kwh"] < alone["curtailed_kwh"]
    # same households, same sky: the same PV and the same demand in both runs
    assert with_trade["generation_kwh"] == pytest.approx(alone["generation_kwh"])
    assert with_trade["demand_kwh"] == pytest.approx(alone["demand_kwh"])
    assert report["balance"]["closes"] is True
    for run in ("trading", "baseline"):
        assert abs(report["balance"][run]["energy"]["residual_wh"]) < 1.0
        assert report["balance"][run]["ether"]["residual_wei"] == 0
    dark = next(h for h in with_trade["per_household"] if h["name"] == "dark")
    sunny = next(h for h in with_trade["per_household"] if h["name"] == "sunny")
    assert dark["ether_out_wei"] == sunny["ether_in_wei"] > 0
    assert dark["imported_kwh"] == pytest.approx(sunny["exported_kwh"])
    price = with_trade["prices_wei_per_kwh"]
    assert price["mean"] == pytest.approx(ORACLE_PRICE_WEI_PER_KWH, rel=1e-6)


def test_the_baseline_runs_the_same_generated_community_with_no_connections():
    baseline = run_baseline(Community.generate(6, seed=21), DAY / 2)
    trading = run_oracle(Community.generate(6, seed=21), DAY / 2)
    assert [h.name for h in baseline.households] == [h.name for h in trading.households]
    for b, t in zip(baseline.households, trading.households, strict=True):
        assert b.total("imported_wh") == b.total("exported_wh") == 0
        assert b.total("generation_wh") == pytest.approx(t.total("generation_wh"))
    assert len(baseline.households[0].intervals) == 48  # 12 h of quarter hours
    assert baseline.duration_s == DAY / 2
    assert build_report(trading, baseline)["balance"]["closes"] is True


def hand_run(**overrides) -> RunSeries:
    """One household, one day in one interval, with round numbers to check the formulas by."""
    interval = {"t_s": DAY, "generation_wh": 1000.0, "demand_wh": 800.0,
                "consumption_wh": 500.0, "unmet_wh": 300.0, "curtailed_wh": 200.0,
                "losses_wh": 150.0, "stored_wh": 1150.0, "soc": 0.5}
    interval.update(overrides)
    house = HouseholdSeries("h", pv_peak_w=1000, capacity_wh=2300, initial_stored_wh=1000.0,
                            discharge_efficiency=0.9, intervals=[Interval(**interval)])
    return RunSeries("hand", interval_s=DAY, households=[house])


def test_the_kpis_follow_their_stated_formulas():
    figures = kpis(hand_run())
    # the battery ended fuller than it started: all 500 Wh consumed came from PV
    assert figures["self_sufficiency"] == pytest.approx(500 / 800)
    assert figures["self_consumption"] == pytest.approx((1000 - 200) / 1000)
    assert figures["local_pv_use"] == pytest.approx(500 / 1000)
    assert figures["unmet_demand_kwh"] == pytest.approx(0.3)
    assert figures["curtailed_kwh"] == pytest.approx(0.2)
    # a battery that ran down by 200 Wh gave 180 Wh at its terminals that PV did not make
    drained_run = hand_run(stored_wh=800.0, generation_wh=350.0, curtailed_wh=0.0,
                           losses_wh=50.0)
    assert balance(drained_run)["energy"]["closes"] is True
    drained = kpis(drained_run)
    assert drained["self_sufficiency"] == pytest.approx((500 - 200 * 0.9) / 800)


def test_kpis_of_nothing_are_null_not_invented():
    figures = kpis(hand_run(generation_wh=0.0, curtailed_wh=0.0, demand_wh=0.0,
                            consumption_wh=0.0, unmet_wh=0.0))
    assert figures["self_sufficiency"] is None
    assert figures["self_consumption"] is None


def test_a_balance_that_does_not_close_is_reported_as_such():
    assert balance(hand_run())["energy"]["closes"] is True
    leaky = balance(hand_run(losses_wh=140.0))
    assert leaky["energy"]["closes"] is False
    assert leaky["energy"]["residual_wh"] == pytest.approx(10.0)
    unpaid = hand_run(ether_out_wei=1000, ether_in_wei=400)
    assert balance(unpaid)["ether"] == {
        "sent_to_market_wei": 1000, "returned_wei": 400, "held_by_market_wei": 0,
        "residual_wei": 600, "equation": "sent to the market = returned + held by the market",
        "closes": False}
    unpaid.held_wei = 600  # still in escrow at the end: conserved
    assert balance(unpaid)["ether"]["closes"] is True
    report = build_report(hand_run(losses_wh=140.0), hand_run())
    assert report["balance"]["closes"] is False
    assert "NOT" in report["balance"]["statement"]


def test_chain_cost_per_household_per_day_and_per_block():
    run = hand_run(gas_used=300_000, transactions=4)
    run.block_transactions = [1, 0, 3]
    chain = kpis(run)["chain"]
    assert chain["gas_per_household_per_day"] == pytest.approx(300_000)
    assert chain["transactions"] == 4
    assert (chain["blocks"], chain["transactions_per_block_mean"],
            chain["transactions_per_block_max"]) == (3, pytest.approx(4 / 3), 3)
    run.trade_prices_wei_per_kwh = [10, 30, 20]
    assert kpis(run)["prices_wei_per_kwh"] == {"mean": 20, "min": 10, "max": 30,
                                               "source": "trades"}


def test_runs_over_different_households_are_refused():
    other = hand_run()
    other.households[0].name = "someone else"
    with pytest.raises(ValueError, match="same households"):
        build_report(hand_run(), other)


def test_the_report_directory_has_json_html_and_every_plot(tmp_path):
    baseline = run_baseline(surplus_deficit_scenario(), DAY / 2)  # midnight to noon
    trading = run_oracle(surplus_deficit_scenario(), DAY / 2)
    written = write_report(tmp_path / "out", trading, baseline)
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(written))
    for run in ("trading", "baseline"):
        for key in ("self_sufficiency", "self_consumption"):
            assert 0 <= report[run][key] <= 1
        for key in ("unmet_demand_kwh", "curtailed_kwh", "traded_kwh", "local_pv_use_kwh"):
            assert report[run][key] >= 0
        assert set(report[run]["prices_wei_per_kwh"]) == {"mean", "min", "max", "source"}
        assert "gas_per_household_per_day" in report[run]["chain"]
    assert set(report["balance"]) >= {"trading", "baseline", "closes", "statement"}
    page = (out / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert set(images) == {p["file"] for p in report["plots"]}
    assert {"community.png", "battery.png", "trades.png", "households.png",
            "household-sunny.png", "household-dark.png"} <= set(images)
    for name in images:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Energy and Ether balances close in both runs." in page


def test_simulate_reports_progress_and_rejects_nonsense():
    seen = []
    simulate(surplus_deficit_scenario(), 3600, 900, on_interval=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with pytest.raises(ValueError):
        simulate(surplus_deficit_scenario(), 0)
