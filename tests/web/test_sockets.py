"""Socket.IO: who may connect, what each event carries, and the live auction as it happens.

The live tests run the app's real background tasks (the one event listener and the ticker) over
the in-process chain, with the server's own finalizer account configured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from eth_account import Account
from flask import Flask
from flask_socketio import SocketIOTestClient
from hexbytes import HexBytes

from dapp.chain.client import LotStatus
from dapp.chain.listener import ChainEvent
from dapp.chain.tx import TxSender
from tests.web.conftest import PASSPHRASE, Browser, World, free_port, wait_for


class Events:
    """What one Socket.IO test client received, kept across polls."""

    def __init__(self, sio: SocketIOTestClient) -> None:
        self.sio = sio
        self.seen: list[dict[str, Any]] = []

    def pull(self) -> list[dict[str, Any]]:
        """Move newly received events into `seen` (works after a disconnect too)."""
        queue = self.sio.queue
        while queue:  # pop one by one: the server's threads append concurrently
            self.seen.append(queue.pop(0))
        return self.seen

    def named(self, name: str) -> list[Any]:
        """The first argument of every `name` event so far."""
        return [e["args"][0] for e in self.pull() if e["name"] == name]

    def wait(self, name: str, predicate: Callable[[Any], bool] = lambda _: True,
             timeout: float = 15.0) -> Any:
        """The first `name` event matching `predicate` (waiting for it)."""
        return wait_for(lambda: next((a for a in self.named(name) if predicate(a)), None),
                        timeout=timeout)


def connect(app: Flask, person: Browser) -> Events:
    """A Socket.IO client sharing the person's cookies (their session)."""
    sio = app.extensions["socketio"].test_client(app, flask_test_client=person.client)
    return Events(sio)


def logged_in(app: Flask, world: World, role: str) -> Browser:
    person = Browser(app.test_client(), world)
    assert person.login(role).status_code == 303
    return person


@pytest.fixture
def live(make_app, world) -> Flask:
    """The app with its background tasks running and a server account that finalizes."""
    app = make_app(FINALIZER_ADDRESS=world.address["finalizer"],
                   FINALIZER_PASSPHRASE_FILE=str(world.passphrase_file))
    app.extensions["microgrid"].start_background()
    return app


def test_connection_is_refused_without_login(app, browser):
    events = connect(app, browser)
    assert not events.sio.is_connected()
    assert app.extensions["microgrid"].hub.connected_addresses() == set()


def test_connection_is_refused_after_logout(app, world):
    person = logged_in(app, world, "consumer")
    person.post("/logout")
    assert not connect(app, person).sio.is_connected()


def test_connect_pushes_the_full_state_and_refresh_asks_again(app, world):
    person = logged_in(app, world, "consumer")
    events = connect(app, person)
    assert events.sio.is_connected()
    hub = app.extensions["microgrid"].hub
    assert hub.connected_addresses() == {world.address["consumer"]}
    hub.flush()
    chain = events.wait("chain")
    assert chain["available"] is True and chain["block"] >= 1
    assert events.wait("market")["available"] is True
    wallet = events.wait("wallet")
    assert wallet["address"] == world.address["consumer"] and wallet["ether"]
    assert events.sio.emit("refresh", callback=True) == {"ok": True}
    hub.flush()
    assert len(events.named("wallet")) == 2


def test_events_are_checked_against_the_session_every_time(make_app, world):
    app = make_app(SESSION_IDLE_TIMEOUT=0.3)
    person = logged_in(app, world, "consumer")
    events = connect(app, person)
    assert events.sio.is_connected()
    time.sleep(0.5)
    answer = events.sio.emit("refresh", callback=True)
    assert answer["ok"] is False and "Log in first" in answer["error"]
    assert events.named("session_expired")
    assert not events.sio.is_connected()


def test_logout_disconnects_the_sessions_sockets(app, world):
    person = logged_in(app, world, "consumer")
    other = logged_in(app, world, "producer")
    mine, theirs = connect(app, person), connect(app, other)
    person.post("/logout")
    assert not mine.sio.is_connected()
    assert mine.named("session_expired") == [{"reason": "logged out"}]
    assert theirs.sio.is_connected()
    assert app.extensions["microgrid"].hub.connected_addresses() == {world.address["producer"]}


