"""Gas benchmark: one representative transaction of each kind, on the in-process chain.

Writes bench/results/gas.json with the gas used and the target for each operation.
Run with `make bench`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from eth_account import Account
from eth_tester import EthereumTester
from web3 import EthereumTesterProvider, Web3

from dapp.chain.contracts import load_artifact
from dapp.chain.deploy import MarketParameters, deploy

RESULTS = Path(__file__).resolve().parent / "results" / "gas.json"
TARGETS = {
    "supply_reading": 60_000,
    "load_reading": 60_000,
    "bid_outbid": 80_000,
    "finalize": 120_000,
}
PRICE = 10**15  # wei per kWh


def main() -> int:
    """Run the scenario, write the figures, and return 1 if a target is missed."""
    tester = EthereumTester()
    w3 = Web3(EthereumTesterProvider(tester))
    keys = tester.backend.account_keys
    operator, seller, buyer, rival, supply_meter, load_meter = (
        Account.from_key(k).address for k in keys[:6]
    )
    dep = deploy(w3, Account.from_key(keys[0]), MarketParameters(min_duration=60))
    token = w3.eth.contract(address=dep.token, abi=load_artifact("EnergyToken").abi)
    registry = w3.eth.contract(address=dep.registry, abi=load_artifact("MeterRegistry").abi)
    market = w3.eth.contract(address=dep.market, abi=load_artifact("EnergyMarket").abi)
    gas: dict[str, int] = {}
    clock = [w3.eth.get_block("latest")["timestamp"]]

    def advance(seconds: int) -> None:
        clock[0] += seconds
        tester.time_travel(clock[0])

    def send(name: str | None, fn, sender: str, value: int = 0) -> dict:
        tx_hash = fn.transact({"from": sender, "value": value})
        receipt = w3.eth.get_transaction_receipt(tx_hash)
        assert receipt["status"] == 1, name
        if name:
            gas[name] = receipt["gasUsed"]
        return receipt

    send(None, registry.functions.registerMeter(supply_meter, seller, 0, 5000), operator)
    send(None, registry.functions.registerMeter(load_meter, buyer, 1, 5000), operator)
    # Supply: baseline, a first mint (fresh balance), then a steady-state mint.
    send(None, registry.functions.report(1000), supply_meter)
    advance(3600)
    send(None, registry.functions.report(4000), supply_meter)
    advance(60)
    send("supply_reading", registry.functions.report(4050), supply_meter)

    send("list", market.functions.list(2000, PRICE, 600), seller)
    lot = 1
    dep_first = market.functions.depositFor(lot, PRICE).call()
    send("bid_first", market.functions.bid(lot, PRICE), buyer, dep_first)
    send(None, market.functions.bid(lot, PRICE + 2 * 10**12), rival,
         market.functions.depositFor(lot, PRICE + 2 * 10**12).call())
    higher = PRICE + 4 * 10**12
    send("bid_outbid", market.functions.bid(lot, higher), buyer,
         market.functions.depositFor(lot, higher).call())
    advance(601)
    send("finalize", market.functions.finalize(lot), rival)

    # Load: baseline, a first settlement, then a steady-state Wh-batch.
    send(None, registry.functions.report(500), load_meter)
    advance(60)
    send(None, registry.functions.report(520), load_meter)
    advance(60)
    send("load_reading", registry.functions.report(540), load_meter)
    advance(60)
    send("close_connection", market.functions.closeConnection(lot), buyer)
    send("withdraw", market.functions.withdraw(), rival)
    assert token.functions.balanceOf(dep.market).call() == 0

    report = {
        "chain": "eth-tester (py-evm), in-process",
        "operations": {
            name: {"gas": used, "target": TARGETS.get(name)} for name, used in gas.items()
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    missed = [n for n, t in TARGETS.items() if gas[n] > t]
    for name, used in gas.items():
        target = TARGETS.get(name)
        verdict = "MISSED" if name in missed else "ok"
        mark = "" if target is None else f" (target {target:,d}: {verdict})"
        print(f"{name:18s} {used:>8,d}{mark}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
