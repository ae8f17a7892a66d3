"""`microgrid simulate` on the real contracts, a real anvil and one real meter bridge.

One short run of the surplus/deficit scenario (a sunny household with a full battery, a dark one
with an empty one; three simulated hours from 08:00) is shared by the chain tests: the balances
close from chain state, the agents stay within their limits (the dark household's daily limit
is set to bind), every reading reaches the chain within two blocks, and trading raises the
community's self-sufficiency over the baseline. The `community://` meters are tested on their
own, without a chain.
"""

from __future__ import annotations

import json

import pytest

from dapp.agents.policy import Limits
from dapp.bridge.drivers import open_driver
from dapp.cli import main
from dapp.simulate.baseline import surplus_deficit_scenario
from dapp.simulate.chain_run import DEFAULT_LIMITS, ChainSimulation, SimulationSettings
from dapp.simulate.meters import CommunityBus
from hardware.community import Community
from hardware.models import EMPTY_CELL_V, soc_from_voltage
from hardware.protocol import LOAD, SUPPLY
from hardware.signing import BlockRef, Domain, recover_signer

BLOCK = BlockRef(7, bytes(range(32)))  # the block the tests pass with READ

START_S = 8 * 3600.0
HOURS = 3
MILLI = 10**15
# The dark household may spend 0.4 mETH a day: at the 0.5 mETH/kWh floor, 0.8 kWh.
TIGHT = Limits(reserve_percent=40.0, floor_wei_per_kwh=MILLI // 2, ceiling_wei_per_kwh=3 * MILLI,
               daily_limit_wei=4 * MILLI // 10)


def morning_scenario() -> Community:
    """The surplus/deficit pair, from 08:00."""
    community = surplus_deficit_scenario()
    community.time_s = community.start_s = START_S
    return community


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    settings = SimulationSettings(households=2, days=HOURS / 24, block_s=120, poll_s=120,
                                  interval_s=1200, agent_interval_s=240, auction_s=600,
                                  community_factory=morning_scenario,
                                  household_limits={"dark": TIGHT})
    sim = ChainSimulation(settings)
    sim.run()
    out = tmp_path_factory.mktemp("report")
    report = sim.write(out)
    return sim, report, out


@pytest.mark.slow
def test_trading_raises_self_sufficiency_over_the_baseline(run):
    _, report, _ = run
    trading, baseline = report["trading"], report["baseline"]
    assert baseline["traded_kwh"] == 0
    assert trading["traded_kwh"] > 0.2
    assert report["run"]["trades_opened"] >= 2
    assert trading["self_sufficiency"] > baseline["self_sufficiency"] + 0.1
    assert trading["unmet_demand_kwh"] < baseline["unmet_demand_kwh"]


@pytest.mark.slow
def test_energy_and_ether_balances_close_from_chain_state(run):
    sim, report, out = run
    bal = report["balance"]
    assert bal["closes"] is True
    ether = bal["trading"]["ether"]
    assert ether["sent_to_market_wei"] > 0  # bids escrowed Ether: the balance is not 0 = 0
    assert ether["residual_wei"] == 0
    assert ether["accounts_close"] is True
    for account in ether["accounts"]:
        assert account["residual_wei"] == 0
        assert account["gas_fees_wei"] > 0
    dark = next(a for a in ether["accounts"] if a["name"] == "dark")
    sunny = next(a for a in ether["accounts"] if a["name"] == "sunny")
    assert dark["paid_wei"] > 0 and sunny["earned_wei"] == dark["paid_wei"]
    energy = bal["trading"]["energy"]
    assert abs(energy["residual_wh"]) < 1.0
    assert energy["imported_kwh"] == pytest.approx(energy["exported_kwh"], abs=1e-3)
    assert report["run"]["event_book_matches_chain"] is True
    # What the meters signed is what the chain recorded, to the last whole Wh.
    for meter in report["run"]["metering"]:
        assert meter["supply_on_chain_wh"] == int(meter["charged_wh"])
        assert meter["load_on_chain_wh"] == int(meter["imported_wh"])
        # Billed: what the load meter measured, plus what the stall rule charged for silence.
        assert meter["settled_wh"] <= meter["load_on_chain_wh"] + meter["stall_charged_wh"]
    assert json.loads((out / "report.json").read_text())["balance"]["closes"] is True
    assert "Energy and Ether balances close" in (out / "index.html").read_text()


@pytest.mark.slow
def test_agents_decide_on_the_charge_their_supply_meter_reports(run, monkeypatch):
    normal, _, _ = run
    sunny = normal.households["sunny"].account.address
    assert any(seller == sunny for seller, _, _ in normal.book.listings)  # 90 % full: it sells
    # The same morning, but sunny's supply meter reports an empty battery's voltage: its agent
    # believes the meter, not the model (whose battery stays nearly full), and sells nothing.
    honest = CommunityBus.battery_volts
    empty_v = EMPTY_CELL_V * 12  # a 24 V bank of 12 cells

    def reported(bus: CommunityBus, house: str) -> float:
        return empty_v if house == "sunny" else honest(bus, house)

    monkeypatch.setattr(CommunityBus, "battery_volts", reported)
    sim = ChainSimulation(SimulationSettings(
        households=2, days=1 / 24, block_s=120, poll_s=120, interval_s=1200,
        agent_interval_s=240, auction_s=600, community_factory=morning_scenario))
    sim.run()
    assert sim.households["sunny"].decisions > 0
    assert sim.community.households["sunny"].battery.soc > 0.8
    misled = sim.households["sunny"].account.address
    assert not any(seller == misled for seller, _, _ in sim.book.listings)


@pytest.mark.slow
def test_agents_never_exceed_their_limits(run):
    sim, report, _ = run
    assert report["run"]["limits"]["violations"] == []
    assert sim.book.bids, "the agents never bid: the limits were not exercised"
    for bidder, _, price in sim.book.bids:
        limits = TIGHT if sim.by_address[bidder] == "dark" else DEFAULT_LIMITS
        assert price <= limits.ceiling_wei_per_kwh
    for _, _, price in sim.book.listings:
        assert price >= DEFAULT_LIMITS.floor_wei_per_kwh
    dark = sim.households["dark"].account.address
    paid = sum(d for (acct, _), d in sim.book.spent_by_day.items() if acct == dark)
    assert 0 < paid <= TIGHT.daily_limit_wei
    # The limit bound: the agent said so instead of bidding.
    assert any("daily limit" in line and "did not bid" in line
               for line in sim.households["dark"].log)


@pytest.mark.slow
def test_every_reading_is_on_chain_within_two_blocks(run):
    _, report, _ = run
    readings = report["run"]["readings"]
    assert readings["energy_readings_measured"] > 50
    assert readings["readings_rejected"] == 0
    assert readings["age_blocks_max"] <= 2
    assert readings["backlog_at_end"] == 0


def test_community_meters_sign_their_own_counters_and_switch_the_connection():
    community = surplus_deficit_scenario()
    community.time_s = community.start_s = 12 * 3600.0
    clock = [0.0]
    bus = CommunityBus(community, lambda: clock[0], watchdog_s=600)
    bus.register()
    domain = Domain(31337, "0x" + "12" * 20)
    supply = open_driver(bus.url("sunny", SUPPLY))
    load = open_driver(bus.url("dark", LOAD))
    for driver in (supply, load):
        assert driver.identify().domain is None
        assert driver.provision(domain.chain_id, domain.registry).domain == (
            domain.chain_id, domain.registry)
    bus.set_routes({"dark": "sunny"})
    community.advance(600)
    assert load.read(BLOCK).energy_wh == 0  # relays open: nothing crosses the bus
    supply.set_relay(True)
    community.advance(600)
    assert load.read(BLOCK).energy_wh == 0  # one relay is not enough
    assert load.set_relay(True) is True
    community.advance(600)
    reading = load.read(BLOCK)
    assert reading.energy_wh == int(community.households["dark"].counters.imported_wh) > 0
    signed = reading.signed
    assert signed.block == BLOCK
    assert recover_signer(domain, signed.meter, signed.energy_wh, signed.sequence, BLOCK,
                          signed.signature) == bus.address("dark", LOAD)
    assert signed.meter != bus.address("sunny", SUPPLY)
    # The supply meter reports its battery's voltage, from which an agent reads the charge.
    battery = community.households["sunny"].battery
    volts = supply.read(BLOCK).voltage_v
    assert volts == round(battery.voltage(), 2)
    assert soc_from_voltage(volts, battery.nominal_v) == pytest.approx(battery.soc, abs=0.01)
    # A silent bridge: the meters' watchdogs open the relays by themselves.
    clock[0] += 601
    bus.watchdogs()
    before = community.households["dark"].counters.imported_wh
    community.advance(600)
    assert community.households["dark"].counters.imported_wh == before


@pytest.mark.parametrize(("flag", "value"), [("--households", "0"), ("--days", "-1"),
                                             ("--days", "abc"), ("--seed", "x")])
def test_simulate_refuses_bad_settings(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", flag, value])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


def test_simulate_settings_come_from_the_environment(monkeypatch):
    from dapp.cli import build_parser

    monkeypatch.setenv("MICROGRID_SIM_HOUSEHOLDS", "40")
    monkeypatch.setenv("MICROGRID_SIM_DAYS", "7")
    monkeypatch.setenv("MICROGRID_SIM_SEED", "3")
    monkeypatch.setenv("MICROGRID_SIM_OUT", "week")
    args = build_parser().parse_args(["simulate"])
    assert (args.households, args.days, args.seed, args.out) == (40, 7.0, 3, "week")


@pytest.mark.slow
def test_a_stopped_run_writes_a_partial_report_that_still_balances(tmp_path):
    import threading

    stop = threading.Event()

    def progress(done: int, total: int, status: str) -> None:
        if done == 12:
            stop.set()  # what Ctrl-C does in `microgrid simulate`

    sim = ChainSimulation(SimulationSettings(households=2, days=1.0, seed=3), progress=progress)
    sim.run(stop)
    report = sim.write(tmp_path)
    assert report["run"]["stopped_early"] is True
    assert report["run"]["blocks"] == 12 + 1  # and the closing readings' block
    assert report["days"] == pytest.approx(12 * 60 / 86_400)
    assert report["balance"]["closes"] is True
    assert (tmp_path / "index.html").is_file()
