"""Discovery on a chain where someone else deployed contracts too.

Anyone on the chain may deploy: an honest copy with themselves as operator, a market with altered
code, or a market that claims the real token and registry. A joining server takes a deployment
only if all three contracts are the committed code and wired to each other, and with more than
one such deployment it refuses and lists them until told which one (--market / --operator).
"""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_tester import EthereumTester
from web3 import EthereumTesterProvider, Web3

from dapp.chain import discovery
from dapp.chain.contracts import load_artifact
from dapp.chain.deploy import Deployment, MarketParameters, create_address, deploy
from dapp.chain.tx import TxSender
from dapp.chain.verify import DeploymentRejected
from dapp.errors import ChainError

CBOR_IPFS = "a264697066735822"  # the metadata trailer solc appends to the runtime code


@pytest.fixture
def tester() -> EthereumTester:
    """A fresh in-process chain."""
    return EthereumTester()


@pytest.fixture
def w3(tester) -> Web3:
    """web3 over it."""
    return Web3(EthereumTesterProvider(tester))


@pytest.fixture
def operator(tester):
    """The grid operator, who deploys the real contracts."""
    return Account.from_key(tester.backend.account_keys[0])


@pytest.fixture
def attacker(tester):
    """A neighbour with an account on the same chain."""
    return Account.from_key(tester.backend.account_keys[1])


def same(found: Deployment, expected: Deployment) -> bool:
    """The same contracts and operator (the block is the market's, not the first contract's)."""
    return (found.token, found.registry, found.market, found.operator) == (
        expected.token, expected.registry, expected.market, expected.operator)


def tampered(bytecode: str) -> str:
    """The creation code with one byte of the runtime's metadata hash changed.

    The constructor still runs (and the market still emits MarketDeployed); only the code that
    stays on the chain differs from the artifact.
    """
    at = bytecode.rindex(CBOR_IPFS) + len(CBOR_IPFS) + 10
    flipped = "0" if bytecode[at] != "0" else "1"
    return bytecode[:at] + flipped + bytecode[at + 1:]


def deploy_with(w3: Web3, deployer, tamper: str | None = None,
                token: str | None = None, registry: str | None = None,
                named_operator: str | None = None) -> Deployment:
    """Deploy like `microgrid deploy`, optionally altering one contract's code.

    With `token`/`registry` given, only a market is deployed, claiming those contracts. With
    `named_operator`, the registry names that account its operator instead of the deployer.
    """
    params = MarketParameters()
    nonce = w3.eth.get_transaction_count(deployer.address, "pending")
    if token and registry:
        plan = [("EnergyMarket", [token, registry, params.min_duration, params.max_duration,
                                  params.min_increment_per_kwh, params.stall_timeout,
                                  params.close_grace, params.min_charge_wh])]
        market = create_address(deployer.address, nonce)
    else:
        token, registry, market = (create_address(deployer.address, nonce + i) for i in range(3))
        plan = [
            ("EnergyToken", [registry, market]),
            ("MeterRegistry", [named_operator or deployer.address, token, market]),
            ("EnergyMarket", [token, registry, params.min_duration, params.max_duration,
                              params.min_increment_per_kwh, params.stall_timeout,
                                  params.close_grace, params.min_charge_wh]),
        ]
    sender = TxSender(w3)
    block = 0
    for name, args in plan:
        art = load_artifact(name)
        code = tampered(art.bytecode) if name == tamper else art.bytecode
        data = w3.eth.contract(abi=art.abi, bytecode=code).constructor(*args).data_in_transaction
        receipt = sender.transact(deployer, {"data": data}, f"deploy {name}", timeout=30)
        block = receipt["blockNumber"]
    return Deployment(token, registry, market, deployer.address, block)


