"""Find the deployed contracts on a chain with no file editing.

Two ways, in this order: an explicit market address (flag ``--market`` / ``MICROGRID_MARKET``;
the market knows its token and registry), or automatic discovery: the market emits
``MarketDeployed(token, registry)`` in its constructor, so one ``eth_getLogs`` over the whole
chain with that topic and no address filter finds every deployment; the newest one wins. The
result is cached in ``<data-dir>/deployment.json`` keyed by the chain's genesis hash, so a chain
replaced by a new one is never confused with the old one.
"""

from __future__ import annotations

import json
from pathlib import Path

from eth_utils import event_abi_to_log_topic, to_checksum_address
from hexbytes import HexBytes
from web3 import Web3

from dapp import atomic
from dapp.chain.contracts import load_artifact
from dapp.chain.deploy import Deployment
from dapp.errors import ChainError

# A log query over a very long chain is split into windows of this many blocks.
DISCOVERY_WINDOW = 50_000


def _market_contract(w3: Web3, address: str):
    abi = load_artifact("EnergyMarket").abi
    return w3.eth.contract(address=to_checksum_address(address), abi=abi)


def genesis_hash(w3: Web3) -> str:
    """Hash of block 0: identifies the chain across restarts."""
    return HexBytes(w3.eth.get_block(0)["hash"]).to_0x_hex()


def from_market(w3: Web3, market: str, block: int | None = None) -> Deployment:
    """Build the Deployment from the market's own view of its token and registry."""
    market = to_checksum_address(market)
    if w3.eth.get_code(market) in (b"", HexBytes("0x")):
        raise ChainError(f"no contract at {market} on this chain")
    contract = _market_contract(w3, market)
    try:
        token, registry = contract.functions.parameters().call()[:2]
    except Exception as exc:  # noqa: BLE001 - something else lives at that address
        raise ChainError(f"{market} is not an EnergyMarket") from exc
    if block is None:
        block = _find_deployment_block(w3, market)
    # The operator is not recorded: whether an account may register meters is asked of the
    # registry (hasRole) when it matters.
    return Deployment(
        token=to_checksum_address(token),
        registry=to_checksum_address(registry),
        market=market,
        operator="",
        block=block or 0,
    )


def _deployed_topic() -> HexBytes:
    abi = next(
        i for i in load_artifact("EnergyMarket").abi
        if i["type"] == "event" and i["name"] == "MarketDeployed"
    )
    return HexBytes(event_abi_to_log_topic(abi))


def _scan(w3: Web3, address: str | None) -> list[dict]:
    """MarketDeployed logs (optionally of one address), oldest first, window by window."""
    head = w3.eth.block_number
    found: list[dict] = []
    topic = _deployed_topic().to_0x_hex()
    for start in range(0, head + 1, DISCOVERY_WINDOW):
        query: dict = {
            "fromBlock": start,
            "toBlock": min(head, start + DISCOVERY_WINDOW - 1),
            "topics": [topic],
        }
        if address:
            query["address"] = address
        found.extend(w3.eth.get_logs(query))
    return found


def _find_deployment_block(w3: Web3, market: str) -> int | None:
    logs = _scan(w3, market)
    return logs[0]["blockNumber"] if logs else None


def discover(w3: Web3) -> Deployment:
    """Find the newest market deployment on the chain by its MarketDeployed event."""
    logs = _scan(w3, None)
    for log in reversed(logs):
        address = to_checksum_address(log["address"])
        try:
            return from_market(w3, address, log["blockNumber"])
        except ChainError:
            continue  # a look-alike event from some other contract
    raise ChainError(
        "no Microgrid contracts found on this chain: deploy them with `microgrid deploy` "
        "or pass --market ADDRESS"
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
    if w3.eth.get_code(dep.market) in (b"", HexBytes("0x")):
        return None  # the node's state was reset: no contracts any more
    return dep


def save_cached(w3: Web3, path: Path, deployment: Deployment) -> None:
    """Remember the deployment for this chain (atomic write)."""
    payload = {"genesis": genesis_hash(w3), "deployment": deployment.as_dict()}
    atomic.write_text(path, json.dumps(payload, indent=2) + "\n")


def resolve(w3: Web3, cache_path: Path | None = None, market: str | None = None) -> Deployment:
    """The deployment to use: explicit market address, else the cache, else discovery."""
    if market:
        dep = from_market(w3, market)
    else:
        dep = load_cached(w3, cache_path) if cache_path else None
        if dep is not None:
            return dep
        dep = discover(w3)
    if cache_path:
        save_cached(w3, cache_path, dep)
    return dep
