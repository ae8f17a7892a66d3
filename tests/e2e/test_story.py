"""The story of the original demo, end to end, on two servers sharing one chain.

A real managed anvil on loopback; a producer server on that machine and a consumer server that
reaches the chain only through the JSON-RPC gateway, as a second machine on the LAN would
(`microgrid serve` subprocesses, each bridging its own emulated meter and paying the gas of its
readings from its household's account); the two meters share one emulated micro-grid (the
producer's PV charges the battery the consumer draws from) and each keeps its own key file, which
no server ever sees. The operator offers each meter with `microgrid meter offer`; each household
accepts its meter on its own server. Everything a user does goes through the JSON API of their
own server; the test reads the chain directly only to check the books.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from eth_account import Account
from web3 import HTTPProvider, Web3

from dapp.chain.anvil import ManagedAnvil
from dapp.chain.client import ChainClient, LotStatus
from dapp.chain.contracts import load_artifact
from dapp.chain.deploy import MarketParameters, deploy
from dapp.chain.gateway import Gateway, serve
from dapp.wallet.keystore import Keystore
from hardware.emulator import EmulatedMeter, MeterMemory, MeterServer, Microgrid
from hardware.models import LoadProfile, Plant, SolarArray
from tests.support import free_port, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = "correct horse battery staple"
ETHER = 10**18
ACCELERATION = 30


class Server:
    """A `microgrid serve` subprocess and a logged-in API client for one user."""

    def __init__(self, name: str, data_dir: Path, rpc: str, meter: tuple[str, str],
                 submitter: str, finalizer: str | None, passphrase_file: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MICROGRID_DATA_DIR": str(data_dir),
               "MICROGRID_LIVE_INTERVAL": "0.3"}
        args = [sys.executable, "-m", "dapp.cli", "serve", "--rpc", rpc, "--port", str(self.port),
                "--meter", f"{meter[0]}:{meter[1]}", "--submitter", submitter,
                "--submitter-passphrase-file", str(passphrase_file), "--kdf-n", "16"]
        if finalizer:
            args += ["--finalizer", finalizer, "--finalizer-passphrase-file", str(passphrase_file)]
        self.log = (data_dir / "serve.log").open("w")
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        wait_for(self._up, timeout=30, step=0.2)

    def _up(self) -> bool:
        assert self.process.poll() is None, f"{self.name} server died"
        try:
            return requests.get(f"{self.url}/api/v1/session", timeout=5).ok
        except (requests.ConnectionError, requests.Timeout):  # still starting
            return False

    def login(self, address: str) -> requests.Session:
        """A requests session logged in as `address` through the JSON API."""
        http = requests.Session()
        token = http.get(f"{self.url}/api/v1/session", timeout=5).json()["csrf_token"]
        reply = http.post(f"{self.url}/api/v1/session", timeout=10,
                          json={"address": address, "passphrase": PASSPHRASE},
                          headers={"X-CSRF-Token": token})
        assert reply.status_code == 200, reply.text
        http.headers["X-CSRF-Token"] = reply.json()["csrf_token"]
        return http

    def stop(self) -> None:
        """SIGTERM and wait."""
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


# A minimum charge below the 100 Wh lot (so the story pays what was metered, or the minimum if
# less was), a stall timeout far beyond the story, and a grace within which the consumer's
# bridge forwards the next reading that ends the two-phase close.
MIN_CHARGE_WH = 20
MIN_CHARGE_PARAMS = MarketParameters(min_duration=20, stall_timeout=600, close_grace=120,
                                     min_charge_wh=MIN_CHARGE_WH)


def offer_meter(data_dir: Path, rpc: str, operator: str, meter: str, owner: str, kind: str,
                rated_power_w: int, passphrase_file: Path) -> None:
    """The grid operator runs `microgrid meter offer` (its key is in `data_dir`'s keystore)."""
    done = subprocess.run(
        [sys.executable, "-m", "dapp.cli", "--data-dir", str(data_dir), "meter", "offer",
         "--rpc", rpc, "--from", operator, "--meter", meter, "--owner", owner, "--kind", kind,
         "--rated-power", str(rated_power_w), "--passphrase-file", str(passphrase_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"offered {meter} to {owner}" in done.stdout


def post(http: requests.Session, url: str, payload: dict | None = None) -> dict:
    """POST an action; it must be accepted (202/200)."""
    reply = http.post(url, json=payload or {}, timeout=30)
    assert reply.status_code in (200, 201, 202), f"{url}: {reply.status_code} {reply.text}"
    return reply.json()


@pytest.fixture
def world(tmp_path) -> Iterator[dict]:
    """anvil, contracts, four accounts in two keystores, two meters with key files, two servers."""
    node = ManagedAnvil(tmp_path / "node", port=free_port(), block_time=1)
    node.start()
    # The consumer's "machine" sees the chain through the gateway only (a LAN address here).
    gateway = serve(Gateway(node.url), "127.0.0.2", free_port())
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    gateway_url = f"http://127.0.0.2:{gateway.port}"
    servers: list[Server] = []
    meters: list[MeterServer] = []
    try:
        chain = ChainClient(node.url, tmp_path / "test-client")
        producer_dir, consumer_dir = tmp_path / "producer", tmp_path / "consumer"
        ks_p = Keystore(producer_dir / "keystore", scrypt_n=16)
        ks_c = Keystore(consumer_dir / "keystore", scrypt_n=16)
        who = {
            "operator": ks_p.create(PASSPHRASE, "operator"),
            "producer": ks_p.create(PASSPHRASE, "producer"),
            "consumer": ks_c.create(PASSPHRASE, "consumer"),
            "rival": ks_c.create(PASSPHRASE, "second buyer"),
        }
        for address in who.values():
            chain.fund_dev_account(address, 100 * ETHER)
        operator = ks_p.unlock(who["operator"], PASSPHRASE)
        dep = deploy(_web3(node.url), operator,
                     MIN_CHARGE_PARAMS)
        chain.use_deployment(dep)
        pw = tmp_path / "passphrase"
        pw.write_text(PASSPHRASE + "\n")

        grid = Microgrid(Plant(pv=SolarArray(peak_w=1000), load=LoadProfile.parse("400")),
                         acceleration=ACCELERATION)
        urls = {}
        for key, kind, owner in (("supply_meter", "supply", "producer"),
                                 ("load_meter", "load", "consumer")):
            # The meter's EEPROM: a key file of its own, in neither household's data directory.
            eeprom = MeterMemory.in_directory(tmp_path / "meters", f"e2e-{kind}")
            # Rated 1.5x its peak: the story stops mining for a while, and the registry judges
            # the energy of that pause against the chain time of the blocks that follow it.
            peak = 1000 if kind == "supply" else 400
            emulated = EmulatedMeter(kind, grid, meter_id=f"e2e-{kind}", state=eeprom,
                                     rated_power_w=1.5 * peak)
            who[key] = emulated.address
            offer_meter(producer_dir, node.url, who["operator"], emulated.address, who[owner],
                        kind, emulated.identity.rated_power_w, pw)
            server = MeterServer(emulated)
            urls[key] = server.start()
            meters.append(server)
        # The second buyer bids too, so it needs a load meter of its own (it never reports here).
        who["rival_meter"] = Account.create().address
        offer_meter(producer_dir, node.url, who["operator"], who["rival_meter"], who["rival"],
                    "load", 3_000, pw)
        # Each household's server forwards its meter's signed readings and pays their gas.
        servers.append(Server("producer", producer_dir, node.url,
                              (urls["supply_meter"], who["supply_meter"]), who["producer"],
                              who["operator"], pw))
        servers.append(Server("consumer", consumer_dir, gateway_url,
                              (urls["load_meter"], who["load_meter"]), who["consumer"], None, pw))
        yield {"chain": chain, "who": who, "producer_server": servers[0],
               "consumer_server": servers[1], "meters": {m.meter.kind: m.meter for m in meters},
               "operator": operator}
    finally:
        for server in servers:
            server.stop()
        for meter in meters:
            meter.stop()
        gateway.shutdown()
        gateway.server_close()
        node.stop()


def test_the_whole_story_with_every_wei_and_wh_accounted_for(world):
    chain: ChainClient = world["chain"]
    who = world["who"]
    api_p = world["producer_server"].url + "/api/v1"
    api_c = world["consumer_server"].url + "/api/v1"
    producer = world["producer_server"].login(who["producer"])
    consumer = world["consumer_server"].login(who["consumer"])
    rival = world["consumer_server"].login(who["rival"])
    supply, load = world["meters"]["supply"], world["meters"]["load"]
    # Neither server was told an address: both found the deployment on the chain.
    for base in (api_p, api_c):
        assert requests.get(f"{base}/chain", timeout=5).json()["available"] is True
    # The consumer's server cannot steer the shared node's mining, and says why.
    mining = consumer.get(f"{api_c}/mining", timeout=5).json()
    assert mining["available"] is False and "gateway" in mining["detail"]

    # 0. The operator offered each household its meter; nothing counts before they accept it.
    for base, http, meter in ((api_p, producer, who["supply_meter"]),
                              (api_c, consumer, who["load_meter"])):
        offers = http.get(f"{base}/meters/offers", timeout=5).json()["offers"]
        assert [o["address"] for o in offers] == [meter]
    assert chain.token_balance(who["producer"]) == 0
    assert chain.meter(who["supply_meter"]).sequence == 0  # no reading was accepted
    for base, http, meter in ((api_p, producer, who["supply_meter"]),
                              (api_c, consumer, who["load_meter"]),
                              (api_c, rival, who["rival_meter"])):
        post(http, f"{base}/meters/{meter}/accept")
    wait_for(lambda: chain.meter(who["supply_meter"]).active
             and chain.meter(who["load_meter"]).active
             and chain.meter(who["rival_meter"]).active, timeout=20)
    assert chain.load_meter_of(who["consumer"]) == who["load_meter"]

    # 1. The producer's PV charges the battery: the bridge's readings mint tokens, first pending
    #    (mining stopped), then mined.
    post(producer, f"{api_p}/mining", {"action": "stop"})
    pending_reading = wait_for(lambda: [
        p for p in producer.get(f"{api_p}/wallet/pending", timeout=5).json()["pending"]
        if p["kind"] == "meter reading"], timeout=30)
    assert pending_reading
    post(producer, f"{api_p}/mining", {"action": "start"})
    wait_for(lambda: int(producer.get(f"{api_p}/wallet", timeout=5).json()["tokens_wh"]) >= 120,
             timeout=60, step=0.5)
    minted_before_sale = chain.token_balance(who["producer"])
    lot_wh = 100

    # 2. The producer sells 0.1 kWh at a start bid of 0.01 ETH/kWh for 20 s.
    post(producer, f"{api_p}/market/listings", {"energy": "0.1", "price": "0.01",
                                               "duration": "20", "duration_unit": "seconds"})
    lot_id = wait_for(lambda: chain.lot_count(), timeout=15)
    assert chain.token_balance(chain.deployment.market) == lot_wh

    # 3. The consumer and a second buyer bid against each other.
    bids = [(consumer, "0.01"), (rival, "0.02"), (consumer, "0.03")]
    for http, price in bids:
        post(http, f"{api_c}/market/listings/{lot_id}/bids", {"price": price})
        wanted = int(float(price) * 10**18)
        wait_for(lambda w=wanted: chain.lot(lot_id).price_per_kwh == w, timeout=15)
    price = 3 * 10**16
    lot = chain.lot(lot_id)
    assert lot.buyer == who["consumer"]
    rival_deposit = (lot_wh * 2 * 10**16 + 999) // 1000
    assert chain.credit_of(who["rival"]) == rival_deposit
    # Both servers show the highest bid and who made it.
    for base, http in ((api_p, producer), (api_c, consumer)):
        listings = http.get(f"{base}/market", timeout=5).json()["listings"]
        shown = [(item["highest_bid_wei"], item["bidder"]["address"])
                 for item in listings if item["id"] == lot_id]
        assert shown == [(str(price), who["consumer"])]

    # 4. After the timeout the producer's server finalizes: the highest bid wins, relays close.
    wait_for(lambda: chain.lot(lot_id).status == LotStatus.OPEN, timeout=60, step=0.5)
    wait_for(lambda: supply.relay_closed and load.relay_closed, timeout=20)

    # 5. The consumer's meter measures energy; the seller is paid per Wh from escrow.
    wait_for(lambda: chain.lot(lot_id).delivered_wh > 0, timeout=60, step=0.5)
    assert chain.lot(lot_id).delivered_wh < lot_wh
    assert chain.credit_of(who["producer"]) == chain.lot(lot_id).paid_wei > 0

    # 6. The consumer closes the connection: a request (relays open at once); the consumer's
    #    meter's next reading, forwarded by its server, settles the tail and closes the trade.
    trades = consumer.get(f"{api_c}/market", timeout=5).json()["trades"]
    assert [str(t["id"]) for t in trades] == [str(lot_id)]
    asked = post(consumer, f"{api_c}/market/trades/{lot_id}/close")
    assert "your meter's next reading settles the tail" in asked["message"]
    wait_for(lambda: chain.lot(lot_id).status == LotStatus.CLOSED, timeout=60, step=0.5)
    wait_for(lambda: not supply.relay_closed and not load.relay_closed, timeout=20)

    # 7. The books: every wei and every Wh where it belongs. The seller is paid for what was
    #    metered, or for the minimum charge if less was delivered.
    closed = chain.lot(lot_id)
    delivered, paid = closed.delivered_wh, closed.paid_wei
    deposit = (lot_wh * price + 999) // 1000
    assert paid == delivered * price // 1000
    charged = max(delivered, min(MIN_CHARGE_WH, lot_wh)) * price // 1000
    assert chain.credit_of(who["producer"]) == charged
    first_deposit = (lot_wh * 10**16 + 999) // 1000  # the consumer's own outbid first bid
    assert chain.credit_of(who["consumer"]) == first_deposit + deposit - charged
    assert chain.credit_of(who["rival"]) == rival_deposit
    market = chain.deployment.market
    assert chain.ether_balance(market) == charged + first_deposit + (deposit - charged) \
        + rival_deposit
    assert chain.token_balance(market) == 0
    minted = chain.meter(who["supply_meter"]).cumulative_wh - _baseline(chain, who["supply_meter"])
    assert chain.token_balance(who["producer"]) == minted - delivered
    w3 = _web3(chain.rpc_url)
    token = w3.eth.contract(address=chain.deployment.token,
                            abi=load_artifact("EnergyToken").abi)
    assert token.functions.totalSupply().call() == minted - delivered
    assert minted >= minted_before_sale
    # The meters signed every reading and paid for none: they hold no Ether.
    assert chain.ether_balance(who["supply_meter"]) == chain.ether_balance(who["load_meter"]) == 0

    # Withdrawals empty the market.
    for http, base in ((producer, api_p), (consumer, api_c), (rival, api_c)):
        post(http, f"{base}/wallet/withdraw")
    wait_for(lambda: chain.ether_balance(market) == 0, timeout=20)


def _web3(url: str) -> Web3:
    """The test's own connection to the node, to check the books."""
    return Web3(HTTPProvider(url, request_kwargs={"timeout": 10}))


def _baseline(chain: ChainClient, meter: str) -> int:
    """The meter's first (baseline) reading, from its ReadingRecorded events."""
    registry = _web3(chain.rpc_url).eth.contract(address=chain.deployment.registry,
                                                 abi=load_artifact("MeterRegistry").abi)
    events = registry.events.ReadingRecorded().get_logs(
        from_block=0, argument_filters={"meter": meter})
    first = min(events, key=lambda e: (e["blockNumber"], e["logIndex"]))
    assert first["args"]["deltaWh"] == 0
    return first["args"]["energyWh"]
