"""The JSON API: the same reads and actions as the pages, documented by the OpenAPI document."""

from __future__ import annotations

import base64
import inspect
import json
import re

import pytest
from eth_account import Account

from dapp.chain.client import LotStatus
from dapp.chain.contracts import load_artifact
from dapp.chain.inprocess import close_shared_chains, shared_chain
from dapp.web import create_app
from dapp.web.openapi import openapi_document
from tests.support import free_port
from tests.web.conftest import ETHER, PASSPHRASE, Browser, World, app_config

PROTECTED = [
    ("GET", "/api/v1/wallet"), ("GET", "/api/v1/wallet/pending"),
    ("POST", "/api/v1/wallet/send"), ("POST", "/api/v1/wallet/withdraw"),
    ("GET", "/api/v1/mining"), ("POST", "/api/v1/mining"), ("GET", "/api/v1/market"),
    ("POST", "/api/v1/market/listings"), ("POST", "/api/v1/market/listings/1/bids"),
    ("POST", "/api/v1/market/listings/1/finalize"), ("POST", "/api/v1/market/trades/1/close"),
]


@pytest.fixture
def api_producer(app, world) -> Browser:
    """A script logged in as the producer through the API."""
    person = Browser(app.test_client(), world)
    response = person.api("POST", "/api/v1/session", {"address": world.address["producer"],
                                                      "passphrase": PASSPHRASE})
    assert response.status_code == 200
    return person


@pytest.fixture
def api_consumer(app, world) -> Browser:
    """A script logged in as the consumer through the API."""
    person = Browser(app.test_client(), world)
    response = person.api("POST", "/api/v1/session", {"address": world.address["consumer"],
                                                      "passphrase": PASSPHRASE})
    assert response.status_code == 200
    return person


def listing(world: World, person: Browser, **fields: str) -> int:
    """List through the API, wait until mined, return the id."""
    if world.client.token_balance(world.address["producer"]) < 1000:
        world.mint(world.address["producer"], 5000)
    body = {"energy": "0.5", "price": "0.001", "duration": "600", "duration_unit": "seconds",
            **fields}
    response = person.api("POST", "/api/v1/market/listings", body)
    assert response.status_code == 202, response.get_json()
    world.mine(response.get_json()["tx_hash"])
    return world.client.lot_count()


def test_openapi_document_matches_the_routes(app, browser):
    doc = browser.client.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"] == "3.1.0"
    assert doc["servers"][0]["url"].endswith("/api/v1")
    documented = {(method.upper(), "/api/v1" + path) for path, ops in doc["paths"].items()
                  for method in ops}
    routed = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/") and rule.endpoint not in ("api.openapi", "api.docs"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            routed |= {(m, path) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == routed
    refs = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(doc))
    assert set(refs) <= set(doc["components"]["schemas"])
    for ops in doc["paths"].values():
        for op in ops.values():
            assert op["summary"] and op["responses"]
    docs = browser.text("/api/v1/docs")
    assert "/api/v1/market/listings/{lot_id}/bids" in docs


FIELD_READ = re.compile(r'(?:_text\((?:data|body\(\)), |data\.get\()"(\w+)"')


def test_openapi_parameters_and_logins_match_the_views(app):
    doc = openapi_document("http://localhost/api/v1")
    checked = 0
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.endpoint in ("api.openapi", "api.docs"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule).removeprefix("/api/v1")
        view = app.view_functions[rule.endpoint]
        source = inspect.getsource(inspect.unwrap(view))
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            op = doc["paths"][path][method.lower()]
            where = f"{method} {path}"
            in_path = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert in_path == set(rule.arguments), where
            schema = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            documented = set(schema.get("schema", {}).get("properties", {}))
            assert documented == set(FIELD_READ.findall(source)), where
            needs_login = inspect.unwrap(view) is not view  # @login_required wraps the view
            assert (op.get("security") != []) == needs_login, where
            checked += 1
    assert checked == sum(len(ops) for ops in doc["paths"].values())


