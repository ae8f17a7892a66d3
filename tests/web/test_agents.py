"""Trading agents: the service on the in-process chain, the wallet panel, the API, the live log.

The service tests give each scenario its own chain (a fresh `World`): what one agent listed or
bid would otherwise change what the next one sees. They call `run_once` themselves, as the live
hub does on each new block, and mine what it sent before looking at the chain.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dapp.chain.client import ChainClient, LotStatus
from dapp.services.agents import AgentService
from dapp.services.errors import InvalidInput
from dapp.services.market import MarketService
from dapp.services.meters import MeterBoard
from dapp.services.rules import deposit_wei
from tests.web.conftest import ETHER, Browser, World, wait_for

MILLI = ETHER // 1000  # 0.001 ETH
TX = re.compile(r"\(transaction (0x[0-9a-f]{64})\)")

GOOD = {"reserve_percent": "20", "floor_eth_per_kwh": "0.001", "ceiling_eth_per_kwh": "0.002",
        "daily_limit_eth": "1"}

# (settings over GOOD, field, words of the sentence)
BAD_SETTINGS = [
    ({"reserve_percent": "-5"}, "reserve_percent", "cannot be negative"),
    ({"reserve_percent": "150"}, "reserve_percent", "at most 100 %"),
    ({"reserve_percent": "lots"}, "reserve_percent", "must be a number of percent"),
    ({"reserve_percent": ""}, "reserve_percent", "must be a number of percent"),
    ({"floor_eth_per_kwh": "-0.001"}, "floor_eth_per_kwh", "floor price cannot be negative"),
    ({"floor_eth_per_kwh": "0.003"}, "floor_eth_per_kwh", "cannot be above the ceiling"),
    ({"ceiling_eth_per_kwh": "cheap"}, "ceiling_eth_per_kwh", "must be a number of ETH per kWh"),
    ({"ceiling_eth_per_kwh": "1e3"}, "ceiling_eth_per_kwh", "must be a number of ETH per kWh"),
    ({"ceiling_eth_per_kwh": "5000"}, "ceiling_eth_per_kwh", "can be at most 1000.0000 ETH"),
    ({"daily_limit_eth": "0.0000000000000000001"}, "daily_limit_eth", "at most 18 decimal"),
    ({"daily_limit_eth": "99999999999"}, "daily_limit_eth", "can be at most"),
    ({"daily_limit_eth": "-1"}, "daily_limit_eth", "daily spending limit cannot be negative"),
]


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[World]:
    """A chain of its own: the producer holds 5 kWh of tokens, nobody has listed yet."""
    made = World(tmp_path / "world")
    yield made
    made.close()


def service(world: World, root: Path, **options: Any) -> AgentService:
    """An agent service over `world` with its own client (its own outbox), a 10 kWh battery."""
    client = ChainClient(world.url, root / "agents", market=world.deployment.market)
    meters = MeterBoard(client)
    return AgentService(client, MarketService(client, meters), meters, capacity_wh=10_000,
                        **options)


def run(agents: AgentService, world: World, address: str) -> list[dict[str, Any]]:
    """One block's run; mines what it sent; the new log entries of `address`, oldest first."""
    before = len(agents.status(address)["log"])
    agents.run_once()
    entries = list(reversed(agents.status(address)["log"]))[before:]
    for entry in entries:
        match = TX.search(entry["text"])
        if match:
            world.mine(match.group(1))
    return entries


def nonce(world: World, role: str) -> int:
    return world.w3.eth.get_transaction_count(world.address[role], "pending")


def list_lot(world: World, energy_wh: int, price_wei: int, seconds: int = 600) -> int:
    """The producer lists a lot by hand; its id."""
    world.mine(world.client.sell(world.account("producer"), energy_wh, price_wei, seconds))
    return world.client.lot_count()


# -- the service on the chain ---------------------------------------------------------------


