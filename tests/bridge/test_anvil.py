"""The bridge on a real node: a managed anvil, and `microgrid bridge` as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dapp.chain.client import ChainClient, LotStatus
from dapp.chain.deploy import deploy
from dapp.chain.transports import connect
from dapp.errors import ContractReverted
from dapp.wallet.keystore import Keystore
from tests.bridge.conftest import (
    ETHER,
    PARAMS,
    PASSPHRASE,
    PRICE,
    World,
    relay,
    trade_scenario,
    wait_for,
)
from tests.chain.conftest import anvil_factory, fund  # noqa: F401 - anvil_factory is a fixture
from tests.support import SigningMeter

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def anvil_world(node, tmp_path: Path) -> World:
    """The contracts on a started anvil `node`, with a funded operator (shared by the suites)."""
    w3 = connect(node.url, timeout=5)
    operator = fund(w3, 1000 * ETHER)
    deployment = deploy(w3, operator, PARAMS)
    client = ChainClient(node.url, tmp_path / "client0")
    client.use_deployment(deployment)

    def set_balances(addresses: list[str], wei: int) -> None:
        for address in addresses:
            w3.provider.make_request("anvil_setBalance", [address, hex(wei)])

    def advance(seconds: int) -> None:
        w3.provider.make_request("evm_increaseTime", [seconds])
        w3.provider.make_request("evm_mine", [])

    return World(client, deployment, operator, set_balances, advance, node.url, tmp_path, w3)


@pytest.fixture
def world(anvil_factory, tmp_path) -> World:  # noqa: F811 - the fixture, used by name
    """The contracts on a fresh anvil that mines each transaction at once."""
    node = anvil_factory(block_time=None, chain_id=4343)
    node.start()
    return anvil_world(node, tmp_path)


def test_readings_mint_and_pay_and_relays_follow_the_trade_on_anvil(
        world, plant, bridges, listener):
    trade_scenario(world, plant, bridges, listener)


@pytest.fixture
def bridge_process(tmp_path) -> Iterator[Callable[[dict[str, str]], subprocess.Popen]]:
    """Factory: `microgrid bridge` as a child process; every one is killed after the test."""
    started: list[subprocess.Popen] = []

    def start(env: dict[str, str]) -> subprocess.Popen:
        log = (tmp_path / f"bridge{len(started)}.log").open("wb")
        process = subprocess.Popen([sys.executable, "-m", "dapp.cli", "bridge"], cwd=ROOT,
                                   env={**os.environ, **env}, stdout=log,
                                   stderr=subprocess.STDOUT)
        log.close()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_standalone_bridge_killed_and_restarted_keeps_relays_with_the_chain(
        world, plant, bridge_process, tmp_path):
    client = world.client
    seller, buyer = world.accounts(2)
    world.mint(seller, 600)
    # Long watchdogs: whatever the relays do here, the bridge processes did it.
    supply, load = plant.meter("supply", watchdog_s=60), plant.meter("load", watchdog_s=60)
    data_dir = tmp_path / "bridge-data"
    keystore = Keystore(data_dir / "keystore", scrypt_n=2)
    submitter = keystore.create(PASSPHRASE, label="submitter")  # pays the readings' gas
    world.fund([submitter], 10 * ETHER)
    world.give(supply, seller)
    load_meter = world.give(load, buyer)
    passphrase_file = tmp_path / "submitter-passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n", encoding="utf-8")
    env = {
        "MICROGRID_DATA_DIR": str(data_dir),
        "MICROGRID_RPC": world.rpc_url,
        "MICROGRID_METERS": f"{supply.url} {load.url}",  # addresses from the meters' ID
        "MICROGRID_SUBMITTER": submitter,
        "MICROGRID_SUBMITTER_PASSPHRASE_FILE": str(passphrase_file),
        "MICROGRID_BRIDGE_POLL_INTERVAL": "0.2",
        "MICROGRID_BRIDGE_SUBMIT_INTERVAL": "0.5",
        "MICROGRID_BRIDGE_LISTEN_INTERVAL": "0.2",
    }
    trade = world.trade(seller, buyer, 300)

    first = bridge_process(env)
    wait_for(lambda: relay(supply) and relay(load), timeout=30, what="relays closed")
    wait_for(lambda: client.meter(load_meter).read_at > 0, what="readings from the process")
    first.kill()  # SIGKILL: no cleanup at all
    first.wait(timeout=10)
    killed = time.monotonic()
    assert relay(supply) and relay(load)
    world.close(buyer, trade)

    second = bridge_process(env)
    wait_for(lambda: not relay(supply) and not relay(load), timeout=30, what="relays opened")
    assert time.monotonic() - killed < 60  # the bridge did it, not the watchdog
    trade = world.trade(seller, buyer, 300)  # heard through the process's own listener
    wait_for(lambda: relay(supply) and relay(load), timeout=10, what="relays closed by event")
    wait_for(lambda: client.lot(trade).delivered_wh > 0, timeout=10, what="delivery paid")

    second.send_signal(signal.SIGTERM)  # a clean stop commands the relays open
    assert second.wait(timeout=15) == 0
    assert not relay(supply) and not relay(load)
    assert "bridge stopped" in (tmp_path / "bridge1.log").read_text(encoding="utf-8")


def test_a_listing_estimated_before_the_sellers_last_trade_closes_still_fits_its_gas(world):
    """The race the bridge process test once lost: the seller lists while the buyer's load
    reading closes the seller's last trade. The close empties the market's token escrow and the
    seller's lot list, so the listing costs more when mined than when it was estimated."""
    client = world.client
    seller, buyer, carrier = world.accounts(3)
    world.mint(seller, 600)
    load = SigningMeter("load", 65535)
    load.offer_to(client, world.operator, buyer)
    assert load.report(client, carrier, 1).accepted  # the baseline
    trade = world.trade(seller, buyer, 300)
    world.advance(5)
    assert load.report(client, carrier, 11).accepted  # 10 Wh delivered
    world.close(buyer, trade)  # asked; the next load reading finishes it
    estimate = client.sell_gas(seller, 300, PRICE, 10)  # the state the page's estimate sees
    world.advance(1)
    assert load.report(client, carrier, 12).accepted  # 1 Wh more, and the trade closes
    assert client.lot(trade).status is LotStatus.CLOSED
    assert client.lots_of_seller(seller.address) == []
    assert client.token_balance(seller.address) == 589  # 11 Wh delivered, 289 returned
    assert client.sell_gas(seller, 300, PRICE, 10) > estimate * 1.25  # the old margin fell short

    ether = client.ether_balance(seller.address)
    with pytest.raises(ContractReverted) as failed:  # the old rule: estimate x 1.25
        client.wait(client.sell(seller, 300, PRICE, 10, gas=int(estimate * 1.25)))
    assert failed.value.name == "OutOfGas"
    assert "ran out of gas" in str(failed.value)
    assert client.token_balance(seller.address) == 589  # nothing moved but the fee
    assert client.lots_of_seller(seller.address) == []
    assert 0 < ether - client.ether_balance(seller.address) <= int(estimate * 1.25) * 10**10

    # The sender's rule covers it: the same stale estimate, and the listing is mined.
    client.wait(client.sell(seller, 300, PRICE, 10, gas=client.sender.gas_limit(estimate)))
    lot_id = client.lot_count()
    assert client.lot(lot_id).seller == seller.address
    assert client.lot(lot_id).status is LotStatus.LISTED
    assert client.token_balance(seller.address) == 289
    assert client.lots_of_seller(seller.address) == [lot_id]
