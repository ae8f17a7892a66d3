"""The web app with the real meter bridge attached: emulated meters on TCP, relays from trades.

The producer's supply meter and the consumer's load meter are emulated (hardware.emulator), each
with a key of its own that the test never sees; the operator offers each to its owner, who accepts
it. dapp.bridge.MeterBridge (fed by the app's one event listener) installs the chain's domain in
the meters and forwards their signed readings from the finalizer's account, which pays the gas.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from dapp.bridge import BridgeMeter, MeterBridge
from hardware.emulator import EmulatedMeter, MeterMemory, MeterServer, Microgrid
from tests.web.conftest import Browser, World, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The consumer's load meter is the emulated one here: the world gives it none."""
    made = World(tmp_path_factory.mktemp("bridge-world"), buyers=("rival",))
    yield made
    made.close()


@pytest.fixture
def bridged(make_app, world: World) -> Iterator[tuple[Flask, Any]]:
    """The app with a bridge over an emulated supply (producer) and load (consumer) meter."""
    grid = Microgrid(acceleration=60)
    servers, meters = [], []
    for kind, owner in (("supply", "producer"), ("load", "consumer")):
        emulated = EmulatedMeter(kind, grid, meter_id=f"web-{kind}", state=MeterMemory.ephemeral())
        server = MeterServer(emulated)
        world.mine(world.client.offer_meter(world.bank, emulated.address, world.address[owner],
                                            kind, emulated.identity.rated_power_w))
        world.mine(world.client.accept_meter(world.account(owner), emulated.address))
        servers.append(server)
        meters.append(BridgeMeter(server.start(), emulated.address))
    app = make_app(FINALIZER_ADDRESS=world.address["finalizer"],
                   FINALIZER_PASSPHRASE_FILE=str(world.passphrase_file))
    ext = app.extensions["microgrid"]
    bridge = MeterBridge(ext.client, meters, submitter=world.account("finalizer"),
                         poll_interval=0.2, submit_interval=1.0, on_change=ext.meter_changed)
    ext.attach_bridge(bridge)
    bridge.start()
    ext.start_background()
    yield app, bridge
    bridge.stop()
    ext.stop_background()
    for server in servers:
        server.stop()


def test_generation_relays_and_deliveries_reach_the_pages(bridged, world):
    app, bridge = bridged
    producer, consumer = (Browser(app.test_client(), world) for _ in range(2))
    assert producer.login("producer").status_code == 303
    assert consumer.login("consumer").status_code == 303

    generation = wait_for(lambda: (g := producer.client.get("/api/v1/wallet").get_json()[
        "generation"])["meter"] and g["energy_kwh"] is not None and g, timeout=20)
    assert "kWh" in generation["text"]
    assert 'id="generation"' in producer.text("/wallet/")

    listed = producer.api("POST", "/api/v1/market/listings",
                          {"energy": "0.5", "price": "0.001", "duration": "60",
                           "duration_unit": "seconds"})
    world.mine(listed.get_json()["tx_hash"])
    lot = world.client.lot_count()
    bid = consumer.api("POST", f"/api/v1/market/listings/{lot}/bids", {"price": "0.002"})
    world.mine(bid.get_json()["tx_hash"])
    world.advance(61)  # the server's finalizer opens the trade; the bridge closes the relays

    def trade() -> dict | None:
        trades = consumer.client.get("/api/v1/market").get_json()["trades"]
        return next((t for t in trades if t["id"] == lot), None)

    shown = wait_for(lambda: (t := trade()) and t["relay"] == "closed"
                     and t["seller_relay"] == "closed" and t, timeout=30)
    assert shown["seller_relay"] == "closed"
    assert "relay: closed" in consumer.text("/market/board")
    delivered = wait_for(lambda: (t := trade()) and t["delivered_wh"] > 0 and t, timeout=40)
    assert float(delivered["paid"]) > 0
    wait_for(lambda: sum(consumer.client.get("/api/v1/wallet").get_json()["history"][
        "consumption_kwh"]) > 0)  # the chart follows the readings on the chain

    closed = consumer.api("POST", f"/api/v1/market/trades/{lot}/close")
    world.mine(closed.get_json()["tx_hash"])
    wait_for(lambda: trade() is None, timeout=20)
    load = next(m for m in bridge.state() if m.kind == "load")
    wait_for(lambda: bridge.meter_state(load.address).relay_closed is False, timeout=20)