def test_agent_sells_the_surplus_above_the_reserve_at_the_floor(fresh, tmp_path):
    agents = service(fresh, tmp_path)
    me = fresh.address["producer"]
    agents.configure(fresh.account("producer"), True, "20", "0.0015", "0.002", "1")
    tokens = fresh.client.token_balance(me)
    assert tokens == 5_000

    entries = run(agents, fresh, me)
    lot = fresh.client.lot(fresh.client.lot_count())
    # 5 kWh in a 10 kWh battery, 20 % reserve: 3 kWh above it, offered at the floor price.
    assert (lot.status, lot.seller, lot.energy_wh) == (LotStatus.LISTED, me, 3_000)
    assert lot.price_per_kwh == 15 * MILLI // 10
    assert fresh.client.token_balance(me) == 2_000
    assert [e["kind"] for e in entries] == ["action"]
    assert "offered 3.000 kWh" in entries[0]["text"] and "reserve" in entries[0]["text"]

    seen = {"battery_percent": "50", "stored_kwh": "5.000", "battery_from": "your tokens",
            "net_load_w": "0", "spent_today_eth": "0.0000", "daily_limit_eth": "1.0000"}
    assert agents.status(me)["household"] == seen

    before = nonce(fresh, "producer")
    assert run(agents, fresh, me) == []  # the same state again: nothing new to say or send
    assert nonce(fresh, "producer") == before
    assert fresh.client.lot_count() == 1
    assert agents.status(me)["household"] == seen  # listed tokens are still in the battery


