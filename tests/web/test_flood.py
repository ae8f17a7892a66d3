"""A flood of listings hides nothing: the board, the JSON API and the auto-finalizer find every
open lot however many came after it (issue "Nobody takes energy or Ether without paying", item 6).

Before the flood: a trade the consumer won and an auction that ended without bids. Then one
account lists FLOOD dust lots (1 Wh each), signed here and sent raw so they cost a few seconds.
The old pages looked at the newest 500 lots (the bridge at 1,000): both older lots were hidden.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dapp.chain.client import LotStatus
from dapp.chain.contracts import load_artifact
from dapp.services.market import AutoFinalizer
from tests.web.conftest import Browser, World

FLOOD = 1_200


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A world of its own: the flood would slow every other module's board."""
    made = World(tmp_path_factory.mktemp("flood"), tokens_wh=5_000)
    yield made
    made.close()


def flood(world: World, count: int) -> None:
    """`count` dust listings by the producer, signed locally with consecutive nonces."""
    account = world.account("producer")
    market = world.w3.eth.contract(address=world.deployment.market,
                                   abi=load_artifact("EnergyMarket").abi)
    data = market.encode_abi("list", args=[1, 10**12, 86_400])
    nonce = world.w3.eth.get_transaction_count(account.address, "pending")
    fee = 2 * world.w3.eth.gas_price
    hashes = []
    for i in range(count):
        signed = account.sign_transaction({
            "to": market.address, "data": data, "value": 0, "gas": 250_000,
            "maxFeePerGas": fee, "maxPriorityFeePerGas": 1, "nonce": nonce + i,
            "chainId": world.w3.eth.chain_id,
        })
        hashes.append(world.w3.eth.send_raw_transaction(signed.raw_transaction))
    receipt = world.w3.eth.wait_for_transaction_receipt(hashes[-1], timeout=300)
    assert receipt["status"] == 1


def test_a_flood_of_listings_hides_no_open_trade_and_no_ended_auction(world, make_app):
    seller, buyer = world.account("producer"), world.account("consumer")
    trade = world.client.lot_count() + 1
    world.mine(world.client.sell(seller, 500, 10**15, 30))
    world.mine(world.client.bid(buyer, trade, 10**15))
    ended = trade + 1
    world.mine(world.client.sell(seller, 200, 10**15, 30))
    world.advance(31)
    world.mine(world.client.finalize(buyer, trade))
    assert world.client.lot(trade).status == LotStatus.OPEN

    flood(world, FLOOD)
    assert world.client.lot_count() == ended + FLOOD

    app = make_app()  # started after the flood: it seeds its open lots from the market's logs
    person = Browser(app.test_client(), world)
    assert person.login("consumer").status_code == 303
    snapshot = person.client.get("/api/v1/market").get_json()
    assert trade in {t["id"] for t in snapshot["trades"]}
    listings = {item["id"] for item in snapshot["listings"]}
    assert ended in listings and len(listings) == FLOOD + 1
    html = person.text("/market/")
    assert f'id="trade-{trade}"' in html and f'id="listing-{ended}"' in html
    assert f"Trade #{trade}" in html.split('id="close"')[1]  # the consumer's own, by index

    finalizer = AutoFinalizer(app.extensions["microgrid"].market, world.account("finalizer"))
    sent = finalizer.run_once()
    assert len(sent) == 1  # the one ended auction, found under the flood
    world.mine(sent[0])
    assert world.client.lot(ended).status == LotStatus.EXPIRED
    after = person.client.get("/api/v1/market").get_json()
    assert ended not in {item["id"] for item in after["listings"]}
    assert trade in {t["id"] for t in after["trades"]}