def test_idle_expiry_is_pushed_and_the_socket_closed(make_app, world):
    app = make_app(SESSION_IDLE_TIMEOUT=0.3)
    events = connect(app, logged_in(app, world, "rival"))
    time.sleep(0.5)
    app.extensions["microgrid"].hub.tick()
    assert events.named("session_expired") == [{"reason": "session expired"}]
    assert not events.sio.is_connected()
    assert len(app.extensions["microgrid"].keys) == 0


def test_each_user_gets_only_their_own_wallet(app, world):
    consumer, producer = (connect(app, logged_in(app, world, role))
                          for role in ("consumer", "producer"))
    app.extensions["microgrid"].hub.flush()
    assert {w["address"] for w in consumer.named("wallet")} == {world.address["consumer"]}
    assert {w["address"] for w in producer.named("wallet")} == {world.address["producer"]}


def test_live_auction_reaches_both_people_without_reloading(live, world):
    producer, consumer = logged_in(live, world, "producer"), logged_in(live, world, "consumer")
    seller, buyer = connect(live, producer), connect(live, consumer)
    if world.client.token_balance(world.address["producer"]) < 1000:
        world.mint(world.address["producer"], 5000)
    world.no_open_trades("consumer")  # the trade below is to be the consumer's active one

    world.chain.stop_mining()
    try:
        response = producer.api("POST", "/api/v1/market/listings",
                                {"energy": "1", "price": "0.001", "duration": "600",
                                 "duration_unit": "seconds"})
        assert response.status_code == 202
        # The seller's wallet shows the transaction as pending, then not any more.
        tx_hash = response.get_json()["tx_hash"]
        seller.wait("wallet", lambda w: tx_hash in [p["hash"] for p in w.get("pending", [])])
    finally:
        world.chain.start_mining(0.1)
    world.mine(tx_hash)
    lot = world.client.lot_count()
    for person in (seller, buyer):
        person.wait("market", lambda m: lot in [item["id"] for item in m["listings"]])
    seller.wait("wallet", lambda w: w.get("pending") == [])

    bid = consumer.api("POST", f"/api/v1/market/listings/{lot}/bids", {"price": "0.002"})
    assert bid.status_code == 202
    for person in (seller, buyer):
        shown = person.wait("market", lambda m: any(
            item["id"] == lot and item["highest_bid"] == "0.002" for item in m["listings"]))
        item = next(item for item in shown["listings"] if item["id"] == lot)
        assert item["bidder"]["name"] == "consumer"
    seller.wait("notice", lambda n: n["text"] == f"New bid on your listing #{lot}: 0.002 ETH "
                                                 "per kWh.")
    buyer.wait("notice", lambda n: f"Your bid of 0.002 ETH per kWh on listing #{lot}" in n["text"])

    world.advance(601)  # the deadline passes; the server finalizes by itself
    for person in (seller, buyer):
        person.wait("market", lambda m: lot in [t["id"] for t in m["trades"]], timeout=20)
    buyer.wait("notice", lambda n: f"You won listing #{lot}" in n["text"])
    seller.wait("notice", lambda n: f"Listing #{lot} sold at 0.002 ETH per kWh" in n["text"])
    assert world.client.lot(lot).status == LotStatus.OPEN

    close = consumer.api("POST", f"/api/v1/market/trades/{lot}/close")
    assert close.status_code == 202
    # Two-phase: the card shows the trade closing, then the meter's next reading closes it.
    for person in (seller, buyer):
        person.wait("market", lambda m: any(t["id"] == lot and t["closing"]
                                            for t in m["trades"]))
    world.advance(1)
    world.heartbeat(world.address["consumer"])
    for person in (seller, buyer):
        person.wait("market", lambda m: lot not in [t["id"] for t in m["trades"]])
        person.wait("notice", lambda n: f"Trade #{lot} closed" in n["text"])
    buyer.wait("notice", lambda n: "credited to you" in n["text"])