def test_agent_bids_up_to_its_ceiling_and_never_beyond(fresh, tmp_path):
    agents = service(fresh, tmp_path)
    me = fresh.address["consumer"]
    fresh.load_meter(me)
    lot_id = list_lot(fresh, 1_000, MILLI)
    agents.configure(fresh.account("consumer"), True, "20", "0.001", "0.002", "1")
    ether = fresh.client.ether_balance(me)

    entries = run(agents, fresh, me)
    lot = fresh.client.lot(lot_id)
    assert lot.buyer == me and lot.price_per_kwh == MILLI
    assert lot.deposit_wei == deposit_wei(1_000, MILLI)
    assert fresh.client.ether_balance(me) <= ether - lot.deposit_wei
    assert entries[0]["kind"] == "action" and f"bid 0.0010 ETH/kWh on lot {lot_id}" in \
        entries[0]["text"]

    # A rival outbids above the ceiling: the agent says why and sends nothing.
    fresh.load_meter(fresh.address["rival"])
    fresh.mine(fresh.client.bid(fresh.account("rival"), lot_id, 25 * MILLI // 10))
    before = nonce(fresh, "consumer")
    entries = run(agents, fresh, me)
    assert nonce(fresh, "consumer") == before
    assert fresh.client.lot(lot_id).buyer == fresh.address["rival"]
    assert any("above the 0.0020 ETH/kWh ceiling" in e["text"] for e in entries)


def test_agent_keeps_within_its_daily_limit(fresh, tmp_path):
    agents = service(fresh, tmp_path)
    me = fresh.address["consumer"]
    fresh.load_meter(me)
    first = list_lot(fresh, 2_000, MILLI)
    second = list_lot(fresh, 1_000, MILLI)
    # Needs 5 kWh; both deposits (0.002 + 0.001 ETH) would pass the 0.0025 ETH limit.
    agents.configure(fresh.account("consumer"), True, "50", "0.001", "0.002", "0.0025")

    entries = run(agents, fresh, me)
    assert fresh.client.lot(first).buyer == me
    assert fresh.client.lot(second).buyer is None
    every = fresh.client.lots_by_id(list(range(1, fresh.client.lot_count() + 1)))
    held = sum(lot.deposit_wei for lot in every if lot.buyer == me)
    assert held == deposit_wei(2_000, MILLI) <= 25 * MILLI // 10
    assert any(f"did not bid on lot {second}" in e["text"] and "daily limit" in e["text"]
               for e in entries)
    before = nonce(fresh, "consumer")
    run(agents, fresh, me)
    assert nonce(fresh, "consumer") == before


def test_agent_closes_the_connection_when_its_need_is_met(fresh, tmp_path):
    agents = service(fresh, tmp_path)
    me = fresh.address["consumer"]
    meter = fresh.load_meter(me)
    assert meter.report(fresh.client, fresh.bank).accepted  # the baseline
    lot_id = list_lot(fresh, 1_000, MILLI, seconds=30)
    agents.configure(fresh.account("consumer"), True, "20", "0.001", "0.002", "1")
    run(agents, fresh, me)
    fresh.advance(60)
    fresh.mine(fresh.client.finalize(fresh.account("finalizer"), lot_id))
    trade = fresh.client.lot(lot_id)
    assert trade.status == LotStatus.OPEN and trade.buyer == me
    credit = fresh.client.credit_of(me)

    # Still short of the 2 kWh reserve: the trade stays open.
    before = nonce(fresh, "consumer")
    run(agents, fresh, me)
    assert nonce(fresh, "consumer") == before and fresh.client.lot(lot_id).status == \
        LotStatus.OPEN

    fresh.mint(me, 2_050)  # its own PV fills the battery to the reserve: the need is met
    entries = run(agents, fresh, me)
    assert any(f"closed trade {lot_id}" in e["text"] and "need is met" in e["text"]
               for e in entries)
    # The buyer's close is two-phase: the request opens the relays, and the agent asks once.
    assert fresh.client.lot(lot_id).closing
    before = nonce(fresh, "consumer")
    entries = run(agents, fresh, me)
    assert nonce(fresh, "consumer") == before
    assert [e["text"] for e in entries] == [
        f"trade {lot_id}: close requested, the relays are open; your load meter's next reading "
        "settles what was delivered, then the trade closes"]
    fresh.advance(10)
    assert meter.report(fresh.client, fresh.bank, meter.energy_wh + 50).accepted
    closed = fresh.client.lot(lot_id)
    assert closed.status == LotStatus.CLOSED
    # The rest of the escrow comes back: the deposit minus the 50 Wh delivered, or the
    # market's minimum charge if that is more.
    charged_wh = max(50, min(1_000, fresh.client.market_parameters()["min_charge_wh"]))
    assert closed.delivered_wh == 50
    assert fresh.client.credit_of(me) == credit + trade.deposit_wei - charged_wh * MILLI // 1000


@pytest.mark.parametrize(("change", "field", "words"), BAD_SETTINGS)
def test_every_bad_setting_is_a_sentence_and_nothing_is_sent(world, tmp_path, change, field,
                                                             words):
    agents = service(world, tmp_path)
    me = world.address["producer"]
    before = nonce(world, "producer"), world.client.lot_count()
    with pytest.raises(InvalidInput) as refused:
        agents.configure(world.account("producer"), True, **{**GOOD, **change})
    assert words in refused.value.message and refused.value.field == field
    assert not agents.is_on(me)
    agents.run_once()
    assert (nonce(world, "producer"), world.client.lot_count()) == before


def test_a_bad_change_keeps_the_agent_as_it_was(world, tmp_path):
    agents = service(world, tmp_path)
    me = world.address["consumer"]
    agents.configure(world.account("consumer"), True, **GOOD)
    with pytest.raises(InvalidInput):
        agents.configure(world.account("consumer"), True, **{**GOOD, "reserve_percent": "101"})
    status = agents.status(me)
    assert status["on"] and status["limits"]["reserve_percent"] == "20"
    with pytest.raises(InvalidInput, match="true or false"):
        agents.configure(world.account("consumer"), "maybe")
    assert agents.is_on(me)


def test_turning_off_or_expiry_forgets_the_key(world, tmp_path):
    now = [1_000.0]
    agents = service(world, tmp_path, expiry_s=3600, clock=lambda: now[0])
    me, other = world.address["consumer"], world.address["rival"]
    agents.configure(world.account("consumer"), True, **GOOD)
    agents.configure(world.account("rival"), True, **GOOD)
    agents.configure(world.account("consumer"), False)
    assert not agents.is_on(me) and agents.is_on(other)
    assert agents.status(me)["limits"]["floor_eth_per_kwh"] == "0.0010"  # limits, not the key
    now[0] += 3601
    assert not agents.is_on(other)  # no block needed: looking is enough
    assert "1 hours passed" in agents.status(other)["log"][0]["text"]
    assert agents._agents == {}  # noqa: SLF001 - no key is left in the service


# -- the wallet page ------------------------------------------------------------------------


def test_wallet_panel_turns_the_agent_on_and_off(producer, app, world):
    html = producer.text("/wallet/")
    assert "Trading agent" in html and 'id="agent-state-text">Off<' in html
    assert "keeps your decrypted key in its memory" in html
    assert "Logging out does not stop the agent" in html
    assert "the voltage it measures at your battery" in html

    answer = producer.post("/wallet/agent", {"on": "on", **GOOD})
    assert answer.status_code == 303
    html = producer.text("/wallet/")
    assert 'id="agent-state-text">On' in html and "Agent on: keeps a 20 % reserve" in html
    assert 'name="ceiling_eth_per_kwh" inputmode="decimal" placeholder="0.002"\n' \
           '             value="0.0020"' in html
    assert app.extensions["microgrid"].agents.is_on(world.address["producer"])

    assert producer.post("/wallet/agent", {"on": "off"}).status_code == 303
    assert 'id="agent-state-text">Off<' in producer.text("/wallet/")
    assert not app.extensions["microgrid"].agents.is_on(world.address["producer"])


@pytest.mark.parametrize(("change", "field", "words"), BAD_SETTINGS[:6])
def test_wallet_panel_refuses_bad_settings(producer, app, world, change, field, words):
    before = nonce(world, "producer")
    answer = producer.post("/wallet/agent", {"on": "on", **GOOD, **change})
    assert answer.status_code == 400
    page = answer.get_data(as_text=True)
    assert words in page and 'id="agent-error"' in page
    assert f'value="{next(iter(change.values()))}"' in page  # what was typed stays
    assert not app.extensions["microgrid"].agents.is_on(world.address["producer"])
    assert nonce(world, "producer") == before


def test_wallet_panel_needs_the_csrf_token(producer, app, world):
    answer = producer.client.post("/wallet/agent", data={"on": "on", **GOOD})
    assert answer.status_code == 400
    assert not app.extensions["microgrid"].agents.is_on(world.address["producer"])


def test_logout_leaves_the_agent_on(app, world):
    person = Browser(app.test_client(), world)
    assert person.login("rival").status_code == 303
    assert person.post("/wallet/agent", {"on": "on", **GOOD}).status_code == 303
    person.post("/logout")
    assert app.extensions["microgrid"].agents.is_on(world.address["rival"])


# -- the JSON API ---------------------------------------------------------------------------


def test_agent_over_the_api(consumer, app, world):
    status = consumer.client.get("/api/v1/agent").get_json()
    assert status["on"] is False and status["limits"] is None and status["log"] == []
    assert "memory" in status["notes"]["key"] and status["capacity_kwh"] == "10"

    answer = consumer.api("PUT", "/api/v1/agent", {"on": True, "reserve_percent": 30,
                                                   "floor_eth_per_kwh": 0.001,
                                                   "ceiling_eth_per_kwh": "0.004",
                                                   "daily_limit_eth": "0.5"})
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["on"] is True and body["message"].startswith("Agent on")
    assert body["limits"] == {"reserve_percent": "30", "floor_eth_per_kwh": "0.0010",
                              "ceiling_eth_per_kwh": "0.0040", "daily_limit_eth": "0.5000"}
    # Left-out limits keep their saved values.
    changed = consumer.api("PUT", "/api/v1/agent", {"on": True, "reserve_percent": "45"})
    assert changed.get_json()["limits"]["ceiling_eth_per_kwh"] == "0.0040"
    assert changed.get_json()["limits"]["reserve_percent"] == "45"

    off = consumer.api("PUT", "/api/v1/agent", {"on": False}).get_json()
    assert off["on"] is False and off["log"][0]["text"].startswith("Agent off")


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"on": True, **GOOD, "reserve_percent": -1}, "reserve_percent", "cannot be negative"),
    ({"on": True, **GOOD, "reserve_percent": 101}, "reserve_percent", "at most 100 %"),
    ({"on": True, **GOOD, "floor_eth_per_kwh": "0.01"}, "floor_eth_per_kwh", "above the ceiling"),
    ({"on": True, **GOOD, "daily_limit_eth": [1]}, "daily_limit_eth", "must be a number"),
    ({"on": True, **GOOD, "ceiling_eth_per_kwh": True}, "ceiling_eth_per_kwh", "a number"),
    ({"on": True, **GOOD, "daily_limit_eth": "NaN"}, "daily_limit_eth", "must be a number"),
    ({"on": "yes", **GOOD}, "on", "true or false"),
    ({**GOOD}, "on", "true or false"),
])
def test_bad_agent_settings_over_the_api(consumer, app, world, body, field, words):
    before = nonce(world, "consumer")
    answer = consumer.api("PUT", "/api/v1/agent", body)
    assert answer.status_code == 400
    error = answer.get_json()
    assert words in error["error"] and error["field"] == field
    assert consumer.client.get("/api/v1/agent").get_json()["on"] is False
    assert nonce(world, "consumer") == before


