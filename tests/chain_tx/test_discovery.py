"""Deployment discovery: a second server finds the contracts with no file editing."""

from __future__ import annotations

import json

import pytest
from eth_account import Account
from eth_tester import EthereumTester
from web3 import EthereumTesterProvider, Web3

from dapp.chain import discovery
from dapp.chain.deploy import deploy
from dapp.chain.verify import DeploymentRejected
from dapp.errors import ChainError


@pytest.fixture
def tester() -> EthereumTester:
    """A fresh in-process chain."""
    return EthereumTester()


@pytest.fixture
def w3(tester) -> Web3:
    """web3 over it."""
    return Web3(EthereumTesterProvider(tester))


def test_discovers_the_only_deployment_by_its_event(w3, tester):
    deployer = Account.from_key(tester.backend.account_keys[0])
    dep = deploy(w3, deployer)
    found = discovery.discover(w3)
    assert (found.token, found.registry, found.market, found.operator) == (
        dep.token, dep.registry, dep.market, dep.operator
    )
    created = [
        w3.eth.get_transaction_receipt(tx)["contractAddress"]
        for tx in w3.eth.get_block(found.block)["transactions"]
    ]
    assert dep.market in created  # the block the listener starts from holds the market


def test_explicit_market_address_wins(w3, tester):
    deployer = Account.from_key(tester.backend.account_keys[0])
    first = deploy(w3, deployer)
    deploy(w3, deployer)
    found = discovery.resolve(w3, market=first.market)
    assert (found.token, found.registry) == (first.token, first.registry)


def test_empty_chain_says_what_to_do(w3):
    with pytest.raises(ChainError, match="microgrid deploy"):
        discovery.discover(w3)


def test_not_a_market_address_is_refused(w3, tester):
    with pytest.raises(DeploymentRejected, match="no contract"):
        discovery.from_market(w3, Account.create().address)


def test_cache_is_used_and_ignored_for_another_chain(w3, tester, tmp_path):
    deployer = Account.from_key(tester.backend.account_keys[0])
    dep = deploy(w3, deployer)
    cache = tmp_path / "deployment.json"
    assert discovery.resolve(w3, cache).market == dep.market
    assert json.loads(cache.read_text())["deployment"]["market"] == dep.market
    assert discovery.load_cached(w3, cache).market == dep.market
    other = Web3(EthereumTesterProvider(EthereumTester()))
    # A different chain (or a reset node) never reuses the cached addresses.
    other.eth.send_transaction({"from": other.eth.accounts[0], "to": other.eth.accounts[1],
                                "value": 1})
    assert discovery.load_cached(other, cache) is None
