"""Fixtures for the contract suites: one in-process chain per session, snapshot/revert per test.

Accounts are named by role. `Chain.send` signs nothing: the in-process chain's accounts are
unlocked, which is fine for contract tests (the application always signs locally).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_tester import EthereumTester
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract

from dapp.chain.contracts import decode_revert, load_artifact, revert_data_from_exception
from dapp.chain.deploy import Deployment, create_address
from dapp.errors import ContractReverted


@dataclass(frozen=True)
class MarketRules:
    """The market's deployment parameters (seconds, wei per kWh, Wh)."""

    min_duration: int
    max_duration: int
    min_increment_per_kwh: int
    stall_timeout: int
    close_grace: int
    min_charge_wh: int

    def args(self) -> list[int]:
        """The constructor arguments after the token and registry addresses."""
        return [
            self.min_duration, self.max_duration, self.min_increment_per_kwh,
            self.stall_timeout, self.close_grace, self.min_charge_wh,
        ]


PARAMS = MarketRules(
    min_duration=60,
    max_duration=86_400,
    min_increment_per_kwh=10**12,
    stall_timeout=900,
    close_grace=120,
    min_charge_wh=100,
)
PRICE = 10**15  # a convenient price: 0.001 ether per kWh


@dataclass
class Event:
    """A decoded log: which contract emitted it, the event name and its arguments."""

    contract: str
    name: str
    args: dict[str, Any]


class Chain:
    """The in-process chain with the deployed contracts and small helpers for tests."""

    def __init__(self) -> None:
        self.tester = EthereumTester()
        self.w3 = Web3(EthereumTesterProvider(self.tester))
        self.keys = self.tester.backend.account_keys
        self.addresses = [Account.from_key(k).address for k in self.keys]
        self._keys = {a: k for a, k in zip(self.addresses, self.keys, strict=True)}
        # Carries signed readings to the chain: any account may, the meters need no Ether.
        self.carrier = self.addresses[9]
        self.token, self.registry, self.market = deploy_market(self.w3, self.addresses[0], PARAMS)
        # The deployment as the app's chain layer knows it (the listener suites use it); each
        # of the three creations was mined in a block of its own, the token's first.
        self.deployment = Deployment(self.token.address, self.registry.address,
                                     self.market.address, self.addresses[0],
                                     self.w3.eth.block_number - 2)
        self._by_address = {
            self.token.address: ("EnergyToken", self.token),
            self.registry.address: ("MeterRegistry", self.registry),
            self.market.address: ("EnergyMarket", self.market),
        }

    def new_key(self, seed: str) -> str:
        """A fresh key (no Ether, unknown to the node) that `sign_reading` can sign with."""
        account = Account.from_key(Web3.keccak(text=seed))
        self._keys[account.address] = account.key
        return account.address

    def sign_reading(
        self,
        meter: str,
        energy_wh: int,
        sequence: int,
        block_number: int | None = None,
        block_hash: bytes | None = None,
        chain_id: int | None = None,
        registry: str | None = None,
        key: bytes | None = None,
    ) -> bytes:
        """`meter`'s EIP-712 signature of a reading (r || s || v), as the meter would make it.

        The reading signs block `block_number` (default: the latest) with `block_hash` (default:
        that block's real hash). `chain_id`, `registry` and `key` override the domain and the
        signing key, to forge.
        """
        if block_number is None:
            block_number = self.w3.eth.block_number
        if block_hash is None:
            block_hash = self.block_hash(block_number)
        message = reading_typed_data(
            meter,
            energy_wh,
            sequence,
            self.w3.eth.chain_id if chain_id is None else chain_id,
            registry or self.registry.address,
            block_number,
            block_hash,
        )
        signed = Account.sign_message(message, key or self._keys[meter])
        return bytes(signed.signature)

    def block_hash(self, number: int) -> bytes:
        """The hash of block `number` (which must exist)."""
        return bytes(self.w3.eth.get_block(number)["hash"])

    def mine(self, blocks: int) -> None:
        """Mine `blocks` empty blocks, one second apart."""
        self.tester.mine_blocks(blocks)

    def _contract(self, name: str, address: str) -> Contract:
        return self.w3.eth.contract(address=address, abi=load_artifact(name).abi)

    def deploy_contract(self, name: str, *args: Any, sender: str | None = None) -> Contract:
        """Deploy an extra (e.g. attack) contract from contracts/build/test."""
        art = load_artifact(name)
        factory = self.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        tx = factory.constructor(*args).transact({"from": sender or self.addresses[0]})
        receipt = self.w3.eth.get_transaction_receipt(tx)
        return self.w3.eth.contract(address=receipt["contractAddress"], abi=art.abi)

    def send(self, fn: Any, sender: str, value: int = 0) -> dict:
        """Send a contract call as a transaction; return the receipt (raises on revert)."""
        tx = {"from": sender, "value": value}
        try:
            # A dry run on the pending block finds a revert (and its custom error); sending with
            # a fixed gas limit then skips py-evm's gas estimation, which costs ~12 executions.
            fn.call(tx, block_identifier="pending")
            tx_hash = fn.transact({**tx, "gas": 5_000_000})
        except Exception as exc:  # noqa: BLE001 - turned into the custom error below
            data = revert_data_from_exception(exc)
            if data is None:
                raise
            raise decode_revert(data) from exc
        receipt = self.w3.eth.get_transaction_receipt(tx_hash)
        assert receipt["status"] == 1
        return receipt

    def events(self, receipt: dict) -> list[Event]:
        """Decode every log of `receipt` emitted by the three contracts, in order."""
        out = []
        for log in receipt["logs"]:
            entry = self._by_address.get(log["address"])
            if entry is None:
                continue
            name, contract = entry
            for event in contract.events:
                try:
                    decoded = event().process_log(log)
                except Exception:  # noqa: BLE001,S112 - not this event's signature
                    continue
                out.append(Event(name, decoded["event"], dict(decoded["args"])))
                break
        return out

    def now(self) -> int:
        """Timestamp of the latest block."""
        return self.w3.eth.get_block("latest")["timestamp"]

    def advance(self, seconds: int) -> None:
        """Move the chain's clock forward: the next block is mined `seconds` later."""
        self.tester.time_travel(self.now() + seconds)

    def balance(self, address: str) -> int:
        """Ether balance in wei."""
        return self.w3.eth.get_balance(address)