def test_agent_api_needs_a_session_and_the_csrf_header(browser, consumer):
    assert browser.client.get("/api/v1/agent").status_code == 401
    assert consumer.client.put("/api/v1/agent", json={"on": True, **GOOD}).status_code == 400
    assert consumer.client.get("/api/v1/agent").get_json()["on"] is False


# -- the live log ---------------------------------------------------------------------------


def test_the_log_goes_to_the_owners_room_only(app, world):
    from tests.web.test_sockets import connect, logged_in

    owner, other = logged_in(app, world, "consumer"), logged_in(app, world, "rival")
    mine, theirs = connect(app, owner), connect(app, other)
    assert mine.sio.is_connected() and theirs.sio.is_connected()
    assert owner.api("PUT", "/api/v1/agent", {"on": True, **GOOD}).status_code == 200
    entry = mine.wait("agent", lambda e: e["text"].startswith("Agent on"))
    assert entry["kind"] == "status" and entry["on"] is True
    app.extensions["microgrid"].agents.run_once()  # a block: it wants energy, no lot is open
    mine.wait("agent", lambda e: e["kind"] in ("note", "action"))
    assert theirs.named("agent") == []


def test_a_page_that_connects_late_gets_what_was_logged_meanwhile(app, world):
    """The wallet page renders the log, then connects its socket: what the agent logged in
    between (its first action, a block after it was turned on) reaches the page on connecting,
    numbered, so the page shows each entry once and in order."""
    from tests.web.test_sockets import connect, logged_in

    owner, other = logged_in(app, world, "consumer"), logged_in(app, world, "rival")
    agents = app.extensions["microgrid"].agents
    me = world.address["consumer"]
    assert owner.api("PUT", "/api/v1/agent", {"on": True, **GOOD}).status_code == 200
    agents.run_once()  # a block before the page's socket is there
    logged = agents.entries(me)
    seqs = [e["seq"] for e in logged]
    assert len(logged) >= 2 and seqs == sorted(set(seqs))
    late, theirs = connect(app, owner), connect(app, other)
    app.extensions["microgrid"].hub.flush()  # the hub greets new sockets on its next tick
    got = late.wait("agent_log")["entries"]
    assert [e["seq"] for e in got] == seqs
    assert [e["text"] for e in got] == [e["text"] for e in logged]
    assert theirs.named("agent_log") == []  # the rival's agent logged nothing
    page = owner.text("/wallet/")
    assert all(f'data-seq="{e["seq"]}"' in page for e in got)  # the page numbers its own too


