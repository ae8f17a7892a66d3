"""Client detection: who the node is (`NodeInfo`) and what this app can do with it.

`detect(w3)` names the client from web3_clientVersion and probes its abilities: whether it has
a transaction pool, EIP-1559 fees, and which way (if any) its mining can be started and stopped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from web3 import Web3

from dapp.chain.transports import RPCError, rpc


@dataclass(frozen=True)
class Capabilities:
    """What the node lets this app do.

    mining: "interval" (anvil/hardhat interval mining), "miner" (geth miner_start/stop),
    "timer" (the in-process chain's block timer) or None, with `mining_reason` saying why.
    """

    mining: str | None
    mining_reason: str
    has_txpool: bool
    supports_eip1559: bool


@dataclass(frozen=True)
class NodeInfo:
    """Who the node is: client name, version, chain id and capabilities.

    client is "anvil", "hardhat", "geth", "eth-tester", or the lower-cased name another
    client reports (e.g. "besu"); `client_version` is web3_clientVersion verbatim.
    """

    client: str
    version: str
    chain_id: int
    capabilities: Capabilities
    client_version: str


_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)")


def parse_client_version(client_version: str) -> tuple[str, str]:
    """(client, version): ("geth", "1.13.15-stable") from "Geth/v1.13.15-stable/linux-amd64"."""
    parts = [p for p in client_version.strip().split("/") if p]
    if not parts:
        return "unknown", ""
    name = parts[0].lower()
    if name == "geth":
        client = "geth"
    elif name.startswith("anvil"):
        client = "anvil"
    elif "hardhat" in name:
        client = "hardhat"
    elif name.startswith("ethereumtester"):
        client = "eth-tester"
    else:
        client = name
    # geth --identity inserts a segment (Geth/NAME/v1.13.15-...): take the first version-like one.
    fallback = parts[1] if len(parts) > 1 else ""
    version = next((p for p in parts[1:] if _VERSION_RE.match(p)), fallback)
    return client, version[1:] if version.startswith("v") else version



def in_process_chain(w3: Web3) -> Any:
    """The InProcessChain behind `w3`, or None."""
    return getattr(w3.provider, "chain", None)


def _probe(w3: Web3, method: str, params: list | None = None) -> bool:
    """True if the node offers `method` (answers without "method not found")."""
    try:
        rpc(w3, method, params)
    except RPCError as exc:
        return not exc.not_found
    return True


def _geth_mining(w3: Web3, version: str, latest: dict) -> tuple[str | None, str]:
    """Whether this geth can be told to start/stop mining, and if not, why."""
    if int(latest.get("difficulty") or 0) == 0:
        return None, (
            f"geth {version} runs a proof-of-stake chain (geth --dev since v1.13, or any "
            "merged network): blocks come from the consensus client or the dev-mode "
            "simulator, so this app cannot start or stop mining"
        )
    try:
        modules = rpc(w3, "rpc_modules")
    except RPCError as exc:
        return None, f"geth did not list its APIs (rpc_modules: {exc.message})"
    if not isinstance(modules, dict) or "miner" not in modules:
        return None, (
            "geth does not offer the miner API on this connection: start it with "
            "--http.api eth,net,web3,txpool,miner (or --ws.api ...), or connect over IPC"
        )
    return "miner", ""


def detect(w3: Web3) -> NodeInfo:
    """Ask the node who it is (web3_clientVersion) and probe what it can do."""
    client_version = str(w3.client_version)
    client, version = parse_client_version(client_version)
    chain_id = int(w3.eth.chain_id)
    latest = dict(w3.eth.get_block("latest"))
    supports_eip1559 = latest.get("baseFeePerGas") is not None
    has_txpool = _probe(w3, "txpool_content")
    mining: str | None = None
    reason = ""
    if client in ("anvil", "hardhat"):
        mining = "interval"
    elif client == "eth-tester":
        if in_process_chain(w3) is not None:
            mining = "timer"
        else:
            reason = (
                "this eth-tester chain has no block timer (it mines each transaction at "
                "once); use the in-process chain (inprocess://) for start/stop mining"
            )
    elif client == "geth":
        mining, reason = _geth_mining(w3, version, latest)
    elif client == "microgridgateway":
        reason = "the chain is shared through a gateway: mining is set on the node's machine"
    else:
        reason = f"{client} {version}: this app knows no way to start or stop its mining"
    return NodeInfo(
        client=client,
        version=version,
        chain_id=chain_id,
        capabilities=Capabilities(mining, reason, has_txpool, supports_eip1559),
        client_version=client_version,
    )
