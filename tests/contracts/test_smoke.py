"""Smoke test of the fixtures: the deployment is wired as the deploy script promises."""

from tests.contracts.conftest import Chain


def test_contracts_reference_each_other(chain: Chain):
    assert chain.token.functions.registry().call() == chain.registry.address
    assert chain.token.functions.market().call() == chain.market.address
    assert chain.registry.functions.market().call() == chain.market.address
    assert chain.market.functions.parameters().call()[:2] == [
        chain.token.address, chain.registry.address
    ]
    assert chain.token.functions.decimals().call() == 3
