"""Marketplace page: sell, bid, finalize, close; bad input; the auto-finalizer and its races."""

from __future__ import annotations

import logging
import re

import pytest

from dapp.chain.client import LotStatus
from dapp.services.market import AutoFinalizer
from tests.web.conftest import ETHER, Browser, World

MIN_INCREMENT = 10**12


def pending_tx(person: Browser, url: str = "/market/") -> str:
    """The transaction hash the last action's message names."""
    match = re.search(r"Transaction (0x[0-9a-f]{64}) is pending", person.text(url))
    assert match, "no pending transaction message"
    return match.group(1)


def sell(world: World, person: Browser, energy: str = "0.5", price: str = "0.001",
         duration: str = "600") -> int:
    """List through the page (minting first when the producer holds too few tokens); wait until
    mined; the new listing's id."""
    if world.client.token_balance(world.address["producer"]) < float(energy) * 1000 + 1000:
        world.mint(world.address["producer"], 5000)
    response = person.post("/market/sell", {"energy": energy, "price": price,
                                            "price_unit": "ether", "duration": duration,
                                            "duration_unit": "seconds"})
    assert response.status_code == 303, response.get_data(as_text=True)
    world.mine(pending_tx(person))
    return world.client.lot_count()


def bid(world: World, person: Browser, lot: int, price: str) -> None:
    """Bid through the page and wait until mined."""
    response = person.post("/market/bid", {"lot": str(lot), "price": price,
                                           "price_unit": "ether"})
    assert response.status_code == 303, response.get_data(as_text=True)
    world.mine(pending_tx(person))


def card(html: str, kind: str, number: int) -> str:
    """The HTML of one card."""
    match = re.search(rf'<article[^>]*id="{kind}-{number}".*?</article>', html, re.S)
    assert match, f"no {kind} card #{number}"
    return match.group(0)


def test_market_page_has_the_dock_and_the_sell_form(producer):
    html = producer.text("/market/")
    for label in ("Sell", "Buy", "Close Connection", "Logout"):
        assert f">{label}<" in html
    assert 'id="sell-form"' in html and "Cleared prices" in html


def test_sell_puts_a_card_up_and_escrows_the_tokens(producer, consumer, world):
    world.mint(world.address["producer"], 5000)  # more than sell() needs: it mints nothing
    before = world.client.token_balance(world.address["producer"])
    lot = sell(world, producer, energy="1.25", price="0.002")
    assert world.client.token_balance(world.address["producer"]) == before - 1250
    mine = card(producer.text("/market/"), "listing", lot)
    assert "1.25 kWh" in mine and "0.002 ETH/kWh" in mine and "no bids yet" in mine
    assert "producer" in mine and "(you)" in mine and "Your listing" in mine
    theirs = card(consumer.text("/market/board"), "listing", lot)
    assert "bid-form" in theirs and 'value="0.002"' in theirs  # the minimum bid, prefilled
    assert re.search(r'data-deadline="\d+"', theirs)


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        ({"energy": ""}, 400, "Enter the amount of energy"),
        ({"energy": "-1"}, 400, "cannot be negative"),
        ({"energy": "lots"}, 400, "must be a number"),
        ({"energy": "0.0005"}, 400, "at most 3 decimal places"),
        ({"energy": "1e2"}, 400, "must be a number"),
        ({"energy": "99999999999999"}, 400, "at most"),
        ({"energy": "100000"}, 409, "You have only"),
        ({"price": "0"}, 400, "more than 0"),
        ({"price": "cheap"}, 400, "must be a number"),
        ({"price_unit": "dollar"}, 400, "Choose the price unit"),
        ({"duration": "1"}, 400, "between 2 s and 1 d"),
        ({"duration": "90000"}, 400, "between 2 s and 1 d"),
        ({"duration": ""}, 400, "Enter the duration"),
        ({"duration_unit": "fortnights"}, 400, "Choose the duration unit"),
    ],
)
def test_bad_sell_input_changes_nothing(producer, world, form, status, message):
    data = {"energy": "0.5", "price": "0.001", "price_unit": "ether", "duration": "600",
            "duration_unit": "seconds", **form}
    me = world.address["producer"]
    tokens, count = world.client.token_balance(me), world.client.lot_count()
    response = producer.post("/market/sell", data)
    assert response.status_code == status
    page = response.get_data(as_text=True)
    assert message in page
    assert f'value="{data["energy"]}"' in page  # the form keeps what was typed
    assert world.client.token_balance(me) == tokens and world.client.lot_count() == count