def test_an_honest_copy_by_someone_else_makes_discovery_refuse_and_list_both(
        w3, operator, attacker, tmp_path):
    real = deploy(w3, operator)
    copy = deploy(w3, attacker)
    with pytest.raises(discovery.AmbiguousDeployment) as refused:
        discovery.resolve(w3, tmp_path / "deployment.json")
    message = str(refused.value)
    assert "2 deployments" in message and "--market" in message and "--operator" in message
    for dep in (real, copy):
        assert f"market {dep.market} (operator {dep.operator}, deployed in block" in message
    assert {d.market for d in refused.value.candidates} == {real.market, copy.market}
    assert not (tmp_path / "deployment.json").exists()  # nothing chosen, nothing cached
    # Told which one, it takes exactly that one (and caches it).
    assert same(discovery.resolve(w3, tmp_path / "a.json", market=real.market), real)
    assert same(discovery.resolve(w3, tmp_path / "b.json", operator=operator.address), real)
    assert same(discovery.resolve(w3, tmp_path / "c.json", operator=attacker.address), copy)
    assert same(discovery.resolve(w3, tmp_path / "b.json"), real)  # from the cache
    with pytest.raises(DeploymentRejected, match="not operated by"):
        discovery.resolve(w3, market=copy.market, operator=operator.address)
    stranger = Account.create().address
    with pytest.raises(ChainError, match=f"no Microgrid deployment operated by {stranger}"):
        discovery.resolve(w3, operator=stranger)


def test_a_copy_that_names_the_real_operator_is_not_the_operators(w3, operator, attacker,
                                                                  tmp_path):
    """The attacker's copy makes the real operator its registry's operator (and admin): the
    chain then holds two valid deployments "operated" by that account. Only the one the operator
    sent is taken with --operator, so the copy can neither capture nor block a joining server."""
    real = deploy(w3, operator)
    copy = deploy_with(w3, attacker, named_operator=operator.address)
    with pytest.raises(discovery.AmbiguousDeployment):
        discovery.resolve(w3, tmp_path / "deployment.json")
    assert same(discovery.resolve(w3, tmp_path / "a.json", operator=operator.address), real)
    with pytest.raises(DeploymentRejected, match="not operated by"):
        discovery.resolve(w3, market=copy.market, operator=operator.address)
    # The copy is the attacker's: sent by it, whoever its registry names.
    assert discovery.resolve(w3, tmp_path / "b.json", operator=attacker.address).market == (
        copy.market)


def test_a_server_that_joined_first_keeps_its_deployment_when_a_copy_appears(
        w3, operator, attacker, tmp_path):
    cache = tmp_path / "deployment.json"
    real = deploy(w3, operator)
    assert same(discovery.resolve(w3, cache), real)
    deploy(w3, attacker)
    assert same(discovery.resolve(w3, cache), real)


@pytest.mark.parametrize("contract", ["EnergyToken", "MeterRegistry", "EnergyMarket"])
def test_a_deployment_with_altered_code_is_refused(w3, operator, attacker, contract):
    fake = deploy_with(w3, attacker, tamper=contract)
    # Alone on the chain: nothing to join, and the message says why the copy was refused.
    with pytest.raises(ChainError) as refused:
        discovery.discover(w3)
    assert f"{fake.market}: the {contract} at " in str(refused.value)
    assert f"is not the committed {contract}" in str(refused.value)
    with pytest.raises(DeploymentRejected, match=f"not the committed {contract}"):
        discovery.resolve(w3, market=fake.market)
    # Next to the real one: the real one is the only candidate, no question asked.
    real = deploy(w3, operator)
    assert same(discovery.discover(w3), real)


def test_the_same_code_deployed_unaltered_passes(w3, attacker):
    # The helper itself deploys code that verifies when nothing is altered.
    dep = deploy_with(w3, attacker)
    assert same(discovery.discover(w3), dep)


def test_a_market_that_claims_the_real_token_and_registry_is_refused(w3, operator, attacker):
    real = deploy(w3, operator)
    # A market with the committed code, pointing at the real token and registry, which do not
    # point back at it.
    claimant = deploy_with(w3, attacker, token=real.token, registry=real.registry)
    with pytest.raises(DeploymentRejected, match="wiring of .* disagrees"):
        discovery.from_market(w3, claimant.market)
    assert same(discovery.discover(w3), real)


def test_a_look_alike_event_from_another_contract_is_ignored(w3, operator, attacker):
    # A token is not a market: the check reads its views and finds no token and registry.
    real = deploy(w3, operator)
    with pytest.raises(DeploymentRejected, match="is not an EnergyMarket"):
        discovery.from_market(w3, real.token)
