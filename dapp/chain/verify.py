"""Is a deployment on the chain the committed contracts, wired to each other?

Anyone can deploy contracts on a shared chain, including a look-alike market that keeps the
escrow, so a joining server checks a candidate before it trades on it:

1. **Wiring.** The market names its token and registry; every address-valued view of the three
   contracts named after one of them (``token()``, ``registry()``, ``market()``, the market's
   ``parameters()``...) must point at that very contract.
2. **Code.** Each contract's runtime code must equal what the committed artifact
   (``contracts/build/*.json``) produces at that address on this chain. The runtime code holds
   immutables (the wired addresses, the market's rules, EIP-712 domain caches bound to the
   contract's own address and chain id), so the creation code is run here, in py-evm, with the
   constructor arguments the deployment itself reports, at the candidate's address and with the
   chain's id, and the result is compared byte for byte. Nothing in this file knows a contract's
   bytecode or layout: the artifacts and ABIs drive it, so it keeps working when they change.
   Constructor arguments are found by name: ``token``/``registry``/``market`` are the wired
   addresses, ``operator`` is the first account granted ``OPERATOR_ROLE`` by the registry, and
   any other argument is read from a zero-argument view of the same name.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from eth_abi import encode as abi_encode
from eth_utils import event_abi_to_log_topic, keccak, to_canonical_address, to_checksum_address
from hexbytes import HexBytes
from web3 import Web3

from dapp.chain.contracts import Artifact, _abi_type, load_artifact
from dapp.chain.deploy import Deployment, create_address
from dapp.errors import ChainError

ROLES = {"token": "EnergyToken", "registry": "MeterRegistry", "market": "EnergyMarket"}
ZERO = "0x0000000000000000000000000000000000000000"
_CREATE_GAS = 30_000_000


class DeploymentRejected(ChainError):
    """A candidate deployment is not the committed contracts, or is not wired together."""


@dataclass(frozen=True)
class Candidate:
    """A MarketDeployed event's market and what the check found."""

    market: str
    block: int
    deployment: Deployment | None
    problem: str | None


