"""The in-process chain: eth-tester (py-evm) behind web3, mining on a block timer.

eth-tester normally mines every transaction at once. Here auto-mining is off and a timer
thread mines a block every `block_time` seconds while mining is on, so transactions stay
pending in between (and indefinitely while mining is stopped), as on a real node.

eth-tester is not thread-safe: every provider request and every timer block runs under one
lock. The provider also answers `txpool_content`/`txpool_status` from eth-tester's pending
list, and counts pending transactions in `eth_getTransactionCount(addr, "pending")` (eth-tester
itself ignores them there), so the app can treat this chain like anvil or geth.

Its clock runs like anvil's: a block is stamped with the wall clock plus the largest lead the
chain ever took on it (blocks mined in a burst, or a test's time travel), and at least one second
after its parent. eth-tester alone stamps each block one second after its parent once the chain
is ahead of the wall clock, so on a slow machine the chain's time would run slower than the
meters' and honest readings would look like more power than their rating.

``connect("inprocess://")`` returns the process-wide chain from `shared_chain()`; tests usually
create their own `InProcessChain` and close it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester import EthereumTester
from web3 import EthereumTesterProvider, Web3
from web3.types import RPCEndpoint, RPCResponse

_RPC_KEYS = {
    "block_hash": "blockHash",
    "block_number": "blockNumber",
    "transaction_index": "transactionIndex",
    "chain_id": "chainId",
    "gas_price": "gasPrice",
    "max_fee_per_gas": "maxFeePerGas",
    "max_priority_fee_per_gas": "maxPriorityFeePerGas",
    "max_fee_per_blob_gas": "maxFeePerBlobGas",
    "blob_versioned_hashes": "blobVersionedHashes",
    "access_list": "accessList",
    "authorization_list": "authorizationList",
    "storage_keys": "storageKeys",
    "y_parity": "yParity",
    "data": "input",
}


def _to_rpc(value: Any) -> Any:
    """eth-tester's Python values in JSON-RPC form (camelCase keys, hex quantities)."""
    if isinstance(value, dict):
        return {_RPC_KEYS.get(k, k): _to_rpc(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_rpc(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value


class InProcessProvider(EthereumTesterProvider):
    """EthereumTesterProvider that serializes requests and reports the pending pool."""

    def __init__(self, chain: InProcessChain) -> None:
        super().__init__(chain.tester)
        self.chain = chain

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        """Answer one request under the chain's lock."""
        with self.chain.lock:
            if method == "txpool_content":
                return self._reply(self._txpool_content())
            if method == "txpool_status":
                count = len(self.chain.tester._pending_transactions)
                return self._reply({"pending": hex(count), "queued": "0x0"})
            if method == "eth_getTransactionCount" and len(params) > 1 and params[1] == "pending":
                return self._pending_nonce(params[0])
            if method in ("eth_sendRawTransaction", "eth_sendTransaction"):
                return self._send_on_pending_state(method, params)
            return super().make_request(method, params)

    def _send_on_pending_state(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        """Validate a new transaction against the state *after* the pending ones.

        eth-tester (auto-mining off) checks each transaction against the last block only, so a
        sender's second pending transaction (nonce + 1) would be refused. Replaying the pending
        ones first, inside a snapshot, gives the nonce and balance a real node's pool would see.
        """
        tester = self.chain.tester
        if not tester._pending_transactions:
            return super().make_request(method, params)
        snapshot = tester.take_snapshot()
        try:
            tester._add_all_to_pending_block(list(tester._pending_transactions))
            return super().make_request(method, params)
        finally:
            tester.revert_to_snapshot(snapshot)

    def _reply(self, result: Any) -> RPCResponse:
        self._current_request_id += 1
        return {"id": self._current_request_id, "jsonrpc": "2.0", "result": result}

    def _pending(self) -> list[dict[str, Any]]:
        tester = self.chain.tester
        return [tester.get_transaction_by_hash(tx["hash"]) for tx in tester._pending_transactions]

    def _txpool_content(self) -> dict[str, Any]:
        pending: dict[str, dict[str, Any]] = {}
        for tx in self._pending():
            pending.setdefault(tx["from"], {})[str(tx["nonce"])] = _to_rpc(tx)
        return {"pending": pending, "queued": {}}

    def _pending_nonce(self, address: str) -> RPCResponse:
        response = super().make_request(
            RPCEndpoint("eth_getTransactionCount"), [address, "latest"]
        )
        if "result" not in response:
            return response
        nonces = {
            tx["nonce"]
            for tx in self.chain.tester._pending_transactions
            if str(tx["from"]).lower() == str(address).lower()
        }
        nonce = int(response["result"])
        while nonce in nonces:
            nonce += 1
        return {**response, "result": nonce}


class InProcessChain:
    """An eth-tester chain with pre-funded accounts and a block timer.

    `accounts` are eth-tester's ten pre-funded development keys: for tests and demos only.
    With `empty_blocks=False` the timer mines only when transactions are pending, which keeps
    the chain short (eth-tester slows down as history grows).
    """

    def __init__(
        self, block_time: float = 1.0, mining: bool = True, empty_blocks: bool = True
    ) -> None:
        if block_time <= 0:
            raise ValueError("block_time must be positive")
        self.lock = threading.RLock()
        self.tester = EthereumTester(auto_mine_transactions=False)
        # eth-tester declares this list on the class; give this chain its own.
        self.tester._pending_transactions = []
        self.provider = InProcessProvider(self)
        self.w3 = Web3(self.provider)
        self.accounts: list[LocalAccount] = [
            Account.from_key(key) for key in self.tester.backend.account_keys
        ]
        self.empty_blocks = empty_blocks
        self._block_time = float(block_time)
        self._mining = mining
        self._generation = 0  # bumped by start_mining so the timer restarts its countdown
        self._closed = False
        self._lead = 0.0  # seconds the chain's clock is ahead of the wall clock (never less)
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="inprocess-miner", daemon=True)
        self._thread.start()

    @property
    def mining(self) -> bool:
        """True while the block timer mines."""
        return self._mining

    @property
    def block_time(self) -> float:
        """Seconds between blocks while mining."""
        return self._block_time

    def start_mining(self, block_time: float | None = None) -> None:
        """Mine a block every `block_time` seconds (default: keep the current interval)."""
        if block_time is not None:
            if block_time <= 0:
                raise ValueError("block_time must be positive")
            self._block_time = float(block_time)
        with self._wake:
            self._mining = True
            self._generation += 1
            self._wake.notify_all()

    def stop_mining(self) -> None:
        """Stop the timer: sent transactions stay pending."""
        with self._wake:
            self._mining = False
            self._wake.notify_all()

    def mine(self, blocks: int = 1) -> list[str]:
        """Mine `blocks` blocks now (with whatever is pending); return their hashes."""
        with self.lock:
            self._keep_time()  # the burst's later blocks follow one second apart
            hashes = list(self.tester.mine_blocks(blocks))
            head = self.tester.get_block_by_number("latest")["timestamp"]
            self._lead = max(self._lead, head - time.time())
            return hashes

    def _keep_time(self) -> None:
        """Stamp the block about to be mined with the wall clock plus the chain's lead."""
        chain = self.tester.backend.chain
        head = self.tester.get_block_by_number("latest")["timestamp"]
        self._lead = max(self._lead, head - time.time())
        target = int(time.time() + self._lead)
        if chain.header.timestamp < target:
            chain.header = chain.header.copy(timestamp=target)

    def pending_count(self) -> int:
        """How many sent transactions wait for a block."""
        with self.lock:
            return len(self.tester._pending_transactions)

    def close(self) -> None:
        """Stop the timer thread."""
        with self._wake:
            self._closed = True
            self._mining = False
            self._wake.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> InProcessChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        """Timer loop: while mining, one block per block_time (measured from the last one)."""
        due: float | None = None
        generation = self._generation
        with self._wake:
            while not self._closed:
                if not self._mining:
                    due = None
                    self._wake.wait()
                    continue
                now = time.monotonic()
                if due is None or generation != self._generation:
                    generation = self._generation
                    due = now + self._block_time
                if now < due:
                    self._wake.wait(due - now)
                    continue
                if self.empty_blocks or self.pending_count():
                    self.mine(1)
                # Schedule from now, not from `due`: a slow block must not cause a burst.
                due = time.monotonic() + self._block_time


_shared: dict[str, InProcessChain] = {}
_shared_lock = threading.Lock()


def shared_chain(name: str = "") -> InProcessChain:
    """The process-wide in-process chain called `name` (created, mining, on first use)."""
    with _shared_lock:
        chain = _shared.get(name)
        if chain is None:
            chain = _shared[name] = InProcessChain()
        return chain


def close_shared_chains(*names: str) -> None:
    """Stop and forget the named process-wide chains (all of them if no name is given)."""
    with _shared_lock:
        chosen = names or tuple(_shared)
        chains = [_shared.pop(name) for name in chosen if name in _shared]
    for chain in chains:
        chain.close()