@pytest.mark.parametrize(("method", "url"), PROTECTED)
def test_protected_endpoints_need_a_session(browser, method, url):
    response = browser.api(method, url, {})
    assert response.status_code == 401
    assert response.get_json() == {"error": "Log in first (POST /api/v1/session)."}


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_api_writes_need_the_csrf_header(api_producer, world, method):
    url = "/api/v1/session" if method == "DELETE" else "/api/v1/mining"
    response = api_producer.client.open(url, method=method, json={"action": "stop"})
    assert response.status_code == 400
    assert "CSRF" in response.get_json()["error"]
    assert world.chain.mining
    assert api_producer.client.get("/api/v1/session").get_json()["logged_in"]


def test_session_login_and_logout(browser, world):
    start = browser.client.get("/api/v1/session").get_json()
    assert start["logged_in"] is False and start["csrf_token"]
    wrong = browser.api("POST", "/api/v1/session", {"address": world.address["consumer"],
                                                    "passphrase": "nope"})
    assert wrong.status_code == 401 and "Wrong passphrase" in wrong.get_json()["error"]
    ok = browser.api("POST", "/api/v1/session", {"address": world.address["consumer"],
                                                 "passphrase": PASSPHRASE})
    assert ok.get_json()["address"] == world.address["consumer"]
    wallet = browser.client.get("/api/v1/wallet").get_json()
    assert wallet["available"] and wallet["address"] == world.address["consumer"]
    assert wallet["generation"]["text"] == "no meter"
    assert len(wallet["history"]["starts"]) == len(wallet["history"]["generation_kwh"])
    assert browser.api("DELETE", "/api/v1/session").get_json() == {"logged_in": False}
    assert browser.client.get("/api/v1/wallet").status_code == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "Send a JSON object"),
        ("text", "Send a JSON object"),
        ({"address": ["0x"], "passphrase": "x"}, "must be text or a number"),
        ({"address": None, "passphrase": "x"}, "Enter the address of the account"),
        ({"address": True, "passphrase": "x"}, "must be text or a number"),
    ],
)
def test_bad_api_bodies_get_a_sentence(browser, body, message):
    response = browser.api("POST", "/api/v1/session", body)
    assert response.status_code == 400
    assert message in response.get_json()["error"]


def test_broken_json_gets_a_sentence(browser):
    response = browser.client.post("/api/v1/session", data="{not json",
                                   content_type="application/json",
                                   headers={"X-CSRF-Token": browser.csrf()})
    assert response.status_code == 400
    assert response.get_json() == {"error": "Send a JSON object as the request body."}


def test_accounts_create_and_import(browser, world):
    listed = browser.client.get("/api/v1/accounts").get_json()["accounts"]
    assert {"producer", "consumer"} <= {a["label"] for a in listed}
    created = browser.api("POST", "/api/v1/accounts", {"passphrase": "api secret 1",
                                                       "label": "script"})
    assert created.status_code == 201 and world.keystore.has(created.get_json()["address"])
    account = Account.create()
    keyfile = Account.encrypt(account.key, "geth secret", kdf="scrypt", iterations=16)
    as_object = browser.api("POST", "/api/v1/accounts/import",
                            {"keystore": keyfile, "passphrase": "geth secret"})
    assert as_object.status_code == 201
    assert as_object.get_json()["address"] == account.address
    other = Account.create()
    encoded = base64.b64encode(json.dumps(Account.encrypt(other.key, "p", kdf="scrypt",
                                                          iterations=16)).encode()).decode()
    assert browser.api("POST", "/api/v1/accounts/import",
                       {"keystore": encoded, "passphrase": "p"}).status_code == 201
    again = browser.api("POST", "/api/v1/accounts/import",
                        {"keystore": keyfile, "passphrase": "geth secret"})
    assert again.status_code == 400 and "already in the keystore" in again.get_json()["error"]
    short = browser.api("POST", "/api/v1/accounts", {"passphrase": "short"})
    assert short.status_code == 400 and "at least 8" in short.get_json()["error"]


