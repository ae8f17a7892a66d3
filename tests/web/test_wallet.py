"""Wallet page: balances, Send Ether with confirmation, withdraw, mining, a chain that is down."""

from __future__ import annotations

import re

import pytest

from dapp.services.units import format_ether
from dapp.web import create_app
from tests.web.conftest import ETHER, PASSPHRASE, Browser, app_config, free_port, wait_for


def field(html: str, name: str) -> str:
    """The text of the element with id `name`."""
    match = re.search(rf'id="{name}"[^>]*>([^<]*)<', html)
    assert match, f"no #{name} on the page"
    return match.group(1).strip()


def test_wallet_shows_tokens_ether_credit_generation_and_mining(producer, world):
    html = producer.text("/wallet/")
    tokens = world.client.token_balance(world.address["producer"])
    assert field(html, "tokens") == str(tokens / 1000).removesuffix(".0")
    assert field(html, "credit") == "0"
    assert field(html, "generation") == "no meter"
    assert "Energy Marketplace" in html and "Logout" in html
    assert field(html, "mining-text") == "Mining"
    assert "No pending transactions." in html


def test_send_ether_asks_for_confirmation_then_sends(producer, world):
    me, them = world.address["producer"], world.address["consumer"]
    before = world.client.ether_balance(them)
    nonce = world.w3.eth.get_transaction_count(me, "pending")
    review = producer.post("/wallet/send", {"to": them, "amount": "0.25"})
    assert review.status_code == 200
    page = review.get_data(as_text=True)
    assert "Send 0.25 ETH?" in page and them in page and "consumer" in page
    assert world.w3.eth.get_transaction_count(me, "pending") == nonce  # nothing sent yet

    sent = producer.post("/wallet/send", {"to": them, "amount": "0.25", "confirm": "yes"})
    assert sent.status_code == 303
    wallet = producer.text("/wallet/")
    tx_hash = re.search(r"Transaction (0x[0-9a-f]{64}) is pending", wallet).group(1)
    world.mine(tx_hash)
    assert world.client.ether_balance(them) == before + ETHER // 4
    assert tx_hash not in producer.text("/wallet/").split("Pending transactions")[1]


@pytest.mark.parametrize(
    ("to", "amount", "status", "message"),
    [
        ("consumer", "", 400, "Enter the amount of Ether"),
        ("consumer", "-1", 400, "cannot be negative"),
        ("consumer", "ten", 400, "must be a number"),
        ("consumer", "1e18", 400, "must be a number"),
        ("consumer", "0", 400, "more than 0"),
        ("consumer", "0.0000000000000000001", 400, "at most 18 decimal places"),
        ("consumer", "99999999999", 400, "absurdly large"),
        ("consumer", "500", 409, "You have only"),
        ("consumer", "everything", 409, "too little for the transaction fee"),
        ("", "1", 400, "Enter the address of the recipient"),
        ("0x12345", "1", 400, "not an Ethereum address"),
        ("bad checksum", "1", 400, "not an Ethereum address"),
    ],
)
@pytest.mark.parametrize("confirm", ["", "yes"])
def test_bad_send_input_changes_nothing(producer, world, to, amount, status, message, confirm):
    if to == "bad checksum":
        good = world.address["consumer"]
        to = good[:2] + good[2:].swapcase()
    to = world.address.get(to, to)
    me = world.address["producer"]
    if amount == "everything":
        amount = format_ether(world.client.ether_balance(me))
    nonce = world.w3.eth.get_transaction_count(me, "pending")
    response = producer.post("/wallet/send", {"to": to, "amount": amount, "confirm": confirm})
    assert response.status_code == status
    page = response.get_data(as_text=True)
    assert message in page
    assert 'value="' + amount + '"' in page  # the form keeps what was typed
    assert world.w3.eth.get_transaction_count(me, "pending") == nonce


def test_withdraw_without_credit_says_so(consumer, world):
    response = consumer.post("/wallet/withdraw")
    assert response.status_code == 409
    assert "You have no credit to withdraw." in response.get_data(as_text=True)


