"""Mining control: "start/stop mining" mapped onto what the node offers.

`MiningControl` uses anvil/hardhat interval mining, the geth miner API or the in-process block
timer, as `detect()` found, and says plainly when the node offers none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from web3 import Web3

from dapp.chain.detection import NodeInfo, detect, in_process_chain
from dapp.chain.transports import RPCError, rpc
from dapp.errors import ChainError


@dataclass(frozen=True)
class MiningStatus:
    """Whether blocks are being made, whether this app can change that, and a plain detail.

    block_time is the interval in seconds where the node reports one (None otherwise).
    """

    mining: bool
    available: bool
    detail: str
    block_time: float | None = None


STOPPED_DETAIL = "new transactions stay pending until mining starts"


class MiningControl:
    """Start/stop mining on whatever node `w3` talks to; status is read back from the node."""

    def __init__(self, w3: Web3, info: NodeInfo | None = None) -> None:
        self.w3 = w3
        self.info = info or detect(w3)
        self._kind = self.info.capabilities.mining
        self._reason = self.info.capabilities.mining_reason
        # hardhat cannot report its interval; remember what we set (None: unknown).
        self._hardhat_interval: float | None = None

    @property
    def available(self) -> bool:
        """True if this node's mining can be started and stopped from here."""
        return self._kind is not None

    def _require(self) -> str:
        if self._kind is None:
            raise ChainError(f"mining cannot be controlled: {self._reason}")
        return self._kind

    def _lost(self, exc: RPCError) -> ChainError:
        """The node turned out not to offer the method: stop offering the control."""
        self._kind = None
        self._reason = (
            f"{self.info.client} {self.info.version} does not offer {exc.method} on this "
            f"connection ({exc.message})"
        )
        if self.info.client == "geth":
            self._reason += (
                "; geth v1.14 and later removed miner_start/miner_stop, older versions "
                "need 'miner' in --http.api"
            )
        return ChainError(f"mining cannot be controlled: {self._reason}")

    def _call(self, method: str, params: list | None = None) -> Any:
        try:
            return rpc(self.w3, method, params)
        except RPCError as exc:
            if exc.not_found:
                raise self._lost(exc) from exc
            raise

    def start_mining(self, block_time: float = 1.0) -> MiningStatus:
        """Make blocks every `block_time` seconds (where the node lets us choose); new status."""
        if block_time <= 0:
            raise ValueError("block_time must be positive")
        kind = self._require()
        if kind == "interval":
            self._call("evm_setAutomine", [False])
            if self.info.client == "hardhat":
                # hardhat takes milliseconds, anvil whole seconds.
                self._call("evm_setIntervalMining", [max(1, round(block_time * 1000))])
                self._hardhat_interval = block_time
            else:
                self._call("evm_setIntervalMining", [max(1, round(block_time))])
        elif kind == "timer":
            in_process_chain(self.w3).start_mining(block_time)
        else:  # geth: the block time is the chain's (clique period); no thread count since v1.12
            self._call("miner_start", [])
        return self.mining_status()

    def stop_mining(self) -> MiningStatus:
        """Stop making blocks: sent transactions stay pending. Returns the new status."""
        kind = self._require()
        if kind == "interval":
            self._call("evm_setAutomine", [False])
            self._call("evm_setIntervalMining", [0])
            if self.info.client == "hardhat":
                self._hardhat_interval = 0
        elif kind == "timer":
            in_process_chain(self.w3).stop_mining()
        else:
            self._call("miner_stop", [])
        return self.mining_status()

    def mining_status(self) -> MiningStatus:
        """The node's current mining state (read from the node where it can tell)."""
        if self._kind is None:
            return MiningStatus(False, False, f"mining cannot be controlled: {self._reason}")
        if self._kind == "interval":
            return self._interval_status()
        if self._kind == "timer":
            chain = in_process_chain(self.w3)
            if chain.mining:
                return MiningStatus(
                    True, True, f"a block every {chain.block_time:g} s", chain.block_time
                )
            return MiningStatus(False, True, STOPPED_DETAIL)
        if self._call("eth_mining"):
            return MiningStatus(True, True, "geth is sealing blocks at the chain's block period")
        return MiningStatus(False, True, STOPPED_DETAIL)

    def _interval_status(self) -> MiningStatus:
        if self.info.client == "anvil":
            automine = bool(self._call("anvil_getAutomine"))
            interval = self._call("anvil_getIntervalMining")
        else:
            automine = bool(self._call("hardhat_getAutomine"))
            interval = self._hardhat_interval
        if automine:
            return MiningStatus(True, True, "automine: each transaction is mined at once")
        if interval:
            detail = f"a block every {float(interval):g} s"
            if self.info.client == "hardhat":
                detail += " (as last set here: hardhat does not report its interval)"
            return MiningStatus(True, True, detail, float(interval))
        if interval is None and self.info.client == "hardhat":
            return MiningStatus(
                False, True, "automine is off; hardhat does not report interval mining"
            )
        return MiningStatus(False, True, STOPPED_DETAIL)
