"""Page benchmark: the market page and its JSON with 10,000 lots on chain, on a managed anvil.

Builds a market on a fresh anvil (no development accounts): a producer lists LOTS lots, most of
which ended without bids (finalized, expired), OPEN_TRADES won by a consumer (open trades,
the oldest lots) and OPEN_LISTINGS still running. Then a fresh app (as `microgrid serve` builds
it) serves `GET /market/` and `GET /api/v1/market` to a logged-in consumer: the first request
(which seeds the open lots from the market's logs) and REPEAT more of each, p50/p95.

Writes bench/results/pages.json. Run with `make bench` (or `python -m bench.pages`);
MICROGRID_BENCH_LOTS sets the number of lots. `MarketBuilder` is also what
tests/web/test_flood.py floods the market with.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from dapp.bridge import SignedReading
from dapp.chain.anvil import ManagedAnvil
from dapp.chain.client import ChainClient
from dapp.chain.contracts import load_artifact
from dapp.chain.deploy import MarketParameters, deploy
from dapp.chain.transports import connect, rpc
from dapp.wallet.keystore import Keystore
from hardware.signing import sign_reading

RESULTS = Path(__file__).resolve().parent / "results" / "pages.json"
LOTS = int(os.environ.get("MICROGRID_BENCH_LOTS", "10000"))
OPEN_TRADES = 50
OPEN_LISTINGS = 150
REPEAT = 30
PASSPHRASE = "benchmark passphrase"  # noqa: S105 - throwaway test accounts
ETHER = 10**18
PRICE = 10**15  # 0.001 ETH per kWh
CHUNK = 500  # transactions per mined block
PARAMS = MarketParameters(min_duration=60, max_duration=7 * 86_400, stall_timeout=900,
                          close_grace=120, min_charge_wh=100)


class MarketBuilder:
    """A deployed market on an anvil at `url`, a keystore of people, and bulk transactions."""

    def __init__(self, url: str, data_dir: Path) -> None:
        self.url = url
        self.data_dir = data_dir
        self.w3 = connect(url, timeout=30)
        self.deployer = Account.create()
        self._fund(self.deployer.address)
        self.deployment = deploy(self.w3, self.deployer, PARAMS)
        self.client = ChainClient(url, data_dir / "setup", market=self.deployment.market)
        self.keystore = Keystore(data_dir / "data" / "keystore", scrypt_n=16)
        self.address = {role: self.keystore.create(PASSPHRASE, label=role)
                        for role in ("producer", "consumer", "finalizer")}
        for address in self.address.values():
            self._fund(address)
        self.market = self.w3.eth.contract(address=self.deployment.market,
                                           abi=load_artifact("EnergyMarket").abi)
        self.domain = self.client.reading_domain()

    def _fund(self, address: str) -> None:
        rpc(self.w3, "anvil_setBalance", [address, hex(1_000_000 * ETHER)])

    def account(self, role: str) -> LocalAccount:
        """The decrypted key of a role."""
        return self.keystore.unlock(self.address[role], PASSPHRASE)

    def meter(self, role: str, kind: str, energy_wh: int) -> None:
        """Offer `role` a meter of `kind`, accept it, and have it report `energy_wh` (signed)."""
        key = Account.create().key
        meter = Account.from_key(key).address
        self.client.wait(self.client.offer_meter(self.deployer, meter, self.address[role], kind,
                                                 65_535))
        self.client.wait(self.client.accept_meter(self.account(role), meter))
        for sequence, wh in ((1, 0), (2, energy_wh)):
            if sequence == 2:
                rpc(self.w3, "evm_increaseTime", [energy_wh * 3600 // 65_535 + 60])
            block = self.client.reading_block()
            signature = sign_reading(key, self.domain, wh, sequence, block)
            tx = self.client.submit_readings(
                self.deployer, [SignedReading(meter, wh, sequence, block, signature)])
            self.client.wait(tx)

    def bulk(self, role: str, calls: list[tuple[str, list[Any], int]]) -> None:
        """Send market calls (function, args, value) from `role`, CHUNK to a block; all succeed."""
        account = self.account(role)
        nonce = self.w3.eth.get_transaction_count(account.address, "pending")
        fee = 2 * self.w3.eth.gas_price + 1
        chain_id = self.w3.eth.chain_id
        rpc(self.w3, "evm_setAutomine", [False])
        try:
            for start in range(0, len(calls), CHUNK):
                hashes = []
                for function, args, value in calls[start:start + CHUNK]:
                    signed = account.sign_transaction({
                        "to": self.market.address, "value": value, "gas": 300_000,
                        "data": self.market.encode_abi(function, args=args),
                        "maxFeePerGas": fee, "maxPriorityFeePerGas": 1, "nonce": nonce,
                        "chainId": chain_id,
                    })
                    nonce += 1
                    hashes.append(self.w3.eth.send_raw_transaction(signed.raw_transaction))
                rpc(self.w3, "evm_mine", [])
                for tx_hash in (hashes[0], hashes[-1]):
                    receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
                    assert receipt["status"] == 1, f"{function} failed"
        finally:
            rpc(self.w3, "evm_setAutomine", [True])

    def advance(self, seconds: int) -> None:
        """Mine a block `seconds` later."""
        rpc(self.w3, "evm_increaseTime", [seconds])
        rpc(self.w3, "evm_mine", [])

    def app_config(self) -> dict[str, Any]:
        """Configuration of an app over this market (background tasks off, as in the tests)."""
        return {
            "TESTING": True, "RPC": self.url, "DATA_DIR": str(self.data_dir / "data"),
            "MARKET": self.deployment.market, "SECRET_KEY": "bench-only-secret", "KDF_N": 16,
            "START_BACKGROUND": False, "LOGIN_LIMIT_PER_ACCOUNT": 1000,
            "LOGIN_LIMIT_PER_CLIENT": 1000,
        }


def build(market: MarketBuilder, lots: int) -> dict[str, int]:
    """OPEN_TRADES won trades (the oldest lots), lots expired, OPEN_LISTINGS running."""
    ended = lots - OPEN_TRADES - OPEN_LISTINGS
    market.meter("producer", "supply", lots * 2)
    market.meter("consumer", "load", 0)
    first = market.client.lot_count() + 1
    # An hour each: listing them all takes a while of the node's (wall-clock) time.
    market.bulk("producer", [("list", [2, PRICE, 3600], 0)] * (OPEN_TRADES + ended))
    deposit = market.client.deposit_for(first, PRICE)
    market.bulk("consumer", [("bid", [first + i, PRICE], deposit) for i in range(OPEN_TRADES)])
    market.advance(3601)
    market.bulk("finalizer", [("finalize", [first + i], 0)
                              for i in range(OPEN_TRADES + ended)])
    market.bulk("producer", [("list", [2, PRICE, 7 * 86_400], 0)] * OPEN_LISTINGS)
    return {"lots": market.client.lot_count(), "open_trades": OPEN_TRADES,
            "open_listings": OPEN_LISTINGS, "expired": ended}


def timed(client: Any, url: str) -> float:
    """Seconds one GET takes (it must answer 200)."""
    start = time.perf_counter()
    response = client.get(url)
    elapsed = time.perf_counter() - start
    assert response.status_code == 200, (url, response.status_code)
    return elapsed


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 and p95 in milliseconds."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p95_ms": round(p95 * 1000, 1)}


def measure(market: MarketBuilder) -> dict[str, Any]:
    """Page times of a fresh app over the market."""
    from dapp.web import create_app

    app = create_app(market.app_config())
    client = app.test_client()
    token = client.get("/api/v1/session").get_json()["csrf_token"]
    login = client.post("/login", data={"csrf_token": token, "passphrase": PASSPHRASE,
                                        "address": market.address["consumer"]})
    assert login.status_code == 303
    first = timed(client, "/market/")
    snapshot = client.get("/api/v1/market").get_json()
    page = [timed(client, "/market/") for _ in range(REPEAT)]
    api = [timed(client, "/api/v1/market") for _ in range(REPEAT)]
    return {
        "first_page_ms": round(first * 1000, 1),
        "market_page": percentiles(page),
        "market_json": percentiles(api),
        "shown": {"listings": len(snapshot["listings"]), "trades": len(snapshot["trades"])},
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    """Build, measure, write bench/results/pages.json."""
    with tempfile.TemporaryDirectory() as tmp:
        node = ManagedAnvil(Path(tmp) / "node", port=free_port(), block_time=None,
                            state_interval=0, extra_args=("--gas-limit", "1000000000"))
        node.start()
        try:
            started = time.perf_counter()
            market = MarketBuilder(node.url, Path(tmp))
            chain = build(market, LOTS)
            setup = time.perf_counter() - started
            figures = measure(market)
        finally:
            node.stop()
    result = {"node": "anvil (managed, automine)", **chain,
              "setup_seconds": round(setup, 1), **figures, "repeat": REPEAT}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