def normalize(name: str) -> str:
    """ABI names compared loosely: "token_", "_token" and "Token" are all "token"."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def has_code(w3: Web3, address: str) -> bool:
    """True if a contract lives at `address`."""
    return w3.eth.get_code(to_checksum_address(address)) not in (b"", HexBytes("0x"))


def views(w3: Web3, name: str, address: str) -> dict[str, Any]:
    """Every zero-argument view of contract `name` at `address`, by normalized name.

    Tuple results (the market's ``parameters()``) contribute their named components. A view
    that reverts or does not decode is left out.
    """
    contract = w3.eth.contract(address=to_checksum_address(address),
                               abi=load_artifact(name).abi)
    found: dict[str, Any] = {}
    for item in load_artifact(name).abi:
        if (item["type"] != "function" or item.get("inputs")
                or item.get("stateMutability") not in ("view", "pure")):
            continue
        try:
            value = getattr(contract.functions, item["name"])().call()
        except Exception:  # noqa: BLE001, S112 - foreign code at the address: just no value
            continue
        outputs = item.get("outputs", [])
        if len(outputs) == 1:
            found.setdefault(normalize(item["name"]), value)
        else:
            for output, part in zip(outputs, value, strict=False):
                if output.get("name"):
                    found.setdefault(normalize(output["name"]), part)
    return found


def rebuild_runtime(artifact: Artifact, address: str, chain_id: int, args: list[Any]) -> bytes:
    """The runtime code `artifact`'s creation code leaves at `address` on chain `chain_id`."""
    from eth.chains.base import MiningChain
    from eth.constants import CREATE_CONTRACT_ADDRESS, ZERO_ADDRESS
    from eth.db.atomic import AtomicDB
    from eth.vm.forks.cancun import CancunVM
    from eth.vm.message import Message

    constructor = next((i for i in artifact.abi if i["type"] == "constructor"), None)
    types = [_abi_type(i) for i in constructor["inputs"]] if constructor else []
    init = bytes.fromhex(artifact.bytecode.removeprefix("0x")) + abi_encode(types, args)
    chain_class = MiningChain.configure(__name__="Rebuild", vm_configuration=((0, CancunVM),),
                                        chain_id=chain_id)
    chain = chain_class.from_genesis(AtomicDB(), {
        "difficulty": 0, "gas_limit": _CREATE_GAS, "timestamp": 1, "coinbase": ZERO_ADDRESS,
    })
    state = chain.get_vm().state
    target = to_canonical_address(address)
    message = Message(gas=_CREATE_GAS, to=CREATE_CONTRACT_ADDRESS, sender=ZERO_ADDRESS, value=0,
                      data=b"", code=init, create_address=target)
    context = state.get_transaction_context_class()(gas_price=0, origin=ZERO_ADDRESS)
    computation = state.computation_class.apply_create_message(state, message, context)
    if computation.is_error:
        raise DeploymentRejected(
            f"the committed {artifact.name} cannot be rebuilt with the arguments this "
            f"deployment reports ({computation.error})"
        )
    return bytes(state.get_code(target))


def first_operator(w3: Web3, registry: str, scan: Callable[..., list[dict]]) -> str | None:
    """The first account the registry granted OPERATOR_ROLE (its constructor's operator)."""
    abi = load_artifact("MeterRegistry").abi
    event = next((i for i in abi if i["type"] == "event" and i["name"] == "RoleGranted"), None)
    has_role_id = any(i["type"] == "function" and i["name"] == "OPERATOR_ROLE" for i in abi)
    if event is None or not has_role_id:
        return None
    contract = w3.eth.contract(address=registry, abi=abi)
    role = HexBytes(contract.functions.OPERATOR_ROLE().call()).to_0x_hex()
    topic = HexBytes(event_abi_to_log_topic(event)).to_0x_hex()
    for log in scan(w3, [topic, role], registry):  # oldest first: the constructor's grant
        return to_checksum_address(HexBytes(log["topics"][2])[-20:])
    return None


def deployed_topic() -> HexBytes:
    """The topic of the market's MarketDeployed event (discovery scans for it)."""
    abi = next(i for i in load_artifact("EnergyMarket").abi
               if i["type"] == "event" and i["name"] == "MarketDeployed")
    return HexBytes(event_abi_to_log_topic(abi))


def is_operator(w3: Web3, deployment: Deployment, account: str) -> bool:
    """True if `account` deployed this deployment: it sent the transaction that created the
    market (the one that emitted its MarketDeployed). Naming an account as operator, or granting
    it the role, is something anyone's copy can do; sending as it is not."""
    account = to_checksum_address(account)
    try:
        logs = w3.eth.get_logs({
            "fromBlock": deployment.block, "toBlock": deployment.block,
            "address": to_checksum_address(deployment.market),
            "topics": [deployed_topic().to_0x_hex()],
        })
        for log in logs:
            tx = w3.eth.get_transaction(log["transactionHash"])
            sender = to_checksum_address(tx["from"])
            if (tx.get("to") is None and sender == account
                    and create_address(sender, tx["nonce"]) == to_checksum_address(
                        deployment.market)):
                return True
    except Exception:  # noqa: BLE001 - a chain that cannot show the creation vouches for nobody
        return False
    return False


# Deployments that passed, by (chain id, market, hash of the market's code): the outcome depends
# only on the three contracts' code and the operator, so a hit re-reads just those.
_passed: dict[tuple[int, str, bytes], tuple[Deployment, bytes, bytes]] = {}
_passed_lock = threading.Lock()


def _code_hash(w3: Web3, address: str) -> bytes:
    return keccak(bytes(w3.eth.get_code(to_checksum_address(address))))


def check(w3: Web3, market: str, block: int, scan: Callable[..., list[dict]]) -> Deployment:
    """The verified Deployment whose market is `market`; DeploymentRejected says what is wrong."""
    market = to_checksum_address(market)
    if not has_code(w3, market):
        raise DeploymentRejected(f"no contract at {market} on this chain")
    key = (int(w3.eth.chain_id), market, _code_hash(w3, market))
    with _passed_lock:
        hit = _passed.get(key)
    if hit is not None:
        dep, token_hash, registry_hash = hit
        if (_code_hash(w3, dep.token) == token_hash
                and _code_hash(w3, dep.registry) == registry_hash
                and (first_operator(w3, dep.registry, scan) or "") == dep.operator):
            return replace(dep, block=block)
    dep = _check(w3, market, block, scan)
    with _passed_lock:
        _passed[key] = (dep, _code_hash(w3, dep.token), _code_hash(w3, dep.registry))
    return dep


def _check(w3: Web3, market: str, block: int, scan: Callable[..., list[dict]]) -> Deployment:
    """check() without the memo."""
    reported = views(w3, ROLES["market"], market)
    addresses = {"market": market}
    for role in ("token", "registry"):
        value = reported.get(role)
        if not isinstance(value, str) or value == ZERO:
            raise DeploymentRejected(f"{market} is not an EnergyMarket (it names no {role})")
        addresses[role] = to_checksum_address(value)
        if not has_code(w3, addresses[role]):
            raise DeploymentRejected(f"the {role} {addresses[role]} of {market} has no code")
    seen = {"market": reported}
    for role in ("token", "registry"):
        seen[role] = views(w3, ROLES[role], addresses[role])
    # 1. Wiring: whatever a contract says about a partner must be that partner.
    for role, found in seen.items():
        for partner, expected in addresses.items():
            value = found.get(partner)
            if value is not None and (not isinstance(value, str)
                                      or to_checksum_address(value) != expected):
                raise DeploymentRejected(
                    f"the wiring of {market} disagrees: its {role} "
                    f"{addresses[role]} names {value} as {partner}, not {expected}"
                )
    # 2. Code: rebuilt from the committed artifact with the reported arguments.
    operator = first_operator(w3, addresses["registry"], scan)
    chain_id = int(w3.eth.chain_id)
    for role, name in ROLES.items():
        artifact = load_artifact(name)
        args = _constructor_args(artifact, addresses, seen[role], operator)
        expected_code = rebuild_runtime(artifact, addresses[role], chain_id, args)
        if bytes(w3.eth.get_code(addresses[role])) != expected_code:
            raise DeploymentRejected(
                f"the {name} at {addresses[role]} is not the committed {name}: its code "
                "differs from contracts/build"
            )
    return Deployment(token=addresses["token"], registry=addresses["registry"], market=market,
                      operator=operator or "", block=block)


def _constructor_args(artifact: Artifact, addresses: dict[str, str], found: dict[str, Any],
                      operator: str | None) -> list[Any]:
    """The constructor arguments of `artifact`, by name, from the deployment's own answers."""
    constructor = next((i for i in artifact.abi if i["type"] == "constructor"), None)
    args: list[Any] = []
    for item in constructor["inputs"] if constructor else []:
        key = normalize(item["name"])
        if key in addresses:
            args.append(addresses[key])
        elif key == "operator" and operator:
            args.append(operator)
        elif key in found:
            args.append(found[key])
        else:
            raise DeploymentRejected(
                f"cannot check the {artifact.name}: nothing tells its constructor argument "
                f"{item['name'] or '(unnamed)'}"
            )
    return args