class LiveSupply:
    """Stands in for the meter bridge: the owner's supply meter, live, at a battery voltage."""

    def __init__(self, owner: str, meter: str, volts: float, online: bool = True) -> None:
        from types import SimpleNamespace

        self.meter = SimpleNamespace(address=meter, owner=owner, kind="supply", online=online,
                                     relay_closed=True, energy_wh=None, power_w=0.0,
                                     voltage_v=volts, last_error="")

    def on_event(self, event: Any) -> None:
        """Chain events change nothing here."""

    def state(self) -> list[Any]:
        """The meters as a bridge reports them."""
        return [self.meter]


def test_the_charge_comes_from_the_battery_voltage_while_the_supply_meter_is_live(
        fresh, tmp_path):
    """The tokens say the battery is half full (5 of 10 kWh), but the household used its energy
    itself: the supply meter measures 23.9 V at the 24 V bank, 24.5 %. The agent believes the
    voltage and offers only the 0.45 kWh above the 20 % reserve (the tokens would have made it
    offer 3 kWh); with the meter offline it falls back to the tokens."""
    agents = service(fresh, tmp_path)
    me = fresh.address["producer"]
    meter = fresh.supply_meters[me].address
    assert fresh.client.token_balance(me) == 5_000
    assert agents.state_of(me, fresh.now(), []).soc == pytest.approx(0.5)
    assert agents.battery_source(me) == "tokens"
    agents.meters.bridge = LiveSupply(me, meter, volts=23.9)
    assert agents.state_of(me, fresh.now(), []).soc == pytest.approx((23.9 / 12 - 1.95) / 0.17)
    agents.configure(fresh.account("producer"), True, **GOOD)
    entries = run(agents, fresh, me)
    actions = [e["text"] for e in entries if e["kind"] == "action"]
    assert len(actions) == 1 and actions[0].startswith(
        "offered 0.450 kWh: battery 25 % is above the 20 % reserve")
    assert fresh.client.lot(fresh.client.lot_count()).energy_wh == 450
    assert fresh.client.token_balance(me) == 4_550
    seen = agents.status(me)["household"]
    assert seen["battery_percent"] == "25" and seen["battery_from"] == "its voltage"

    agents.meters.bridge = LiveSupply(me, meter, volts=23.9, online=False)
    assert agents.battery_source(me) == "tokens"
    assert agents.state_of(me, fresh.now(), agents.market.lots()).soc == pytest.approx(0.5)