def test_a_transaction_that_fails_after_sending_is_reported(live, world):
    producer, consumer = logged_in(live, world, "producer"), logged_in(live, world, "consumer")
    rival = logged_in(live, world, "rival")
    buyer = connect(live, consumer)
    if world.client.token_balance(world.address["producer"]) < 1000:
        world.mint(world.address["producer"], 5000)
    listed = producer.api("POST", "/api/v1/market/listings",
                          {"energy": "1", "price": "0.001", "duration": "600",
                           "duration_unit": "seconds"})
    world.mine(listed.get_json()["tx_hash"])
    lot = world.client.lot_count()
    world.chain.stop_mining()
    try:
        # Both bids pass their checks against the last block; the lower one fails once mined.
        high = rival.api("POST", f"/api/v1/market/listings/{lot}/bids", {"price": "0.003"})
        low = consumer.api("POST", f"/api/v1/market/listings/{lot}/bids", {"price": "0.002"})
        assert high.status_code == low.status_code == 202
    finally:
        world.chain.start_mining(0.1)
    notice = buyer.wait("notice", lambda n: n["level"] == "error")
    # TxSender replays a failed transaction on the block before it, where both bids were still
    # fine, so the reason is the generic one; still a sentence, never hex.
    assert notice["text"].startswith("Your bid failed: ")
    assert notice["text"].endswith(".") and "0x" not in notice["text"]
    assert world.client.lot(lot).buyer == world.address["rival"]


def test_a_transaction_the_node_lost_and_another_replaced_is_reported_not_mined(live, world):
    """The node loses a payment from its pool (a restart), and another program with the same
    key sends at that nonce first. The payment left the pending list without being mined: the
    sender is told it failed and that nothing was paid, rather than seeing "was mined"."""
    consumer = logged_in(live, world, "consumer")
    events = connect(live, consumer)
    events.wait("wallet")
    stranger = Account.create().address
    world.chain.stop_mining()
    try:
        sent = consumer.api("POST", "/api/v1/wallet/send", {"to": stranger, "amount": "0.5"})
        assert sent.status_code == 202, sent.get_json()
        lost = sent.get_json()["tx_hash"]
        with world.chain.lock:  # the node restarts without its pending pool
            pool = world.chain.tester._pending_transactions
            pool[:] = [tx for tx in pool if HexBytes(tx["hash"]).to_0x_hex() != lost]
        other = TxSender(world.chain.w3)  # another wallet program with the consumer's key
        elsewhere = other.send(world.keystore.unlock(world.address["consumer"], PASSPHRASE),
                               {"to": world.address["producer"], "value": 1}, "send Ether")
    finally:
        world.chain.start_mining(0.1)
    other.wait(elsewhere)

    def reported() -> Any:  # blocks go on (this chain mines only when something is pending)
        world.chain.mine(1)
        time.sleep(0.1)
        return next((n for n in events.named("notice") if n.get("tx_hash") == lost), None)

    notice = wait_for(reported, timeout=30, what="the lost payment reported")
    assert notice["level"] == "error"
    assert notice["text"].startswith("Your Ether transfer failed: another transaction of your")
    assert "Nothing was paid" in notice["text"] and "0x" not in notice["text"]
    assert world.client.ether_balance(stranger) == 0  # and indeed nothing was paid
    ext = live.extensions["microgrid"]
    assert lost not in [e.hash for e in ext.client.sender.outbox.entries()]


def test_mining_changes_are_pushed_to_everyone(live, world):
    events = connect(live, logged_in(live, world, "consumer"))
    events.wait("wallet")  # the greeting is done: later chain events are pushes
    seen = len(events.named("chain"))
    producer = logged_in(live, world, "producer")
    try:
        assert producer.post("/wallet/mining", {"action": "stop"}).status_code == 303
        wait_for(lambda: any(c["mining"]["mining"] is False
                             for c in events.named("chain")[seen:]))
    finally:
        producer.post("/wallet/mining", {"action": "start"})
        world.chain.start_mining(0.1)
    events.wait("chain", lambda c: c["mining"]["mining"] is True and c["mining"]["block_time"])


def test_subscribers_get_every_chain_event_from_the_one_listener(live, world):
    received: list[ChainEvent] = []
    unsubscribe = live.extensions["microgrid"].subscribe(received.append)
    producer = logged_in(live, world, "producer")
    if world.client.token_balance(world.address["producer"]) < 1000:
        world.mint(world.address["producer"], 5000)
    listed = producer.api("POST", "/api/v1/market/listings",
                          {"energy": "0.5", "price": "0.001", "duration": "600",
                           "duration_unit": "seconds"})
    world.mine(listed.get_json()["tx_hash"])
    lot = world.client.lot_count()
    event = wait_for(lambda: next((e for e in received if e.name == "Listed"
                                   and e.args["listingId"] == lot), None))
    assert event.contract == "EnergyMarket" and event.args["seller"] == world.address["producer"]
    unsubscribe()


