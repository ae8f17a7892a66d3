"""Fixtures for the web app: a real in-process chain with the contracts, real keystore accounts.

`World` is one in-process chain (``inprocess://<unique name>``) with the contracts deployed from
a pre-funded development account, a data directory whose keystore holds the people by role
(producer, consumer, rival, finalizer; scrypt N=16 so unlocking is instant), Ether for each of
them, and energy tokens for the producer minted the real way: an accepted supply meter signs
readings. The chain mines a block 0.1 s after a transaction arrives (no empty blocks, so it stays
short); `advance` moves its clock forward. The meters of `mint` are `SigningMeter`s: the test
holds their keys, the operator offers them, the owner accepts, the bank carries the readings.

`make_app` builds the app over a world; `Browser` wraps a Flask test client that logs in the way a
person does (GET the page, POST the form with the CSRF token).
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import BaseWSGIServer, make_server

from dapp.chain.client import ChainClient
from dapp.chain.deploy import MarketParameters, deploy
from dapp.chain.inprocess import InProcessChain, close_shared_chains, shared_chain
from dapp.wallet.keystore import Keystore
from dapp.web import create_app
from tests.support import SigningMeter, free_port, wait_for  # noqa: F401 - re-exported

ETHER = 10**18
PASSPHRASE = "correct horse battery staple"
PARAMS = MarketParameters(
    min_duration=2, max_duration=86_400, min_increment_per_kwh=10**12, stall_timeout=60
)
RATED_W = 65_000
ROLES = ("producer", "consumer", "rival", "finalizer")


class World:
    """An in-process chain with the contracts, a keystore of people by role, and helpers."""

    def __init__(self, root: Path, tokens_wh: int = 5_000) -> None:
        self.name = f"web-{uuid.uuid4().hex[:10]}"
        self.url = f"inprocess://{self.name}"
        self.chain: InProcessChain = shared_chain(self.name)
        self.chain.empty_blocks = False
        self.chain.start_mining(0.1)
        self.w3 = self.chain.w3
        self.bank = self.chain.accounts[0]
        # deploy() signs legacy (EIP-155) transactions, which eth-tester refuses to take from its
        # pending pool (it checks v as 8 bits); mine them at once instead.
        with self.chain.lock:
            self.chain.tester.enable_auto_mine_transactions()
            try:
                self.deployment = deploy(self.w3, self.bank, PARAMS)
            finally:
                self.chain.tester.disable_auto_mine_transactions()
        self.data_dir = root / "data"
        self.keystore = Keystore(self.data_dir / "keystore", scrypt_n=16)
        # The world's own client (its own outbox) for setting things up, as the operator would.
        self.client = ChainClient(self.url, root / "setup", market=self.deployment.market)
        self.address: dict[str, str] = {}
        for role in ROLES:
            self.address[role] = self.keystore.create(PASSPHRASE, label=role)
        self.passphrase_file = root / "finalizer-passphrase"
        self.passphrase_file.write_text(PASSPHRASE + "\n", encoding="utf-8")
        hashes = [self.client.send_ether(self.bank, self.address[r], 100 * ETHER) for r in ROLES]
        for tx_hash in hashes:
            self.client.wait(tx_hash)
        self.supply_meters: dict[str, SigningMeter] = {}  # owner -> its supply meter
        self.load_meters: dict[str, SigningMeter] = {}  # owner -> its one load meter
        if tokens_wh:
            self.mint(self.address["producer"], tokens_wh)

    def account(self, role: str) -> Any:
        """The decrypted key of a role (for setting up state directly)."""
        return self.keystore.unlock(self.address[role], PASSPHRASE)

    def mine(self, tx_hash: str) -> dict:
        """Wait until `tx_hash` is mined; its receipt."""
        return self.client.wait(tx_hash, timeout=30)

    def now(self) -> int:
        """The latest block's timestamp."""
        return self.client.latest_timestamp()

    def advance(self, seconds: int) -> None:
        """Mine a block `seconds` after the latest one."""
        with self.chain.lock:
            self.chain.tester.time_travel(self.now() + seconds)

    def mint(self, owner: str, wh: int) -> None:
        """Give `owner` `wh` energy tokens through its accepted supply meter's signed readings."""
        meter = self.supply_meters.get(owner)
        if meter is None:
            meter = self.supply_meters[owner] = SigningMeter("supply", RATED_W)
            meter.offer_to(self.client, self.bank, self.keystore.unlock(owner, PASSPHRASE))
            assert meter.report(self.client, self.bank, 1_000).accepted  # the baseline
        self.advance(3600)
        outcome = meter.report(self.client, self.bank, meter.energy_wh + wh)
        assert outcome.accepted, outcome.reason

    def load_meter(self, owner: str) -> SigningMeter:
        """`owner`'s accepted load meter (an owner has one): its readings settle its trades."""
        meter = self.load_meters.get(owner)
        if meter is None:
            meter = self.load_meters[owner] = SigningMeter("load", RATED_W)
            meter.offer_to(self.client, self.bank, self.keystore.unlock(owner, PASSPHRASE))
        return meter

    def close(self) -> None:
        """Stop the chain's block timer."""
        close_shared_chains(self.name)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One world per test module (tests create their own listings by id)."""
    made = World(tmp_path_factory.mktemp("world"))
    yield made
    made.close()


def app_config(world: World, **overrides: Any) -> dict[str, Any]:
    """Test configuration over `world`."""
    config: dict[str, Any] = {
        "TESTING": True,
        "RPC": world.url,
        "DATA_DIR": str(world.data_dir),
        "MARKET": world.deployment.market,
        "SECRET_KEY": "tests-only-secret",
        "KDF_N": 16,
        "START_BACKGROUND": False,
        "LOGIN_LIMIT_PER_ACCOUNT": 1000,
        "LOGIN_LIMIT_PER_CLIENT": 1000,
        "LIVE_INTERVAL": 0.1,
        "LISTENER_INTERVAL": 0.1,
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_app(world: World) -> Iterator[Callable[..., Flask]]:
    """Build apps over the module's world; their background tasks are stopped at teardown."""
    made: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        app = create_app(app_config(world, **overrides))
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["microgrid"].stop_background()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The app without background tasks (tests drive the hub themselves)."""
    return make_app()


CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


class Browser:
    """A Flask test client used the way a person uses the pages."""

    def __init__(self, client: FlaskClient, world: World) -> None:
        self.client = client
        self.world = world

    def csrf(self) -> str:
        """The session's CSRF token, as a page would carry it."""
        page = self.client.get("/api/v1/session")
        return page.get_json()["csrf_token"]

    def login(self, role: str = "producer", passphrase: str = PASSPHRASE) -> Any:
        """Log in as `role` through the login form."""
        return self.post("/login", {"address": self.world.address[role], "passphrase": passphrase})

    def post(self, url: str, data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """POST a form with the CSRF token."""
        return self.client.post(url, data={"csrf_token": self.csrf(), **(data or {})}, **kwargs)

    def api(self, method: str, url: str, json: Any = None, **kwargs: Any) -> Any:
        """Call the JSON API with the CSRF header."""
        headers = {"X-CSRF-Token": self.csrf()}
        return self.client.open(url, method=method, json=json, headers=headers, **kwargs)

    def text(self, url: str) -> str:
        """GET a page; its HTML."""
        response = self.client.get(url)
        assert response.status_code == 200, response.status_code
        return response.get_data(as_text=True)


@pytest.fixture
def browser(app: Flask, world: World) -> Browser:
    """A logged-out test client."""
    return Browser(app.test_client(), world)


@pytest.fixture
def producer(app: Flask, world: World) -> Browser:
    """A test client logged in as the producer."""
    person = Browser(app.test_client(), world)
    assert person.login("producer").status_code == 303
    return person


@pytest.fixture
def consumer(app: Flask, world: World) -> Browser:
    """A test client logged in as the consumer."""
    person = Browser(app.test_client(), world)
    assert person.login("consumer").status_code == 303
    return person


class LiveServer:
    """The app (with Socket.IO) served by werkzeug in a thread on a free 127.0.0.1 port."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: BaseWSGIServer = make_server("127.0.0.1", self.port, app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> LiveServer:
        """Serve in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and the app's background tasks."""
        self.app.extensions["microgrid"].stop_background()
        self._server.shutdown()
        self._thread.join(timeout=5)
        self._server.server_close()