def test_a_refused_action_is_logged_with_the_reason_and_nothing_is_sent(fresh, tmp_path):
    agents = service(fresh, tmp_path)
    me = fresh.address["consumer"]
    fresh.load_meter(me)
    lot_id = list_lot(fresh, 1_000, 200 * ETHER)  # its deposit, 200 ETH, is more than it has
    agents.configure(fresh.account("consumer"), True, "20", "0", "500", "1000")
    before = nonce(fresh, "consumer")
    entries = run(agents, fresh, me)
    assert nonce(fresh, "consumer") == before and fresh.client.lot(lot_id).buyer is None
    failure = next(e for e in entries if e["kind"] == "failure")
    assert failure["text"].startswith(f"could not bid on lot {lot_id}: This bid needs a "
                                      "deposit of 200")


def test_the_running_app_lets_the_agent_act_on_each_new_block(make_app, world):
    from tests.web.test_sockets import connect, logged_in

    app = make_app()
    app.extensions["microgrid"].start_background()
    owner = logged_in(app, world, "producer")
    events = connect(app, owner)
    me = world.address["producer"]
    count = world.client.lot_count()
    tokens = world.client.token_balance(me)
    assert owner.api("PUT", "/api/v1/agent", {"on": True, **GOOD}).status_code == 200
    # A new block (any transaction makes one): the hub's per-block hook runs the agent.
    world.mine(world.client.send_ether(world.bank, world.address["rival"], 1))
    wait_for(lambda: world.client.lot_count() > count, timeout=20)
    lot = world.client.lot(world.client.lot_count())
    assert lot.seller == me and lot.energy_wh == tokens - 2_000  # all above the 20 % reserve
    sent = events.wait("agent", lambda e: e["kind"] == "action")
    assert "offered" in sent["text"] and sent["household"]["battery_percent"] == "50"
    html = owner.text("/wallet/")
    assert f"offered {(tokens - 2_000) / 1000:.3f} kWh" in html and 'id="agent-household"' in html
    app.extensions["microgrid"].stop_background()
    assert not app.extensions["microgrid"].agents.is_on(me)  # the server stopping forgets it


def test_without_a_load_meter_the_agent_says_it_cannot_bid(fresh, tmp_path):
    from eth_account import Account

    agents = service(fresh, tmp_path)
    newcomer = Account.create()  # funded, but no load meter was ever offered to it
    fresh.mine(fresh.client.send_ether(fresh.bank, newcomer.address, 10**18))
    me = newcomer.address
    lot_id = list_lot(fresh, 1_000, MILLI)
    agents.configure(newcomer, True, **GOOD)
    before = fresh.w3.eth.get_transaction_count(me, "pending")
    entries = run(agents, fresh, me)
    assert fresh.w3.eth.get_transaction_count(me, "pending") == before
    assert fresh.client.lot(lot_id).buyer is None
    assert [e["text"] for e in entries if e["kind"] == "note"][0].startswith(
        "did not bid: only accounts with an accepted load meter may bid")


def test_without_a_server_finalizer_the_agent_ends_its_own_auctions(fresh, tmp_path):
    me = fresh.address["producer"]
    agents = service(fresh, tmp_path, finalize_own=True)
    agents.configure(fresh.account("producer"), True, **GOOD)
    run(agents, fresh, me)
    lot_id = fresh.client.lot_count()
    fresh.advance(301)
    fresh.mine(fresh.client.send_ether(fresh.bank, fresh.address["rival"], 1))  # a block
    entries = run(agents, fresh, me)
    assert fresh.client.lot(lot_id).status == LotStatus.EXPIRED  # no bids: tokens come back
    assert fresh.client.token_balance(me) == 5_000
    assert entries[0]["text"].startswith(f"finalized listing {lot_id}: its auction has ended")


def test_with_a_server_finalizer_the_agent_leaves_finalizing_to_it(fresh, tmp_path):
    me = fresh.address["producer"]
    agents = service(fresh, tmp_path)
    agents.configure(fresh.account("producer"), True, **GOOD)
    run(agents, fresh, me)
    lot_id = fresh.client.lot_count()
    fresh.advance(301)
    fresh.mine(fresh.client.send_ether(fresh.bank, fresh.address["rival"], 1))
    before = nonce(fresh, "producer")
    run(agents, fresh, me)
    assert nonce(fresh, "producer") == before
    assert fresh.client.lot(lot_id).status == LotStatus.LISTED