def test_an_unreachable_chain_is_pushed_as_unavailable(make_app, world, tmp_path):
    app = make_app(RPC=f"http://127.0.0.1:{free_port()}", MARKET=None, RPC_TIMEOUT=2,
                   DATA_DIR=str(tmp_path / "offline"))
    person = Browser(app.test_client(), world)
    created = person.post("/accounts/new", {"passphrase": PASSPHRASE, "confirm": PASSPHRASE})
    address = created.headers["Location"].split("account=")[1]
    person.post("/login", {"address": address, "passphrase": PASSPHRASE})
    events = connect(app, person)
    app.extensions["microgrid"].hub.tick()
    chain = events.wait("chain")
    assert chain["available"] is False and "connection refused" in chain["message"]
    assert events.wait("wallet")["available"] is False
    assert events.wait("market")["available"] is False


def test_a_block_recomputes_the_wallets_it_concerns_and_a_rotating_few(app, world, monkeypatch):
    from dapp.web import live as live_module

    monkeypatch.setattr(live_module, "ROTATION_BLOCKS", 3)  # one of three people a block
    roles = ("consumer", "producer", "rival")
    people = {role: connect(app, logged_in(app, world, role)) for role in roles}
    hub = app.extensions["microgrid"].hub
    hub.tick()  # greetings: everyone's full state
    assert all(events.named("wallet") for events in people.values())
    stranger = Account.create().address
    sender = app.extensions["microgrid"].client.sender
    for _ in range(10):  # earlier tests' transactions of this server leave the outbox first
        if not (sender.outbox.entries() or hub._in_flight or hub._showing_pending):
            break
        world.mine(world.client.send_ether(world.bank, stranger, 1))
        hub.tick()
    assert not sender.outbox.entries()
    for events in people.values():
        events.seen.clear()
    for _ in range(3):  # blocks without anything for these people: each is refreshed once
        world.mine(world.client.send_ether(world.bank, stranger, 1))
        hub.tick()
    assert {role: len(people[role].named("wallet")) for role in roles} == dict.fromkeys(roles, 1)
    for events in people.values():
        events.seen.clear()
    # Ether sent from this server: the sender's and the recipient's wallets move with the block.
    client = app.extensions["microgrid"].client
    tx_hash = client.send_ether(world.account("consumer"), world.address["rival"], 12_345)
    world.mine(tx_hash)
    hub.tick()
    pushed = {role: people[role].named("wallet") for role in roles}
    assert pushed["consumer"] and pushed["rival"]
    assert sum(len(p) for p in pushed.values()) <= 3


def test_a_transaction_the_node_lost_is_sent_again_by_the_hub(app, world, monkeypatch):
    from hexbytes import HexBytes

    from dapp.chain.tx import OutboxEntry
    from dapp.web import live as live_module

    monkeypatch.setattr(live_module, "RECONCILE_BLOCKS", 1)
    hub = app.extensions["microgrid"].hub
    client = app.extensions["microgrid"].client
    payer, payee = Account.create(), Account.create().address
    world.mine(world.client.send_ether(world.bank, payer.address, 10**17))
    # Signed and written to this server's outbox, but the node never got it (as after a node
    # restart that lost its pending pool): nobody on the page clicks anything again.
    signed = payer.sign_transaction({"to": payee, "value": 4242, "gas": 21_000, "nonce": 0,
                                     "chainId": client.sender.chain_id(),
                                     "maxFeePerGas": 4 * client.gas_price() + 10**9,
                                     "maxPriorityFeePerGas": 10**9})
    lost = HexBytes(signed.hash).to_0x_hex()
    client.sender.outbox.add(OutboxEntry(
        hash=lost, sender=payer.address, nonce=0, kind="send Ether",
        raw=HexBytes(signed.raw_transaction).to_0x_hex(), to=payee, value=4242,
        sent_at=time.time(), genesis=client.sender.genesis()))
    for _ in range(20):
        world.mine(world.client.send_ether(world.bank, Account.create().address, 1))
        hub.tick()
        if client.ether_balance(payee) == 4242:
            break
    assert client.ether_balance(payee) == 4242  # paid once, from the same signed bytes
    hub.tick()
    assert lost not in [e.hash for e in client.sender.outbox.entries()]