def deploy_market(w3: Web3, deployer: str, rules: MarketRules) -> tuple[Contract, ...]:
    """Deploy token, registry and market from `deployer`, wired through predicted addresses."""
    nonce = w3.eth.get_transaction_count(deployer)
    token_at, registry_at, market_at = (create_address(deployer, nonce + i) for i in range(3))
    plan = [
        ("EnergyToken", [registry_at, market_at], token_at),
        ("MeterRegistry", [deployer, token_at, market_at], registry_at),
        ("EnergyMarket", [token_at, registry_at, *rules.args()], market_at),
    ]
    contracts = []
    for name, args, expected in plan:
        art = load_artifact(name)
        factory = w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        tx_hash = factory.constructor(*args).transact({"from": deployer})
        assert w3.eth.get_transaction_receipt(tx_hash)["contractAddress"] == expected
        contracts.append(w3.eth.contract(address=expected, abi=art.abi))
    return tuple(contracts)


def reading_typed_data(
    meter: str,
    energy_wh: int,
    sequence: int,
    chain_id: int,
    registry: str,
    block_number: int,
    block_hash: bytes,
) -> Any:
    """A reading's signable message (hardware/PROTOCOL.md: domain MeterRegistry/1, Reading)."""
    return encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "Reading": [
                    {"name": "meter", "type": "address"},
                    {"name": "energyWh", "type": "uint64"},
                    {"name": "sequence", "type": "uint64"},
                    {"name": "blockNumber", "type": "uint64"},
                    {"name": "blockHash", "type": "bytes32"},
                ],
            },
            "primaryType": "Reading",
            "domain": {
                "name": "MeterRegistry",
                "version": "1",
                "chainId": chain_id,
                "verifyingContract": registry,
            },
            "message": {
                "meter": meter,
                "energyWh": energy_wh,
                "sequence": sequence,
                "blockNumber": block_number,
                "blockHash": block_hash,
            },
        }
    )


@pytest.fixture(scope="session")
def chain_session() -> Chain:
    """The in-process chain, deployed once per test session."""
    return Chain()


@pytest.fixture
def chain(chain_session: Chain) -> Iterator[Chain]:
    """The chain, reverted to its deployed state after each test.

    After a revert, eth-tester stamps new blocks with max(wall clock, parent + 1); moving the
    chain's clock a day ahead of the wall clock keeps `advance` exact for the whole test.
    """
    snapshot = chain_session.tester.take_snapshot()
    chain_session.advance(24 * 3600)
    yield chain_session
    chain_session.tester.revert_to_snapshot(snapshot)


@pytest.fixture
def operator(chain: Chain) -> str:
    """The grid operator (deployer, holds OPERATOR_ROLE)."""
    return chain.addresses[0]


@pytest.fixture
def seller(chain: Chain) -> str:
    """A producer who sells energy."""
    return chain.addresses[1]


@pytest.fixture
def buyer(chain: Chain) -> str:
    """A consumer who buys energy."""
    return chain.addresses[2]


@pytest.fixture
def rival(chain: Chain) -> str:
    """A second bidder."""
    return chain.addresses[3]


@pytest.fixture
def supply_meter(chain: Chain) -> str:
    """The seller's supply meter's device key."""
    return chain.addresses[4]


@pytest.fixture
def load_meter(chain: Chain) -> str:
    """The buyer's load meter's device key."""
    return chain.addresses[5]


@pytest.fixture
def stranger(chain: Chain) -> str:
    """Someone with no role at all."""
    return chain.addresses[6]


@contextlib.contextmanager
def reverts(name: str, *args: Any) -> Iterator[list[ContractReverted]]:
    """Expect a revert with custom error `name` (and, if given, exactly `args`)."""
    caught: list[ContractReverted] = []
    with pytest.raises(ContractReverted) as info:
        yield caught
    caught.append(info.value)
    assert info.value.name == name, f"expected {name}, got {info.value}"
    if args:
        assert tuple(info.value.args_) == tuple(args), f"expected {name}{args}, got {info.value}"