def test_send_and_pending_over_the_api(api_producer, world):
    them = world.address["rival"]
    before = world.client.ether_balance(them)
    world.chain.stop_mining()
    try:
        sent = api_producer.api("POST", "/api/v1/wallet/send", {"to": them, "amount": 0.1})
        assert sent.status_code == 202
        tx_hash = sent.get_json()["tx_hash"]
        pending = api_producer.client.get("/api/v1/wallet/pending").get_json()["pending"]
        assert tx_hash in [p["hash"] for p in pending]
    finally:
        world.chain.start_mining(0.1)
    world.mine(tx_hash)
    assert world.client.ether_balance(them) == before + ETHER // 10  # 0.1 exactly, not a float


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"to": "rival", "amount": "-1"}, 400, "cannot be negative"),
        ({"to": "rival", "amount": 1e-30}, 400, "must be a number"),
        ({"to": "rival", "amount": {"v": 1}}, 400, "must be text or a number"),
        ({"to": "rival", "amount": "1000"}, 409, "You have only"),
        ({"to": "nobody", "amount": "1"}, 400, "not an Ethereum address"),
    ],
)
def test_bad_sends_over_the_api(api_producer, world, body, status, message):
    body = {**body, "to": world.address.get(body["to"], body["to"])}
    response = api_producer.api("POST", "/api/v1/wallet/send", body)
    assert response.status_code == status
    assert message in response.get_json()["error"]


def test_mining_over_the_api(api_producer, world):
    assert api_producer.client.get("/api/v1/mining").get_json()["mining"] is True
    try:
        stopped = api_producer.api("POST", "/api/v1/mining", {"action": "stop"})
        assert stopped.get_json()["mining"] is False and not world.chain.mining
        assert api_producer.client.get("/api/v1/chain").get_json()["mining"]["mining"] is False
    finally:
        started = api_producer.api("POST", "/api/v1/mining", {"action": "start"})
        world.chain.start_mining(0.1)
    assert started.get_json()["mining"] is True
    bad = api_producer.api("POST", "/api/v1/mining", {"action": "sometimes"})
    assert bad.status_code == 400 and bad.get_json()["field"] == "action"


def test_market_round_trip_over_the_api(api_producer, api_consumer, world):
    lot = listing(world, api_producer, energy="1.5", price="1000000", price_unit="gwei")
    market = api_consumer.client.get("/api/v1/market").get_json()
    shown = next(item for item in market["listings"] if item["id"] == lot)
    assert shown["energy_kwh"] == "1.5" and shown["start_price"] == "0.001"
    own = api_producer.api("POST", f"/api/v1/market/listings/{lot}/bids", {"price": "0.002"})
    assert own.status_code == 409 and own.get_json()["error"] == \
        "You cannot bid on your own listing."
    bid = api_consumer.api("POST", f"/api/v1/market/listings/{lot}/bids", {"price": "0.002"})
    assert bid.status_code == 202
    world.mine(bid.get_json()["tx_hash"])
    early = api_consumer.api("POST", f"/api/v1/market/listings/{lot}/finalize")
    assert early.status_code == 409
    world.advance(601)
    done = api_consumer.api("POST", f"/api/v1/market/listings/{lot}/finalize")
    assert done.status_code == 202
    world.mine(done.get_json()["tx_hash"])
    trades = api_consumer.client.get("/api/v1/market").get_json()["trades"]
    trade = next(t for t in trades if t["id"] == lot)
    assert trade["buyer"]["address"] == world.address["consumer"]
    assert trade["price"] == "0.002" and trade["delivered_kwh"] == "0" and trade["paid"] == "0"
    assert trade["relay"] == "no meter"
    closed = api_consumer.api("POST", f"/api/v1/market/trades/{lot}/close")
    assert closed.status_code == 202
    world.mine(closed.get_json()["tx_hash"])
    assert world.client.lot(lot).status == LotStatus.CLOSED


@pytest.mark.parametrize(
    ("url", "body", "status", "message"),
    [
        ("/api/v1/market/listings", {"energy": "0.0001", "price": "1", "duration": "60"}, 400,
         "at most 3 decimal places"),
        ("/api/v1/market/listings", {"energy": "1", "price": "1", "duration": "60",
                                     "duration_unit": "eons"}, 400, "Choose the duration unit"),
        ("/api/v1/market/listings", {"energy": "1", "price": "1", "price_unit": "btc",
                                     "duration": "60"}, 400, "Choose the price unit"),
        ("/api/v1/market/listings/abc/bids", {"price": "1"}, 400, "no listing or trade"),
        ("/api/v1/market/listings/0/bids", {"price": "1"}, 400, "no listing or trade"),
        ("/api/v1/market/listings/4242/bids", {"price": "1"}, 400, "There is no listing #4242."),
        ("/api/v1/market/listings/4242/finalize", {}, 400, "There is no listing #4242."),
        ("/api/v1/market/trades/4242/close", {}, 400, "There is no listing #4242."),
    ],
)
def test_bad_market_calls_over_the_api(api_consumer, url, body, status, message):
    response = api_consumer.api("POST", url, body)
    assert response.status_code == status
    assert message in response.get_json()["error"]


