"""Fixtures for the node-layer suites: real anvil processes on free ports, in-process chains.

Every anvil runs from a fresh temporary data directory on a free 127.0.0.1 port and is stopped
by the fixture's finalizer. Test accounts are fresh keys funded with `anvil_setBalance`, so no
private key is written down here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3

from dapp.chain.anvil import ManagedAnvil
from dapp.chain.inprocess import InProcessChain
from dapp.chain.transports import connect
from tests.support import free_port, wait_for  # noqa: F401 - re-exported

ETHER = 10**18


def fund(w3: Web3, wei: int = 100 * ETHER) -> LocalAccount:
    """A fresh account given `wei` with anvil_setBalance."""
    account = Account.create()
    response = w3.provider.make_request("anvil_setBalance", [account.address, hex(wei)])
    assert "error" not in response, response
    return account


def transfer(
    w3: Web3, sender: LocalAccount, to: str, value: int, nonce: int | None = None
) -> HexBytes:
    """Sign a plain Ether transfer locally and send it raw; return its hash."""
    if nonce is None:
        nonce = w3.eth.get_transaction_count(sender.address, "pending")
    tx = {
        "to": to,
        "value": value,
        "gas": 21_000,
        "maxFeePerGas": 50 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "nonce": nonce,
        "chainId": w3.eth.chain_id,
    }
    return w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction)


def receipt_or_none(w3: Web3, tx_hash: HexBytes) -> Any:
    """The receipt, or None while the transaction is not mined."""
    from web3.exceptions import TransactionNotFound

    try:
        return w3.eth.get_transaction_receipt(tx_hash)
    except TransactionNotFound:
        return None


def pool_hashes(w3: Web3) -> set[str]:
    """Hashes in txpool_content's pending section (lower-case hex)."""
    content = w3.provider.make_request("txpool_content", [])["result"]
    return {
        tx["hash"].lower()
        for by_nonce in content["pending"].values()
        for tx in by_nonce.values()
    }


@pytest.fixture
def anvil_factory(tmp_path: Path) -> Iterator[Callable[..., ManagedAnvil]]:
    """Make ManagedAnvil objects (not started) on free ports; all are stopped at teardown."""
    made: list[ManagedAnvil] = []

    def make(data_dir: Path | None = None, **kwargs: Any) -> ManagedAnvil:
        kwargs.setdefault("port", free_port())
        node = ManagedAnvil(data_dir or tmp_path / f"data{len(made)}", **kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop(timeout=5)


@pytest.fixture
def anvil(anvil_factory: Callable[..., ManagedAnvil]) -> ManagedAnvil:
    """A running anvil that mines each transaction at once (automine)."""
    node = anvil_factory(block_time=None, chain_id=4242)
    node.start()
    return node


@pytest.fixture
def anvil_w3(anvil: ManagedAnvil) -> Web3:
    """A Web3 on the running anvil over HTTP."""
    return connect(anvil.url, timeout=5)


@pytest.fixture
def inprocess() -> Iterator[InProcessChain]:
    """An in-process chain with mining stopped (tests start it when they need blocks)."""
    chain = InProcessChain(block_time=0.3, mining=False)
    yield chain
    chain.close()
