"""Gas benchmark: one representative transaction of each kind, on the in-process chain.

Writes bench/results/gas.json with the gas used and the target for each operation.
Readings are signed by the meters' own keys (EIP-712) and carried by another account.
Run with `make bench`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_tester import EthereumTester
from web3 import EthereumTesterProvider, Web3
from web3.logs import DISCARD

from dapp.bridge.drivers import SignedReading
from dapp.chain.client import pack_readings
from dapp.chain.contracts import load_artifact
from dapp.chain.deploy import create_address
from hardware.signing import BlockRef

RESULTS = Path(__file__).resolve().parent / "results" / "gas.json"
TARGETS = {
    "supply_reading": 55_000,
    "load_reading": 60_000,
    "batch_reading": 25_000,
    "bid_outbid": 80_000,
    "finalize": 120_000,
}
PRICE = 10**15  # wei per kWh
BATCH = 20  # readings per batch: 20 supply meters of 20 households, steady state
# minDuration, maxDuration, minIncrementPerKWh, stallTimeout, closeGrace, minChargeWh
MARKET_RULES = [60, 7 * 86_400, 10**12, 900, 120, 100]


def deploy(w3: Web3, deployer: str) -> tuple[Any, Any, Any]:
    """Token, registry and market from `deployer`, wired through predicted addresses."""
    nonce = w3.eth.get_transaction_count(deployer)
    token_at, registry_at, market_at = (create_address(deployer, nonce + i) for i in range(3))
    plan = [
        ("EnergyToken", [registry_at, market_at]),
        ("MeterRegistry", [deployer, token_at, market_at]),
        ("EnergyMarket", [token_at, registry_at, *MARKET_RULES]),
    ]
    for name, args in plan:
        art = load_artifact(name)
        w3.eth.contract(abi=art.abi, bytecode=art.bytecode).constructor(*args).transact(
            {"from": deployer}
        )
    return tuple(
        w3.eth.contract(address=a, abi=load_artifact(n).abi)
        for a, (n, _) in zip((token_at, registry_at, market_at), plan, strict=True)
    )


def reading_signature(
    key: bytes, chain_id: int, registry: str, energy_wh: int, sequence: int, block: BlockRef
) -> bytes:
    """The meter's EIP-712 signature of a reading of `block` (the meter's side of
    hardware/PROTOCOL.md)."""
    meter = Account.from_key(key).address
    message = encode_typed_data(
        domain_data={
            "name": "MeterRegistry",
            "version": "1",
            "chainId": chain_id,
            "verifyingContract": registry,
        },
        message_types={
            "Reading": [
                {"name": "meter", "type": "address"},
                {"name": "energyWh", "type": "uint64"},
                {"name": "sequence", "type": "uint64"},
                {"name": "blockNumber", "type": "uint64"},
                {"name": "blockHash", "type": "bytes32"},
            ]
        },
        message_data={"meter": meter, "energyWh": energy_wh, "sequence": sequence,
                      "blockNumber": block.number, "blockHash": block.hash},
    )
    return bytes(Account.sign_message(message, key).signature)


def main() -> int:
    """Run the scenario, write the figures, and return 1 if a target is missed."""
    tester = EthereumTester()
    w3 = Web3(EthereumTesterProvider(tester))
    keys = tester.backend.account_keys
    operator, seller, buyer, rival, carrier = (Account.from_key(k).address for k in keys[:5])
    token, registry, market = deploy(w3, operator)
    chain_id = w3.eth.chain_id
    gas: dict[str, int] = {}
    clock = [w3.eth.get_block("latest")["timestamp"]]
    meter_keys = {
        name: Web3.keccak(text=f"bench meter {name}") for name in ("supply", "load")
    }
    meters = {name: Account.from_key(k).address for name, k in meter_keys.items()}
    sequences = dict.fromkeys(meters, 0)

    def advance(seconds: int) -> None:
        clock[0] += seconds
        tester.time_travel(clock[0])

    def send(name: str | None, fn: Any, sender: str, value: int = 0) -> dict:
        tx_hash = fn.transact({"from": sender, "value": value})
        receipt = w3.eth.get_transaction_receipt(tx_hash)
        assert receipt["status"] == 1, name
        if name:
            gas[name] = receipt["gasUsed"]
        return receipt

    def signed(key: bytes, energy_wh: int, sequence: int) -> SignedReading:
        meter = Account.from_key(key).address
        latest = w3.eth.get_block("latest")  # the meter signs the newest block
        block = BlockRef(int(latest["number"]), bytes(latest["hash"]))
        return SignedReading(meter, energy_wh, sequence, block, reading_signature(
            key, chain_id, registry.address, energy_wh, sequence, block
        ))

    def read(name: str | None, meter: str, energy_wh: int) -> None:
        sequences[meter] += 1
        r = signed(meter_keys[meter], energy_wh, sequences[meter])
        send(name, registry.functions.report(r.meter, r.energy_wh, r.sequence, r.block.number,
                                             r.signature), carrier)

    def install(meter: str, owner: str, kind: int) -> None:
        send(None, registry.functions.offerMeter(meters[meter], owner, kind, 5000), operator)
        send(None, registry.functions.acceptMeter(meters[meter]), owner)

    install("supply", seller, 0)
    install("load", buyer, 1)
    rival_meter = Account.from_key(Web3.keccak(text="bench meter rival")).address
    send(None, registry.functions.offerMeter(rival_meter, rival, 1, 5000), operator)
    send(None, registry.functions.acceptMeter(rival_meter), rival)
    # Supply: baseline, a first mint (fresh balance), then a steady-state mint.
    read(None, "supply", 1000)
    advance(3600)
    read(None, "supply", 4000)
    advance(60)
    read("supply_reading", "supply", 4050)

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
    read(None, "load", 500)
    advance(60)
    read(None, "load", 520)
    advance(60)
    read("load_reading", "load", 540)
    advance(60)
    send("close_request", market.functions.closeConnection(lot), buyer)
    advance(5)
    read("close_connection", "load", 540)  # the heartbeat that settles the tail and closes
    send("withdraw", market.functions.withdraw(), rival)
    assert token.functions.balanceOf(market.address).call() == 0

    # A gateway's batch: 20 supply meters of 20 households, each past its first mint.
    batch_keys = [Web3.keccak(text=f"bench batch meter {i}") for i in range(BATCH)]
    owners = []
    for i in range(BATCH):  # households of their own, unlocked on the in-process node
        owner_key = Web3.keccak(text=f"bench household {i}")
        owners.append(tester.add_account(owner_key.hex()))
    for key, owner in zip(batch_keys, owners, strict=True):
        meter = Account.from_key(key).address
        send(None, registry.functions.offerMeter(meter, owner, 0, 5000), operator)
        w3.eth.send_transaction({"from": operator, "to": owner, "value": 10**17})
        send(None, registry.functions.acceptMeter(meter), owner)
    for energy_wh, sequence in ((1000, 1), (1100, 2)):
        advance(600)
        send(None, registry.functions.reportBatch(
            pack_readings([signed(k, energy_wh, sequence) for k in batch_keys])
        ), carrier)
    advance(600)
    receipt = send(None, registry.functions.reportBatch(
        pack_readings([signed(k, 1200, 3) for k in batch_keys])
    ), carrier)
    recorded = registry.events.ReadingRecorded().process_receipt(receipt, errors=DISCARD)
    assert len(recorded) == BATCH
    gas["batch_reading"] = receipt["gasUsed"] // BATCH

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