def test_chain_status_is_public(browser, world):
    status = browser.client.get("/api/v1/chain").get_json()
    assert status["available"] is True and status["block"] == world.client.block_number()
    assert status["mining"]["available"] is True


def test_an_anonymous_client_finds_the_contracts_and_their_abis(browser, producer, world):
    response = browser.client.get("/api/v1/chain")
    assert response.status_code == 200
    network = response.get_json()
    assert network["chain_id"] == world.w3.eth.chain_id
    assert network["block"] == world.client.block_number()
    dep = world.deployment
    shown = network["deployment"]
    assert {k: shown[k] for k in ("token", "registry", "market", "operator")} == \
        {"token": dep.token, "registry": dep.registry, "market": dep.market,
         "operator": dep.operator}
    # The deployment block is where a client starts reading the market: it exists there, and
    # it logged nothing before.
    block = shown["block"]
    assert world.w3.eth.get_code(dep.market, block_identifier=block) != b""
    assert world.w3.eth.get_logs({"fromBlock": 0, "toBlock": block - 1,
                                  "address": dep.market}) == []
    assert set(network["abi"]) == {"token", "registry", "market"}
    # A foreign client follows the links and talks to the contracts with what it got.
    for role, url in network["abi"].items():
        served = browser.client.get(url.removeprefix("http://localhost"))
        assert served.status_code == 200, url
        name = network["contracts"][role]
        assert served.get_json() == {"contract": name, "abi": load_artifact(name).abi}
    market_abi = browser.client.get("/api/v1/abi/EnergyMarket").get_json()["abi"]
    market = world.w3.eth.contract(address=network["deployment"]["market"], abi=market_abi)
    assert market.functions.lotCount().call() == world.client.lot_count()
    unknown = browser.client.get("/api/v1/abi/Tether")
    assert unknown.status_code == 404
    assert unknown.get_json()["error"] == ("There is no contract 'Tether' here; the ABIs are "
                                           "EnergyMarket, EnergyToken, MeterRegistry.")
    # The wallet page shows the same under "Network".
    page = producer.text("/wallet/")
    network_panel = page[page.index('id="network-panel"'):]
    assert "<h2>Network</h2>" in network_panel
    for text in (f">{network['chain_id']}<", dep.token, dep.registry, dep.market,
                 f"#{block}<", "/api/v1/abi/EnergyToken"):
        assert text in network_panel, text


def test_the_network_says_in_words_when_the_chain_is_down_or_has_no_contracts(world, tmp_path):
    down = create_app(app_config(world, RPC=f"http://127.0.0.1:{free_port()}", MARKET=None,
                                 DATA_DIR=str(tmp_path / "down"), RPC_TIMEOUT=2)).test_client()
    response = down.get("/api/v1/chain")
    assert response.status_code == 503
    body = response.get_json()
    assert body["error"].startswith("The Ethereum node does not answer (")
    assert body["available"] is False and body["deployment"] is None
    name = "web-bare-chain"
    shared_chain(name)  # a chain without the Microgrid contracts
    try:
        bare = create_app(app_config(world, RPC=f"inprocess://{name}", MARKET=None,
                                     DATA_DIR=str(tmp_path / "bare"))).test_client()
        response = bare.get("/api/v1/chain")
        assert response.status_code == 200
        body = response.get_json()
        assert body["available"] is True and isinstance(body["chain_id"], int)
        assert body["deployment"] is None
        assert body["deployment_message"].startswith(
            "The Microgrid contracts on this chain are not known: No Microgrid contracts found")
    finally:
        close_shared_chains(name)