def test_a_bid_shows_on_every_card_and_escrows_the_deposit(producer, consumer, world):
    lot = sell(world, producer, energy="2", price="0.001")
    before = world.client.ether_balance(world.address["consumer"])
    bid(world, consumer, lot, "0.0015")
    for person in (producer, consumer):
        shown = card(person.text("/market/board"), "listing", lot)
        assert "0.0015 ETH/kWh" in shown and "consumer" in shown
    deposit = 2 * 15 * 10**14
    assert before - world.client.ether_balance(world.address["consumer"]) >= deposit
    assert world.client.lot(lot).deposit_wei == deposit


@pytest.mark.parametrize(
    ("who", "lot", "price", "status", "message"),
    [
        ("producer", "own", "0.002", 409, "You cannot bid on your own listing."),
        ("consumer", "own", "0.0005", 409, "Bid at least 0.001 ETH per kWh"),
        ("consumer", "999", "0.002", 400, "There is no listing #999."),
        ("consumer", "abc", "0.002", 400, "There is no listing or trade with that number."),
        ("consumer", "", "0.002", 400, "Enter the listing number."),
        ("consumer", "own", "", 400, "Enter the price"),
        ("consumer", "own", "-0.002", 400, "cannot be negative"),
        ("consumer", "own", "5000", 409, "needs a deposit of 2500 ETH"),
    ],
)
def test_bad_bids_change_nothing(producer, consumer, world, who, lot, price, status, message):
    listed = sell(world, producer, energy="0.5", price="0.001")
    lot = str(listed) if lot == "own" else lot
    person = producer if who == "producer" else consumer
    address = world.address[who]
    nonce = world.w3.eth.get_transaction_count(address, "pending")
    response = person.post("/market/bid", {"lot": lot, "price": price})
    assert response.status_code == status
    assert message in response.get_data(as_text=True)
    assert world.w3.eth.get_transaction_count(address, "pending") == nonce
    assert world.client.lot(listed).buyer is None


def test_outbid_needs_the_increment_and_credits_the_loser(producer, consumer, world, app):
    rival = Browser(app.test_client(), world)
    assert rival.login("rival").status_code == 303
    lot = sell(world, producer, energy="1", price="0.001")
    bid(world, consumer, lot, "0.001")
    too_little = rival.post("/market/bid", {"lot": str(lot), "price": "0.001"})
    assert too_little.status_code == 409
    assert "Bid at least 0.001001 ETH per kWh" in too_little.get_data(as_text=True)
    credit = world.client.credit_of(world.address["consumer"])
    bid(world, rival, lot, "0.001001")
    assert world.client.credit_of(world.address["consumer"]) == credit + 10**15
    # The outbid consumer withdraws the credit from the wallet.
    balance = world.client.ether_balance(world.address["consumer"])
    assert consumer.post("/wallet/withdraw").status_code == 303
    world.mine(pending_tx(consumer, "/wallet/"))
    assert world.client.credit_of(world.address["consumer"]) == 0
    assert world.client.ether_balance(world.address["consumer"]) > balance


def test_no_bids_after_the_deadline(producer, consumer, world):
    lot = sell(world, producer, duration="30")
    world.advance(31)
    response = consumer.post("/market/bid", {"lot": str(lot), "price": "0.002"})
    assert response.status_code == 409
    assert f"The auction for listing #{lot} has ended" in response.get_data(as_text=True)


