"""Find the deployed contracts on a chain with no file editing, and refuse copies.

Three ways, in this order: an explicit market address (flag ``--market`` / ``MICROGRID_MARKET``;
the market knows its token and registry), the cache, or automatic discovery: the market emits
``MarketDeployed(token, registry)`` in its constructor, so ``eth_getLogs`` over the whole chain
with that topic and no address filter finds every deployment. Each candidate is checked
(`dapp.chain.verify`: the code of all three contracts equals the committed artifacts and their
wiring agrees); a look-alike is skipped. Exactly one good deployment is taken; with several
(anyone may deploy a copy, naming any operator) discovery refuses and lists them, so the
user picks one with ``--market`` or ``--operator ADDRESS`` (only a deployment whose market that
account created). The result is cached in ``<data-dir>/deployment.json`` keyed by the chain's
genesis hash, so a chain replaced by a new one is never confused with the old one, and a copy
deployed after the server joined does not matter to it.
"""

from __future__ import annotations

import json
from pathlib import Path

from eth_utils import to_checksum_address
from hexbytes import HexBytes
from web3 import Web3

from dapp import atomic
from dapp.chain.deploy import Deployment
from dapp.chain.verify import (
    Candidate,
    DeploymentRejected,
    check,
    deployed_topic,
    has_code,
    is_operator,
)
from dapp.errors import ChainError

# A log query over a very long chain is split into windows of this many blocks.
DISCOVERY_WINDOW = 50_000
# At most this many candidates are checked (each costs a few dozen calls).
MAX_CANDIDATES = 50


class AmbiguousDeployment(ChainError):
    """More than one valid deployment is on the chain: the user must choose."""

    def __init__(self, message: str, candidates: list[Deployment]) -> None:
        super().__init__(message)
        self.candidates = candidates


def genesis_hash(w3: Web3) -> str:
    """Hash of block 0: identifies the chain across restarts."""
    return HexBytes(w3.eth.get_block(0)["hash"]).to_0x_hex()


def scan_logs(w3: Web3, topics: list, address: str | None = None) -> list[dict]:
    """Logs with these topics (optionally of one address), oldest first, window by window."""
    head = w3.eth.block_number
    found: list[dict] = []
    for start in range(0, head + 1, DISCOVERY_WINDOW):
        query: dict = {
            "fromBlock": start,
            "toBlock": min(head, start + DISCOVERY_WINDOW - 1),
            "topics": topics,
        }
        if address:
            query["address"] = address
        found.extend(w3.eth.get_logs(query))
    return found


def _scan(w3: Web3, address: str | None) -> list[dict]:
    """MarketDeployed logs (optionally of one address), oldest first."""
    return scan_logs(w3, [deployed_topic().to_0x_hex()], address)


def _find_deployment_block(w3: Web3, market: str) -> int | None:
    logs = _scan(w3, market)
    return logs[0]["blockNumber"] if logs else None


def from_market(w3: Web3, market: str, block: int | None = None) -> Deployment:
    """The verified deployment whose market is `market` (DeploymentRejected if it is not)."""
    market = to_checksum_address(market)
    if not has_code(w3, market):
        raise DeploymentRejected(f"no contract at {market} on this chain")
    if block is None:
        block = _find_deployment_block(w3, market) or 0
    return check(w3, market, block, scan_logs)


def candidates(w3: Web3) -> list[Candidate]:
    """Every market that announced itself, oldest first, each with its check's outcome."""
    seen: set[str] = set()
    found: list[Candidate] = []
    for log in _scan(w3, None):
        market = to_checksum_address(log["address"])
        if market in seen:
            continue
        seen.add(market)
        if len(found) >= MAX_CANDIDATES:
            break
        try:
            dep = check(w3, market, log["blockNumber"], scan_logs)
        except DeploymentRejected as exc:
            found.append(Candidate(market, log["blockNumber"], None, str(exc)))
        else:
            found.append(Candidate(market, log["blockNumber"], dep, None))
    return found


def describe(dep: Deployment) -> str:
    """One line naming a deployment: market, operator and block."""
    operator = dep.operator or "unknown"
    return f"market {dep.market} (operator {operator}, deployed in block {dep.block})"


def discover(w3: Web3, operator: str | None = None) -> Deployment:
    """The one valid deployment on the chain (of `operator`, if given); refuse if ambiguous."""
    found = candidates(w3)
    valid = [c.deployment for c in found if c.deployment is not None]
    if operator:
        valid = [d for d in valid if is_operator(w3, d, operator)]
    if len(valid) == 1:
        return valid[0]
    if not valid:
        rejected = [f"{c.market}: {c.problem}" for c in found if c.problem]
        if operator and len(rejected) < len(found):
            message = f"no Microgrid deployment operated by {to_checksum_address(operator)}"
        else:
            message = "no Microgrid contracts found on this chain"
        message += (": deploy them with `microgrid deploy` or pass --market ADDRESS")
        if rejected:
            message += ". Refused (not the committed contracts): " + "; ".join(rejected[:5])
        raise ChainError(message)
    listing = "; ".join(describe(d) for d in valid)
    raise AmbiguousDeployment(
        f"this chain holds {len(valid)} deployments of the Microgrid contracts: {listing}. "
        "Anyone can deploy a copy, so choose yours: --market ADDRESS (MICROGRID_MARKET), or "
        "--operator ADDRESS (MICROGRID_OPERATOR) for the grid operator's deployment",
        valid,
    )


def load_cached(w3: Web3, path: Path) -> Deployment | None:
    """The cached deployment for this chain, if the cache matches its genesis and has code."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("genesis") != genesis_hash(w3):
            return None
        dep = Deployment(**data["deployment"])
    except (ValueError, KeyError, TypeError):
        return None
    if not has_code(w3, dep.market):
        return None  # the node's state was reset: no contracts any more
    return dep


def save_cached(w3: Web3, path: Path, deployment: Deployment) -> None:
    """Remember the deployment for this chain (atomic write)."""
    payload = {"genesis": genesis_hash(w3), "deployment": deployment.as_dict()}
    atomic.write_text(path, json.dumps(payload, indent=2) + "\n")


def resolve(w3: Web3, cache_path: Path | None = None, market: str | None = None,
            operator: str | None = None) -> Deployment:
    """The deployment to use: explicit market address, else the cache, else discovery.

    With `operator`, only a deployment that account operates is taken (also from the cache).
    """
    if market:
        dep = from_market(w3, market)
        if operator and not is_operator(w3, dep, operator):
            raise DeploymentRejected(
                f"{describe(dep)} is not operated by {to_checksum_address(operator)}"
            )
    else:
        dep = load_cached(w3, cache_path) if cache_path else None
        if dep is not None and (not operator or is_operator(w3, dep, operator)):
            return dep
        dep = discover(w3, operator)
    if cache_path:
        save_cached(w3, cache_path, dep)
    return dep