def test_mining_stops_and_starts_from_the_page(producer, world):
    try:
        stopped = producer.post("/wallet/mining", {"action": "stop"})
        assert stopped.status_code == 303
        assert not world.chain.mining
        assert field(producer.text("/wallet/"), "mining-text") == "Stopped"
        # Sent while stopped, a transaction stays pending and shows in the list.
        sent = producer.post("/wallet/send", {"to": world.address["rival"], "amount": "0.01",
                                              "confirm": "yes"})
        assert sent.status_code == 303
        tx_hash = re.search(r"Transaction (0x[0-9a-f]{64})", producer.text("/wallet/")).group(1)
        pending = producer.text("/wallet/").split("Pending transactions")[1]
        assert tx_hash in pending
        started = producer.post("/wallet/mining", {"action": "start"})
        assert started.status_code == 303
        assert world.chain.mining
        world.mine(tx_hash)
    finally:
        world.chain.start_mining(0.1)


def test_mining_needs_start_or_stop(producer):
    response = producer.post("/wallet/mining", {"action": "explode"})
    assert response.status_code == 400
    assert "start or stop" in response.get_data(as_text=True)


def test_wallet_page_needs_login(browser):
    response = browser.client.get("/wallet/")
    assert response.status_code == 303 and response.headers["Location"].endswith("/")


@pytest.fixture
def offline(world, tmp_path):
    """An app whose node does not exist (a free port nobody listens on)."""
    app = create_app(app_config(world, RPC=f"http://127.0.0.1:{free_port()}", MARKET=None,
                                DATA_DIR=str(tmp_path / "offline"), RPC_TIMEOUT=2))
    person = Browser(app.test_client(), world)
    created = person.post("/accounts/new", {"passphrase": PASSPHRASE, "confirm": PASSPHRASE,
                                            "label": "offline user"})
    address = created.headers["Location"].split("account=")[1]
    assert person.post("/login", {"address": address, "passphrase": PASSPHRASE}).status_code \
        == 303
    return person


def test_chain_down_pages_render_with_a_banner_and_actions_explain(offline, world):
    for url in ("/", "/wallet/", "/market/", "/api/v1/docs"):
        response = offline.client.get(url, follow_redirects=True)
        assert response.status_code == 200, url
        assert "The chain is unavailable." in response.get_data(as_text=True)
    board = offline.text("/market/board")
    assert "The market cannot be read right now" in board
    wallet = offline.text("/wallet/")
    assert "Balances are unavailable" in wallet and "connection refused" in wallet
    send = offline.post("/wallet/send", {"to": world.address["consumer"], "amount": "1",
                                         "confirm": "yes"})
    assert send.status_code == 503
    assert "The chain is not reachable right now; nothing was sent." in send.get_data(
        as_text=True)
    for url, data in [("/wallet/withdraw", {}), ("/wallet/mining", {"action": "stop"}),
                      ("/market/sell", {"energy": "1", "price": "1", "duration": "5"}),
                      ("/market/bid", {"lot": "1", "price": "1"}),
                      ("/market/close", {"trade": "1"}), ("/market/finalize", {"lot": "1"})]:
        response = offline.post(url, data)
        assert response.status_code in (409, 503), url
        assert "not reachable" in response.get_data(as_text=True) or \
            "cannot be started or stopped" in response.get_data(as_text=True), url
    assert offline.client.get("/api/v1/chain").get_json()["available"] is False
    assert offline.client.get("/api/v1/wallet").get_json()["available"] is False


def test_pending_list_follows_the_chain(producer, world):
    world.chain.stop_mining()
    try:
        producer.post("/wallet/send", {"to": world.address["rival"], "amount": "0.02",
                                       "confirm": "yes"})
        pending = producer.client.get("/api/v1/wallet/pending").get_json()["pending"]
        assert [p["kind"] for p in pending] == ["send Ether"]
        assert pending[0]["value"] == "0.02"
    finally:
        world.chain.start_mining(0.1)
    wait_for(lambda: not producer.client.get("/api/v1/wallet/pending").get_json()["pending"])