def test_ended_auction_without_a_server_account_offers_finalize(producer, consumer, world):
    lot = sell(world, producer, energy="1", price="0.001")
    early = consumer.post("/market/finalize", {"lot": str(lot)})
    assert early.status_code == 409 and "has not ended yet" in early.get_data(as_text=True)
    bid(world, consumer, lot, "0.003")
    world.advance(601)
    shown = card(consumer.text("/market/board"), "listing", lot)
    assert "Finalize auction" in shown and "ended" in shown
    assert consumer.post("/market/finalize", {"lot": str(lot)}).status_code == 303
    world.mine(pending_tx(consumer))
    again = consumer.post("/market/finalize", {"lot": str(lot)})
    assert again.status_code == 409 and "already been finalized" in again.get_data(as_text=True)

    trade = card(consumer.text("/market/"), "trade", lot)
    for text in ("producer", "consumer", "0.003 ETH/kWh", "0 of 1 kWh", "0 ETH", "relay: no meter",
                 "Close connection"):
        assert text in trade
    seller_view = card(producer.text("/market/"), "trade", lot)
    assert "Close connection" not in seller_view  # not before the delivery timeout
    closing = consumer.text("/market/").split('id="close"')[1]
    assert f"Trade #{lot}" in closing
    snapshot = consumer.client.get("/api/v1/market").get_json()
    assert {"id": lot, "price": "0.003"}.items() <= next(
        c for c in snapshot["cleared"] if c["id"] == lot).items()


def test_close_connection_rules(producer, consumer, world, app):
    world.no_open_trades("consumer")  # this trade is to be the consumer's active one
    lot = sell(world, producer, energy="1", price="0.001")
    bid(world, consumer, lot, "0.001")
    world.advance(601)
    world.mine(world.client.finalize(world.account("rival"), lot))
    rival = Browser(app.test_client(), world)
    assert rival.login("rival").status_code == 303
    outsider = rival.post("/market/close", {"trade": str(lot)})
    assert outsider.status_code == 409
    assert "Only the buyer or the seller" in outsider.get_data(as_text=True)
    seller = producer.post("/market/close", {"trade": str(lot)})
    assert seller.status_code == 409 and "As the seller" in seller.get_data(as_text=True)

    tokens = world.client.token_balance(world.address["producer"])
    credit = world.client.credit_of(world.address["consumer"])
    seller_credit = world.client.credit_of(world.address["producer"])
    # The buyer's close is a request: the trade shows as closing until the meter's next reading.
    asked = consumer.post("/market/close", {"trade": str(lot)})
    assert asked.status_code == 303
    page = consumer.text("/market/")
    assert f"Asking to close trade #{lot}: the relays open once it is mined" in page
    world.mine(re.search(r"Transaction (0x[0-9a-f]{64}) is pending", page).group(1))
    assert world.client.lot(lot).status == LotStatus.OPEN
    shown = card(consumer.text("/market/"), "trade", lot)
    assert "Closing: relays open; the buyer&#39;s next reading settles the tail" in shown
    assert "Close connection" not in shown and "Close now" not in shown
    again = consumer.post("/market/close", {"trade": str(lot)})
    assert again.status_code == 409
    assert f"You already asked to close trade #{lot}" in again.get_data(as_text=True)
    world.advance(1)
    world.heartbeat(world.address["consumer"])  # the next reading: nothing more drawn
    assert world.client.lot(lot).status == LotStatus.CLOSED
    assert world.client.token_balance(world.address["producer"]) == tokens + 1000
    # Walking away costs the winner the minimum charge: 100 Wh at 0.001 ETH/kWh.
    charge = 10**14
    assert world.client.credit_of(world.address["consumer"]) == credit + 10**15 - charge
    assert world.client.credit_of(world.address["producer"]) == seller_credit + charge
    assert f'id="trade-{lot}"' not in consumer.text("/market/")
    closed = consumer.post("/market/close", {"trade": str(lot)})
    assert closed.status_code == 409 and f"Trade #{lot} is not open." in closed.get_data(
        as_text=True)


def test_seller_may_close_a_stalled_trade(producer, consumer, world):
    world.no_open_trades("consumer")
    lot = sell(world, producer, energy="1", price="0.001")
    bid(world, consumer, lot, "0.001")
    world.advance(601)
    world.mine(world.client.finalize(world.account("rival"), lot))
    opened = world.client.lot(lot).active_since
    seller_view = card(producer.text("/market/"), "trade", lot)
    assert "Close connection" not in seller_view and "Delivering; it stalls at" in seller_view
    world.advance(61)  # the buyer's meter says nothing for longer than the stall timeout
    shown = card(producer.text("/market/"), "trade", lot)
    assert "Close connection" in shown and "Stalled since" in shown
    trade = next(t for t in producer.client.get("/api/v1/market").get_json()["trades"]
                 if t["id"] == lot)
    assert trade["stalled"] is True and trade["stalls_at"] == opened + 60
    # The refund shown is what the close leaves the buyer once its silence is charged: nothing.
    assert trade["refund_if_closed"] == "0"
    buyer_credit = world.client.credit_of(world.address["consumer"])
    seller_credit = world.client.credit_of(world.address["producer"])
    assert producer.post("/market/close", {"trade": str(lot)}).status_code == 303
    world.mine(pending_tx(producer))
    closed = world.client.lot(lot)
    assert closed.status == LotStatus.CLOSED
    # Silent for over a minute at 65 kW: the meter could have drawn the whole 1 kWh lot, so the
    # seller is paid for all of it from the escrow.
    assert closed.delivered_wh == 1000
    assert world.client.credit_of(world.address["producer"]) == seller_credit + 10**15
    assert world.client.credit_of(world.address["consumer"]) == buyer_credit


