"""Deploy and wire the three contracts: token, meter registry and market."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import rlp
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_canonical_address, to_checksum_address
from web3 import Web3

from dapp.chain.contracts import load_artifact
from dapp.chain.tx import TxSender
from dapp.errors import ChainError


@dataclass(frozen=True)
class MarketParameters:
    """Deployment-time market rules (seconds and wei per kWh)."""

    min_duration: int = 60
    max_duration: int = 7 * 24 * 3600
    min_increment_per_kwh: int = 10**12
    # A delivering trade whose buyer's load meter is silent this long is stalled: its seller's
    # export relay opens and the seller may close it, charging the most the meter could draw.
    stall_timeout: int = 15 * 60
    # After the buyer asks to close, how long its next reading may take to settle the tail.
    close_grace: int = 5 * 60
    # What winning a lot costs at least, in Wh of the lot, even if the winner takes nothing.
    min_charge_wh: int = 100


@dataclass(frozen=True)
class Deployment:
    """Addresses of a deployed, wired contract set."""

    token: str
    registry: str
    market: str
    operator: str
    block: int

    def as_dict(self) -> dict[str, object]:
        """Plain dict, e.g. for JSON."""
        return asdict(self)


def create_address(sender: str, nonce: int) -> str:
    """Address of the contract `sender` creates with transaction `nonce` (CREATE)."""
    encoded = rlp.encode([to_canonical_address(sender), nonce])
    return to_checksum_address(keccak(encoded)[12:])


def deploy(
    w3: Web3,
    deployer: LocalAccount,
    params: MarketParameters | None = None,
    operator: str | None = None,
) -> Deployment:
    """Deploy token, registry and market from `deployer` and return their addresses.

    The three contracts reference each other through immutables, so their addresses are
    predicted from the deployer's next three nonces and checked after deployment.
    """
    params = params or MarketParameters()
    operator = to_checksum_address(operator or deployer.address)
    nonce = w3.eth.get_transaction_count(deployer.address, "pending")
    token_addr, registry_addr, market_addr = (
        create_address(deployer.address, nonce + i) for i in range(3)
    )
    plan = [
        ("EnergyToken", [registry_addr, market_addr], token_addr),
        ("MeterRegistry", [operator, token_addr, market_addr], registry_addr),
        (
            "EnergyMarket",
            [
                token_addr,
                registry_addr,
                params.min_duration,
                params.max_duration,
                params.min_increment_per_kwh,
                params.stall_timeout,
                params.close_grace,
                params.min_charge_wh,
            ],
            market_addr,
        ),
    ]
    sender = TxSender(w3)  # signs locally, picks fees and the next nonces like every other tx
    block = 0
    for name, args, expected in plan:
        art = load_artifact(name)
        factory = w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        data = factory.constructor(*args).data_in_transaction
        receipt = sender.transact(deployer, {"data": data}, f"deploy {name}", timeout=120)
        if to_checksum_address(receipt["contractAddress"]) != expected:
            raise ChainError(
                f"{name} landed at {receipt['contractAddress']}, expected {expected}: "
                "the deployer account sent another transaction during deployment"
            )
        block = block or receipt["blockNumber"]
    return Deployment(token_addr, registry_addr, market_addr, operator, block)
