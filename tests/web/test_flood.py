"""A flood of listings hides nothing: the board, the JSON API and the auto-finalizer find every
open lot however many came after it (issue "Nobody takes energy or Ether without paying", item 6).

On a managed anvil (the in-process chain takes minutes for this many transactions): before the
flood, a trade the consumer won and an auction that ended without bids. Then the producer lists
FLOOD dust lots (2 Wh each, 500 to a block; bench/pages.py's MarketBuilder). The old pages looked
at the newest 500 lots (the bridge at 1,000): both older lots were hidden. An app started after
the flood seeds its open lots from the market's logs and finds both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from bench.pages import PASSPHRASE, PRICE, MarketBuilder
from dapp.chain.anvil import ManagedAnvil
from dapp.chain.client import LotStatus
from dapp.services.market import AutoFinalizer
from dapp.web import create_app
from tests.support import free_port

FLOOD = 1_200

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MarketBuilder]:
    """A market on a fresh managed anvil, with a producer's supply and a consumer's load meter."""
    root = Path(tmp_path_factory.mktemp("flood"))
    node = ManagedAnvil(root / "node", port=free_port(), block_time=None, state_interval=0,
                        extra_args=("--gas-limit", "1000000000"))
    node.start()
    try:
        made = MarketBuilder(node.url, root)
        made.meter("producer", "supply", 5_000)
        made.meter("consumer", "load", 0)
        yield made
    finally:
        node.stop()


def logged_in(app: Flask, market: MarketBuilder, role: str):  # noqa: ANN201 - a test client
    """A test client of `app` logged in as `role`."""
    client = app.test_client()
    token = client.get("/api/v1/session").get_json()["csrf_token"]
    response = client.post("/login", data={"csrf_token": token, "address": market.address[role],
                                           "passphrase": PASSPHRASE})
    assert response.status_code == 303
    return client


def test_a_flood_of_listings_hides_no_open_trade_and_no_ended_auction(market):
    client = market.client
    trade = client.lot_count() + 1
    client.wait(client.sell(market.account("producer"), 500, PRICE, 60))
    client.wait(client.bid(market.account("consumer"), trade, PRICE))
    ended = trade + 1
    client.wait(client.sell(market.account("producer"), 200, PRICE, 60))
    market.advance(61)
    client.wait(client.finalize(market.account("finalizer"), trade))
    assert client.lot(trade).status == LotStatus.OPEN

    market.bulk("producer", [("list", [2, PRICE, 86_400], 0)] * FLOOD)
    assert client.lot_count() == ended + FLOOD

    app = create_app(market.app_config())  # started after the flood
    person = logged_in(app, market, "consumer")
    snapshot = person.get("/api/v1/market").get_json()
    assert trade in {t["id"] for t in snapshot["trades"]}
    listings = {item["id"] for item in snapshot["listings"]}
    assert ended in listings and len(listings) == FLOOD + 1
    cleared = next(c for c in snapshot["cleared"] if c["id"] == trade)
    assert (cleared["price"], cleared["energy_kwh"]) == ("0.001", "0.5")
    html = person.get("/market/").get_data(as_text=True)
    assert f'id="trade-{trade}"' in html and f'id="listing-{ended}"' in html
    assert f"Trade #{trade}" in html.split('id="close"')[1]  # the consumer's own, by index
    assert person.get("/api/v1/market/mine").get_json() == {
        "buying": [trade], "selling": [], "active": trade}

    finalizer = AutoFinalizer(app.extensions["microgrid"].market, market.account("finalizer"))
    sent = finalizer.run_once()
    assert len(sent) == 1  # the one ended auction, found under the flood
    client.wait(sent[0])
    assert client.lot(ended).status == LotStatus.EXPIRED
    after = person.get("/api/v1/market").get_json()
    assert ended not in {item["id"] for item in after["listings"]}
    assert trade in {t["id"] for t in after["trades"]}