def test_a_queued_trade_shows_as_queued_and_its_seller_waits_for_a_stall(producer, consumer,
                                                                           world):
    world.no_open_trades("consumer")
    oldest = sell(world, producer, energy="1", price="0.001")
    bid(world, consumer, oldest, "0.001")
    queued = sell(world, producer, energy="1", price="0.001")
    bid(world, consumer, queued, "0.001")
    world.advance(601)
    world.mine(world.client.finalize(world.account("rival"), oldest))
    world.mine(world.client.finalize(world.account("rival"), queued))
    meter = world.load_meter(world.address["consumer"])  # its readings go to the oldest trade
    world.advance(30)
    assert meter.report(world.client, world.bank, meter.energy_wh + 100).accepted
    read_at = world.now()
    assert world.client.lot(oldest).delivered_wh == 100
    world.advance(40)  # past the queued trade's opening + 60 s, not past the reading + 60 s

    trades = producer.client.get("/api/v1/market").get_json()["trades"]
    shown = next(t for t in trades if t["id"] == queued)
    assert shown["state"] == "queued" and shown["active"] is False
    assert shown["seller_can_close"] is False
    assert shown["seller_can_close_at"] == read_at + 60 == world.client.stalls_at(queued)
    assert f"Queued behind trade #{oldest}" in card(producer.text("/market/"), "trade", queued)
    refused = producer.post("/market/close", {"trade": str(queued)})
    assert refused.status_code == 409
    assert "only once it is stalled" in refused.get_data(as_text=True)
    # The buyer closes a queued trade at once (its seller never exported).
    assert consumer.post("/market/close", {"trade": str(queued)}).status_code == 303
    world.mine(pending_tx(consumer))
    assert world.client.lot(queued).status == LotStatus.CLOSED
    own = consumer.text("/market/").split('id="close"')[1]
    assert f"Trade #{oldest}" in own and f"Trade #{queued}" not in own


def test_a_bidder_without_a_load_meter_is_told_before_sending(producer, world, app):
    lot = sell(world, producer, energy="0.5", price="0.001")
    finalizer = Browser(app.test_client(), world)
    assert finalizer.login("finalizer").status_code == 303  # no load meter offered to it
    shown = card(finalizer.text("/market/"), "listing", lot)
    assert "Only an account with an accepted load meter can bid" in shown
    assert "bid-form" not in shown
    nonce = world.w3.eth.get_transaction_count(world.address["finalizer"], "pending")
    response = finalizer.post("/market/bid", {"lot": str(lot), "price": "0.001"})
    assert response.status_code == 409
    assert "Only an account with an accepted load meter can bid" in response.get_data(
        as_text=True)
    assert world.w3.eth.get_transaction_count(world.address["finalizer"], "pending") == nonce


def test_the_listing_card_states_the_minimum_charge(producer, consumer, world):
    lot = sell(world, producer, energy="0.5", price="0.002")
    shown = card(consumer.text("/market/"), "listing", lot)
    # 100 Wh at the minimum bid of 0.002 ETH/kWh.
    assert ("Winning costs at least 0.0002 ETH at this bid (the minimum charge, 0.1 kWh)"
            in shown)


@pytest.mark.parametrize("field", ["lot", "trade"])
@pytest.mark.parametrize("url", ["/market/bid", "/market/close", "/market/finalize"])
def test_garbage_ids_never_make_a_server_error(consumer, url, field):
    for value in ("", "x", "-3", "1.5", "99999999999999999999", "<script>"):
        response = consumer.post(url, {field: value, "price": "0.001"})
        assert response.status_code in (400, 409), (url, value)
        assert "<script>" not in response.get_data(as_text=True).split("</header>")[1]


