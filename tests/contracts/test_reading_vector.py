"""The signed-reading test vector of hardware/PROTOCOL.md, checked on chain.

The registry is deployed exactly where the vector says (chain id 31337, the first contract of
the well-known development account of anvil and hardhat, 0x5FbDB...0aa3), so the contract's own
digest runs on the vector's bytes. The vector's block is made up (no chain has that hash at block
1000), so what the registry accepts is the vector key's reading of a real recent block.
"""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_tester import EthereumTester, PyEVMBackend
from web3 import EthereumTesterProvider, Web3

from dapp.chain.contracts import load_artifact
from dapp.chain.deploy import create_address
from tests.contracts.conftest import PARAMS, reading_typed_data

VECTOR_KEY = "0x" + "11" * 32  # test vector only, never a real meter
VECTOR_CHAIN_ID = 31337
VECTOR_REGISTRY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
VECTOR_ENERGY_WH = 12345
VECTOR_SEQUENCE = 42
VECTOR_BLOCK_NUMBER = 1000
VECTOR_BLOCK_HASH = bytes.fromhex("a5" * 32)
# The public development mnemonic of anvil and hardhat: account 0's first contract is the above.
DEV_MNEMONIC = "test test test test test test test test test test test junk"


@pytest.fixture(scope="module")
def vector_chain() -> tuple[Web3, list[str]]:
    """A fresh in-process chain with id 31337 whose account 0 is the development account."""
    # hardhat's and anvil's derivation path ends in /0/{index}; eth-tester appends the index.
    backend = PyEVMBackend.from_mnemonic(DEV_MNEMONIC, num_accounts=3, hd_path="m/44'/60'/0'/0")
    # The EVM (CHAINID, the EIP-712 domain) and eth-tester's signing of the unlocked accounts'
    # transactions use this id. (web3's eth_chainId answer for eth-tester is fixed and not asked.)
    backend.chain.chain_id = VECTOR_CHAIN_ID
    tester = EthereumTester(backend)
    w3 = Web3(EthereumTesterProvider(tester))
    return w3, [Account.from_key(k).address for k in backend.account_keys]


def test_the_vector_signature_is_what_eth_account_makes():
    meter = Account.from_key(VECTOR_KEY).address
    message = reading_typed_data(
        meter, VECTOR_ENERGY_WH, VECTOR_SEQUENCE, VECTOR_CHAIN_ID, VECTOR_REGISTRY,
        VECTOR_BLOCK_NUMBER, VECTOR_BLOCK_HASH,
    )
    signed = Account.sign_message(message, VECTOR_KEY)
    assert meter == "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A"
    assert signed.message_hash.hex() == (
        "565e0a85d915e2909b0376a371b40435b04c4b5d2f58f9030580957d669fcc30"
    )
    assert signed.signature.hex() == (
        "818b1733d65b5d53941b9388902cb3ecadc9a5299c3252dc7d73f6f2d67b9f01"
        "3f98dc258a221ee8d69c922470818dbfe85df07040d905f29ae980be0357bdd31c"
    )
    assert signed.v == 28
    # Low s, as hardware/PROTOCOL.md requires (secp256k1 order / 2).
    assert signed.s <= 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


def test_the_registry_at_the_vector_address_accepts_the_vector(vector_chain):
    w3, (operator, owner, _) = vector_chain
    # Registry first (nonce 0), then token and market, wired through predicted addresses.
    registry_addr, token_addr, market_addr = (create_address(operator, n) for n in range(3))
    assert registry_addr == VECTOR_REGISTRY
    plan = [
        ("MeterRegistry", [operator, token_addr, market_addr]),
        ("EnergyToken", [registry_addr, market_addr]),
        ("EnergyMarket", [token_addr, registry_addr, *PARAMS.args()]),
    ]
    for name, args in plan:
        art = load_artifact(name)
        w3.eth.contract(abi=art.abi, bytecode=art.bytecode).constructor(*args).transact(
            {"from": operator}
        )
    registry = w3.eth.contract(address=registry_addr, abi=load_artifact("MeterRegistry").abi)
    token = w3.eth.contract(address=token_addr, abi=load_artifact("EnergyToken").abi)
    meter = Account.from_key(VECTOR_KEY).address
    vector = reading_typed_data(
        meter, VECTOR_ENERGY_WH, VECTOR_SEQUENCE, VECTOR_CHAIN_ID, VECTOR_REGISTRY,
        VECTOR_BLOCK_NUMBER, VECTOR_BLOCK_HASH,
    )
    digest = registry.functions.readingDigest(
        meter, VECTOR_ENERGY_WH, VECTOR_SEQUENCE, VECTOR_BLOCK_NUMBER, VECTOR_BLOCK_HASH
    ).call()
    assert digest == bytes(Account.sign_message(vector, VECTOR_KEY).message_hash)
    domain = registry.functions.eip712Domain().call()  # the chain id as the EVM sees it
    assert domain[1:5] == ["MeterRegistry", "1", VECTOR_CHAIN_ID, VECTOR_REGISTRY]

    registry.functions.offerMeter(meter, owner, 0, 5_000).transact({"from": operator})
    registry.functions.acceptMeter(meter).transact({"from": owner})
    latest = w3.eth.get_block("latest")
    message = reading_typed_data(
        meter, VECTOR_ENERGY_WH, VECTOR_SEQUENCE, VECTOR_CHAIN_ID, VECTOR_REGISTRY,
        latest["number"], bytes(latest["hash"]),
    )
    signed = Account.sign_message(message, VECTOR_KEY)
    tx = registry.functions.report(
        meter, VECTOR_ENERGY_WH, VECTOR_SEQUENCE, latest["number"], bytes(signed.signature)
    ).transact({"from": operator})
    receipt = w3.eth.get_transaction_receipt(tx)
    assert receipt["status"] == 1
    (log,) = registry.events.ReadingRecorded().process_receipt(receipt)
    assert dict(log["args"]) == {
        "meter": meter, "energyWh": VECTOR_ENERGY_WH, "sequence": VECTOR_SEQUENCE, "deltaWh": 0
    }
    assert registry.functions.meterOf(meter).call()[4:6] == (VECTOR_ENERGY_WH, VECTOR_SEQUENCE)
    assert token.functions.totalSupply().call() == 0  # the baseline mints nothing