def test_auto_finalizer_waits_for_the_chain_clock(producer, consumer, world, app):
    ext = app.extensions["microgrid"]
    finalizer = AutoFinalizer(ext.market, world.account("finalizer"))
    world.advance(601)  # listings other tests left behind have ended
    for tx_hash in finalizer.run_once():
        world.mine(tx_hash)
    lot = sell(world, producer, energy="1", price="0.001", duration="600")
    bid(world, consumer, lot, "0.002")
    assert lot not in {due.id for due in ext.market.due()}
    assert finalizer.run_once() == []
    world.advance(601)
    sent = finalizer.run_once()
    assert len(sent) == 1
    world.mine(sent[0])
    assert world.client.lot(lot).status == LotStatus.OPEN
    assert finalizer.run_once() == []


def test_two_servers_finalize_once_and_nobody_sees_an_error(producer, consumer, world,
                                                            make_app, caplog):
    first, second = make_app(), make_app()
    a = AutoFinalizer(first.extensions["microgrid"].market, world.account("finalizer"))
    b = AutoFinalizer(second.extensions["microgrid"].market, world.account("rival"))
    world.advance(601)  # listings other tests left behind have ended
    for tx_hash in a.run_once():
        world.mine(tx_hash)
    lot = sell(world, producer, energy="1", price="0.001", duration="600")
    world.advance(601)
    caplog.set_level(logging.INFO)
    world.chain.stop_mining()
    try:
        sent = a.run_once() + b.run_once()  # both see the ended auction before any block
    finally:
        world.chain.start_mining(0.1)
    assert len(sent) == 2
    outcomes = []
    for tx_hash in sent:
        try:
            world.mine(tx_hash)
            outcomes.append("ok")
        except Exception:  # noqa: BLE001 - the loser's transaction reverts on chain
            outcomes.append("reverted")
    lot_status = world.client.lot(lot).status
    assert lot_status == LotStatus.EXPIRED
    assert lot not in {due.id for due in first.extensions["microgrid"].market.due()}
    assert a.run_once() == [] and b.run_once() == []  # the race is over for both
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and r.name.startswith("dapp")]
    assert sorted(outcomes) == ["ok", "reverted"]  # exactly one transaction succeeded


def test_cleared_prices_feed_the_chart(producer, consumer, world):
    lot = sell(world, producer, energy="1", price="0.001")  # its own auction: the suite runs
    bid(world, consumer, lot, "0.004")                      # in workers, in no fixed order
    world.advance(601)
    assert consumer.post("/market/finalize", {"lot": str(lot)}).status_code == 303
    world.mine(pending_tx(consumer))
    snapshot = consumer.client.get("/api/v1/market").get_json()
    prices = {c["id"]: c["price"] for c in snapshot["cleared"]}
    assert prices[lot] == "0.004" and all(float(p) > 0 for p in prices.values())
    assert 'id="price-chart"' in consumer.text("/market/")


def test_market_needs_login(browser):
    for url in ("/market/", "/market/board"):
        response = browser.client.get(url)
        assert response.status_code == 303 and response.headers["Location"].endswith("/")


def test_listing_card_values_come_from_the_chain(producer, consumer, world):
    lot = sell(world, producer, energy="0.75", price="0.004")
    listing = next(item for item in consumer.client.get("/api/v1/market").get_json()["listings"]
                   if item["id"] == lot)
    assert listing["energy_kwh"] == "0.75"
    assert listing["start_price"] == "0.004" and listing["min_bid"] == "0.004"
    assert listing["seller"] == {"address": world.address["producer"], "name": "producer"}
    bid(world, consumer, lot, "0.004")
    listing = next(item for item in consumer.client.get("/api/v1/market").get_json()["listings"]
                   if item["id"] == lot)
    assert listing["highest_bid"] == "0.004" and listing["start_price"] == "0.004"
    assert int(listing["min_bid_wei"]) == 4 * 10**15 + MIN_INCREMENT
    assert listing["deposit"] == "0.003"
    assert ETHER  # the module's unit is used by the helpers above
