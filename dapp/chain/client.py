"""The one object the services use to reach the chain.

`ChainClient` bundles the connection, the node's abilities (mining), the contracts of the
deployment, the transaction sender (local signing, nonces, outbox), the pending view and the
event listener. Reads return plain values and dataclasses; actions sign locally and return the
transaction hash after a pre-flight estimate, so a call that would revert raises
`ContractReverted` and sends nothing. Neither the Web3 object nor contract objects leave this
package: every read the rest of the app needs is a method here (tests/test_layering.py).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import event_abi_to_log_topic, keccak, to_checksum_address
from web3 import Web3

from dapp.chain import discovery
from dapp.chain.contracts import error_name, load_artifact
from dapp.chain.deploy import Deployment, MarketParameters, deploy
from dapp.chain.detection import NodeInfo, detect
from dapp.chain.listener import EventListener
from dapp.chain.mining import MiningControl, MiningStatus
from dapp.chain.pending import PendingTx, PendingView
from dapp.chain.transports import RPCError, connect, rpc
from dapp.chain.tx import TxSender
from dapp.errors import ChainError, ChainUnavailable, ContractReverted
from hardware.protocol import LOAD, SUPPLY
from hardware.signing import BlockRef, Domain

log = logging.getLogger(__name__)

# A reading may complete up to MAX_TRADES_PER_READING trades (each closes, refunds, burns and
# returns tokens); its cost depends on the next block's time, which an estimate cannot know.
READING_GAS = 600_000
# reportBatch: a fixed part and a bound per item (an item may settle up to the market's walk),
# used when the node cannot estimate the batch.
BATCH_BASE_GAS = 100_000
BATCH_ITEM_GAS = 300_000
# On top of a batch's estimate: what the block that mines it may add that the estimate cannot
# see. A load reading settles a trade that opened meanwhile, or completes trades whose close
# request came due: a few of those, each bounded by a walk of MAX_TRADES_PER_READING trades
# (tests/bridge/test_batch_encoding.py measures the walk).
BATCH_MARGIN_GAS = 1_200_000
BATCH_ESTIMATE_FACTOR = 1.1
# Never less than this a reading (bench/results/gas.json: ~25,000 a batched reading): an item
# the estimate saw refused (cheap) may be taken in the block that mines it, a second later.
BATCH_ITEM_FLOOR_GAS = 26_000
GAS_LIMIT_TTL_S = 60.0  # the block gas limit is read again after this long
READING_RECORDED_TOPIC = keccak(text="ReadingRecorded(address,uint256,uint256,uint256)")
READING_REJECTED_TOPIC = keccak(text="ReadingRejected(address,uint256,bytes4)")
SIGNATURE_BYTES = 65  # r || s || v, as hardware.signing.sign_reading makes it


class LotStatus(enum.IntEnum):
    """EnergyMarket.Status."""

    NONE = 0
    LISTED = 1
    OPEN = 2
    CLOSED = 3
    EXPIRED = 4


@dataclass(frozen=True)
class Lot:
    """A listing or trade as the market reports it."""

    id: int
    status: LotStatus
    seller: str
    buyer: str | None
    energy_wh: int
    price_per_kwh: int
    deadline: int
    delivered_wh: int
    active_since: int  # when it opened, or became the buyer's delivering trade if later
    deposit_wei: int
    paid_wei: int
    close_requested_at: int = 0  # when the buyer asked to close (0: not asked)

    @property
    def closing(self) -> bool:
        """The buyer asked to close: relays open, the next reading settles the tail."""
        return self.close_requested_at != 0


@dataclass(frozen=True)
class Meter:
    """A meter as the registry reports it."""

    address: str
    owner: str
    kind: str  # hardware.protocol.SUPPLY or LOAD
    status: str  # "offered", "active", "declined" or "deactivated"
    rated_power_w: int
    cumulative_wh: int
    sequence: int
    read_at: int

    @property
    def active(self) -> bool:
        """Accepted by its owner and not deactivated: its readings count."""
        return self.status == "active"


METER_STATUSES = ("none", "offered", "active", "declined", "deactivated")


@dataclass(frozen=True)
class ReadingOutcome:
    """What the registry did with one forwarded reading (from the receipt's events)."""

    meter: str
    sequence: int
    accepted: bool
    reason: str | None = None  # the custom error's name when refused
    energy_wh: int = 0
    read_at: int = 0


@dataclass(frozen=True)
class Reading:
    """One ReadingRecorded event: a meter's accepted increase, where it was recorded."""

    meter: str
    delta_wh: int
    block_number: int
    tx_hash: str
    log_index: int


ZERO = "0x0000000000000000000000000000000000000000"

# The market events that say which lots exist and which are still Listed or Open.
LOT_HISTORY = ("Listed", "TradeOpened", "ListingExpired", "ConnectionClosed")

# MeterRegistry.MeterKind, in declaration order (the device side names the kinds).
METER_KIND_IDS = {SUPPLY: 0, LOAD: 1}


def meter_kind(kind_id: int) -> str:
    """The kind name (SUPPLY or LOAD) of a MeterRegistry.MeterKind value."""
    return LOAD if int(kind_id) == METER_KIND_IDS[LOAD] else SUPPLY


class ChainClient:
    """Connection, deployment, sender, pending view, mining and listener of one server."""

    def __init__(
        self,
        rpc_url: str,
        data_dir: Path,
        *,
        market: str | None = None,
        operator: str | None = None,
        timeout: float = 10.0,
        w3: Web3 | None = None,
    ) -> None:
        self.rpc_url = rpc_url
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._w3 = w3 or connect(rpc_url, timeout=timeout)
        self.sender = TxSender(self._w3, self.data_dir / "outbox.json")
        self.pending = PendingView(self._w3, self.sender.outbox)
        self._market_address = market
        self._operator = operator
        self._deployment: Deployment | None = None
        self._info: NodeInfo | None = None
        self._mining: MiningControl | None = None
        self._listener: EventListener | None = None
        self._gas_limit: tuple[int, float] | None = None  # (gas limit, when read)
        self._pending_estimates = True  # until the node refuses an estimate on "pending"
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ node and deployment

    @property
    def info(self) -> NodeInfo:
        """What the node is and can do (detected on first use)."""
        if self._info is None:
            self._info = detect(self._w3)
        return self._info

    @property
    def mining(self) -> MiningControl:
        """Start/stop mining for this node."""
        if self._mining is None:
            self._mining = MiningControl(self._w3, self.info, self.rpc_url)
        return self._mining

    def mining_status(self) -> MiningStatus:
        """Whether blocks are being made, and whether we can change that."""
        return self.mining.mining_status()

    def start_mining(self, block_time: float = 1.0) -> MiningStatus:
        """Start making blocks."""
        return self.mining.start_mining(block_time)

    def stop_mining(self) -> MiningStatus:
        """Stop making blocks; transactions stay pending."""
        return self.mining.stop_mining()

    @property
    def deployment(self) -> Deployment:
        """The contracts on this chain: flag, cache, or discovery (resolved on first use)."""
        with self._lock:
            if self._deployment is None:
                self._deployment = discovery.resolve(
                    self._w3, self.data_dir / "deployment.json", self._market_address,
                    self._operator,
                )
            return self._deployment

    def use_deployment(self, deployment: Deployment) -> None:
        """Adopt a deployment just made (and cache it for the next start)."""
        with self._lock:
            self._deployment = deployment
            discovery.save_cached(self._w3, self.data_dir / "deployment.json", deployment)

    def deploy(self, deployer: LocalAccount, params: MarketParameters | None = None) -> Deployment:
        """Deploy and wire the contracts from `deployer`, and adopt them (see use_deployment)."""
        deployment = deploy(self._w3, deployer, params)
        self.use_deployment(deployment)
        return deployment

    def _contract(self, name: str, address: str) -> Any:
        return self._w3.eth.contract(address=address, abi=load_artifact(name).abi)

    @property
    def _token(self) -> Any:
        return self._contract("EnergyToken", self.deployment.token)

    @property
    def _registry(self) -> Any:
        return self._contract("MeterRegistry", self.deployment.registry)

    @property
    def _market(self) -> Any:
        return self._contract("EnergyMarket", self.deployment.market)

    @property
    def listener(self) -> EventListener:
        """The process's single event listener (created on first use)."""
        dep = self.deployment  # resolved (flag, cache or discovery) outside the lock
        with self._lock:
            if self._listener is None:
                self._listener = EventListener(self._w3, dep, self.data_dir / "listener.json")
            return self._listener

    # ------------------------------------------------------------------ reads

    def block_number(self) -> int:
        """Latest block number."""
        return self._w3.eth.block_number

    def head(self) -> tuple[int, int]:
        """(number, timestamp) of the latest block, in one call."""
        return self.head_block()[:2]

    def head_block(self) -> tuple[int, int, bytes]:
        """(number, timestamp, hash) of the latest block, in one call."""
        block = self._w3.eth.get_block("latest")
        return int(block["number"]), int(block["timestamp"]), bytes(block["hash"])

    def reading_block(self) -> BlockRef:
        """The latest block, as a reading signed now signs it (hardware/PROTOCOL.md)."""
        number, _, block_hash = self.head_block()
        return BlockRef(number, block_hash)

    def latest_timestamp(self) -> int:
        """Timestamp of the latest block (the chain's "now")."""
        return self.block_timestamp("latest")

    def block_timestamp(self, block: int | str) -> int:
        """Timestamp of block `block` (a number, or "latest")."""
        return int(self._w3.eth.get_block(block)["timestamp"])

    def gas_price(self) -> int:
        """The node's suggested gas price in wei (what a legacy transaction would pay)."""
        return int(self._w3.eth.gas_price)

    def ether_balance(self, address: str) -> int:
        """Ether balance in wei."""
        return int(self._w3.eth.get_balance(to_checksum_address(address)))

    def token_balance(self, address: str) -> int:
        """Energy tokens in Wh."""
        return int(self._token.functions.balanceOf(to_checksum_address(address)).call())

    def credit_of(self, address: str) -> int:
        """Withdrawable credit in the market, in wei."""
        return int(self._market.functions.creditOf(to_checksum_address(address)).call())

    def lot_count(self, block: int | str = "latest") -> int:
        """Number of lots ever listed (as of `block`); ids run from 1 to this."""
        return int(self._market.functions.lotCount().call(block_identifier=block))

    def lot_history(self, from_block: int, to_block: int) -> list[tuple[str, dict[str, Any]]]:
        """(event name, args) of the market's Listed, TradeOpened, ListingExpired and
        ConnectionClosed events in blocks `from_block`..`to_block`, in chain order (one
        eth_getLogs; keep the window small). Args: the lot id (`listingId` or `tradeId`) and,
        for Listed and TradeOpened, the numbers their data carries (decoded here by position:
        a seed reads tens of thousands of these)."""
        market = self._market
        topics = {"0x" + bytes(event_abi_to_log_topic(getattr(market.events, name)().abi)).hex():
                  name for name in LOT_HISTORY}
        logs = self._w3.eth.get_logs({
            "address": market.address, "fromBlock": from_block, "toBlock": to_block,
            "topics": [list(topics)],
        })
        out = []
        for entry in sorted(logs, key=lambda e: (e["blockNumber"], e["logIndex"])):
            name = topics.get(_hex(entry["topics"][0]))
            if name is None:
                continue
            lot_id = int.from_bytes(bytes(entry["topics"][1]), "big")
            data = bytes(entry["data"])
            words = [int.from_bytes(data[i:i + 32], "big") for i in range(0, len(data), 32)]
            if name == "Listed":  # energyWh, startPricePerKWh, deadline
                args = {"listingId": lot_id, "energyWh": words[0],
                        "startPricePerKWh": words[1], "deadline": words[2]}
            elif name == "TradeOpened":  # energyWh, pricePerKWh
                args = {"tradeId": lot_id, "energyWh": words[0], "pricePerKWh": words[1]}
            elif name == "ListingExpired":
                args = {"listingId": lot_id}
            else:
                args = {"tradeId": lot_id}
            out.append((name, args))
        return out

    def lot(self, lot_id: int) -> Lot:
        """One listing or trade."""
        return _lot(lot_id, self._market.functions.lotOf(lot_id).call())

    def lots_by_id(self, ids: list[int]) -> list[Lot]:
        """Several lots (JSON-RPC batches where the node takes them)."""
        fn = self._market.functions.lotOf
        return [_lot(i, info) for i, info in zip(ids, self._many([fn(i) for i in ids]),
                                                 strict=True)]

    def stalls_at_many(self, trade_ids: list[int]) -> list[int]:
        """`stalls_at` of several trades (JSON-RPC batches where the node takes them)."""
        fn = self._market.functions.stallsAt
        return [int(v) for v in self._many([fn(i) for i in trade_ids])]

    def _many(self, calls: list[Any], chunk: int = 200) -> list[Any]:
        """Results of contract calls, sent in batches of `chunk` (one by one if not possible)."""
        out: list[Any] = []
        for start in range(0, len(calls), chunk):
            part = calls[start:start + chunk]
            try:
                with self._w3.batch_requests() as batch:
                    for call in part:
                        batch.add(call)
                    out.extend(batch.execute())
            except (NotImplementedError, AttributeError, TypeError, ValueError) as exc:
                log.debug("batch reads unavailable (%s): one call each", exc)
                out.extend(call.call() for call in part)
        return out

    def deposit_for(self, lot_id: int, price_per_kwh: int) -> int:
        """Wei a bid of `price_per_kwh` on `lot_id` must send."""
        return int(self._market.functions.depositFor(lot_id, price_per_kwh).call())

    def oldest_open_trade(self, buyer: str) -> int:
        """The id of `buyer`'s oldest open trade, the one deliveries go to (0 when none)."""
        oldest, _ = self._market.functions.openTradesOf(to_checksum_address(buyer)).call()
        return int(oldest)

    def market_parameters(self) -> dict[str, int]:
        """minDuration, maxDuration, minIncrementPerKWh, stallTimeout, closeGrace, minChargeWh."""
        (_, _, min_d, max_d, inc, stall, grace,
         min_charge) = self._market.functions.parameters().call()
        return {
            "min_duration": min_d,
            "max_duration": max_d,
            "min_increment_per_kwh": inc,
            "stall_timeout": stall,
            "close_grace": grace,
            "min_charge_wh": min_charge,
        }

    def active_trade_of(self, buyer: str) -> int:
        """The buyer's delivering trade (its oldest open one; 0 when none): the one its readings
        settle and whose seller alone exports."""
        return int(self._market.functions.activeTradeOf(to_checksum_address(buyer)).call())

    def trades_of_buyer(self, buyer: str) -> list[int]:
        """The buyer's open trades, oldest first (exact: the market's own index)."""
        ids = self._market.functions.tradesOfBuyer(to_checksum_address(buyer)).call()
        return [int(i) for i in ids]

    def lots_of_seller(self, seller: str) -> list[int]:
        """The seller's listings and open trades (exact: the market's own index)."""
        ids = self._market.functions.lotsOfSeller(to_checksum_address(seller)).call()
        return [int(i) for i in ids]

    def stalls_at(self, trade_id: int) -> int:
        """Chain time from which `trade_id` counts as stalled (its buyer's meter silent)."""
        return int(self._market.functions.stallsAt(trade_id).call())

    def carried_of(self, buyer: str) -> int:
        """Wh the buyer's readings measured that are still to be settled (carried over)."""
        return int(self._market.functions.carriedOf(to_checksum_address(buyer)).call())

    def meter(self, address: str) -> Meter | None:
        """A registered (or offered) meter, or None."""
        address = to_checksum_address(address)
        owner, kind, status, rated, energy, sequence, read_at = self._registry.functions.meterOf(
            address
        ).call()
        if owner == ZERO:
            return None
        return Meter(address, owner, meter_kind(kind), METER_STATUSES[status], rated, energy,
                     sequence, read_at)

    @property
    def chain_id(self) -> int:
        """The chain's id (what meters sign for)."""
        return self.info.chain_id

    def is_operator(self, address: str) -> bool:
        """Whether `address` may register meters."""
        role = self._registry.functions.OPERATOR_ROLE().call()
        return bool(self._registry.functions.hasRole(role, to_checksum_address(address)).call())

    def readings(self, from_block: int, to_block: int) -> list[Reading]:
        """ReadingRecorded events in blocks `from_block`..`to_block` (keep the range small)."""
        logs = self._registry.events.ReadingRecorded.get_logs(
            from_block=from_block, to_block=to_block
        )
        return [
            Reading(
                meter=entry["args"]["meter"],
                delta_wh=int(entry["args"]["deltaWh"]),
                block_number=entry["blockNumber"],
                tx_hash=_hex(entry["transactionHash"]),
                log_index=entry["logIndex"],
            )
            for entry in logs
        ]

    def meter_offers(self, owner: str) -> list[Meter]:
        """Meters offered to `owner` that it has neither accepted nor declined yet."""
        logs = self._registry.events.MeterOffered.get_logs(
            argument_filters={"owner": to_checksum_address(owner)},
            from_block=self.deployment.block,
        )
        seen: dict[str, Meter] = {}
        for entry in logs:
            meter = self.meter(entry["args"]["meter"])
            if meter is not None and meter.status == "offered" and meter.owner == owner:
                seen[meter.address] = meter
        return list(seen.values())

    def load_meter_of(self, owner: str) -> str | None:
        """The owner's one active load meter, or None."""
        meter = self._registry.functions.loadMeterOf(to_checksum_address(owner)).call()
        return None if meter == ZERO else to_checksum_address(meter)

    def reading_domain(self) -> Domain:
        """What this chain's meters sign for: the chain id and the registry (EIP-712 domain)."""
        return Domain(self.chain_id, self.deployment.registry)

    def listing_start_price(self, lot_id: int) -> int | None:
        """The start price (wei per kWh) lot `lot_id` was listed with; None if no Listed event."""
        logs = self._market.events.Listed.get_logs(
            argument_filters={"listingId": lot_id}, from_block=self.deployment.block
        )
        return int(logs[0]["args"]["startPricePerKWh"]) if logs else None

    def pending_transactions(
        self, account: str, meters: list[str] | None = None
    ) -> list[PendingTx]:
        """Unmined transactions sent by `account` or its meters."""
        return self.pending.pending_transactions(account, meters or [])

    # ------------------------------------------------------------------ actions

    def _send(self, account: LocalAccount, contract: Any, function: str, args: list[Any],
              kind: str, value: int = 0, gas: int | None = None,
              concerns: list[str] | None = None) -> str:
        """Sign and send a call of `contract.function(*args)` (see TxSender.send)."""
        tx: dict[str, Any] = {
            "to": contract.address,
            "data": contract.encode_abi(function, args=args),
            "value": value,
        }
        if gas is not None:
            tx["gas"] = gas
        return self.sender.send(account, tx, kind, concerns)

    def send_ether(self, account: LocalAccount, to: str, wei: int) -> str:
        """Send plain Ether; returns the transaction hash."""
        return self.sender.send(account, {"to": to_checksum_address(to), "value": wei},
                                "send Ether")

    def sell(self, account: LocalAccount, energy_wh: int, start_price_per_kwh: int,
             duration: int, gas: int | None = None) -> str:
        """List `energy_wh` of the account's tokens for auction (gas estimated if None)."""
        return self._send(account, self._market, "list",
                          [energy_wh, start_price_per_kwh, duration], "sell", gas=gas)

    def sell_gas(self, account: LocalAccount, energy_wh: int, start_price_per_kwh: int,
                 duration: int) -> int:
        """The node's gas estimate for that listing now (ContractReverted if it would fail)."""
        return self.sender.estimate_gas({
            "from": account.address, "to": self._market.address, "value": 0,
            "data": self._market.encode_abi(
                "list", args=[energy_wh, start_price_per_kwh, duration])})

    def bid(self, account: LocalAccount, lot_id: int, price_per_kwh: int) -> str:
        """Bid on a listing, sending exactly the deposit it needs."""
        value = self.deposit_for(lot_id, price_per_kwh)
        return self._send(account, self._market, "bid", [lot_id, price_per_kwh], "bid", value)

    def finalize(self, account: LocalAccount, lot_id: int) -> str:
        """End an auction whose deadline passed."""
        return self._send(account, self._market, "finalize", [lot_id], "finalize auction")

    def close_connection(self, account: LocalAccount, trade_id: int) -> str:
        """Close an open trade: the buyer asks (two-phase), or the seller once it is stalled."""
        return self._send(account, self._market, "closeConnection", [trade_id],
                          "close connection")

    def withdraw(self, account: LocalAccount) -> str:
        """Withdraw all of the account's credit."""
        return self._send(account, self._market, "withdraw", [], "withdraw")

    def offer_meter(self, operator: LocalAccount, meter: str, owner: str, kind: str,
                    rated_power_w: int) -> str:
        """Offer a meter to its owner (operator only); it counts once the owner accepts it."""
        args = [to_checksum_address(meter), to_checksum_address(owner), METER_KIND_IDS[kind],
                rated_power_w]
        return self._send(operator, self._registry, "offerMeter", args, "offer meter",
                          concerns=[owner])

    def accept_meter(self, owner: LocalAccount, meter: str) -> str:
        """The owner accepts a meter offered to it: its readings count from now on."""
        return self._send(owner, self._registry, "acceptMeter", [to_checksum_address(meter)],
                          "accept meter")

    def decline_meter(self, owner: LocalAccount, meter: str) -> str:
        """The owner declines a meter offered to it."""
        return self._send(owner, self._registry, "declineMeter", [to_checksum_address(meter)],
                          "decline meter")

    def deactivate_meter(self, operator: LocalAccount, meter: str) -> str:
        """Withdraw a meter (or its offer) for good (operator only)."""
        return self._send(operator, self._registry, "deactivateMeter",
                          [to_checksum_address(meter)], "deactivate meter")

    def fund_dev_account(self, address: str, wei: int) -> None:
        """Set `address`'s balance to `wei` on a development node (anvil_setBalance)."""
        try:
            rpc(self._w3, "anvil_setBalance", [to_checksum_address(address), hex(wei)])
        except RPCError as exc:
            raise ChainError(f"cannot fund {address}: {exc.message}") from exc

    def submit_readings(self, sender: LocalAccount, readings: list[Any],
                        concerns: list[str] | None = None, gas: int | None = None) -> str:
        """Forward meters' signed readings from `sender`, who pays the gas.

        One reading goes as `report` with fixed gas: its cost depends on the next block's time
        (which trades it completes), which an estimate cannot know; a refused one shows as
        ContractReverted from `reading_outcomes`. Several go as one `reportBatch` (packed by
        `pack_readings`), in which the registry skips a bad item with `ReadingRejected` and
        takes the rest, with `gas` (default: `readings_gas`).
        """
        if len(readings) == 1:
            r = readings[0]
            args = [to_checksum_address(r.meter), r.energy_wh, r.sequence, r.block.number,
                    bytes(r.signature)]
            return self._send(sender, self._registry, "report", args, "meter reading",
                              gas=READING_GAS, concerns=concerns)
        if gas is None:
            gas = self.readings_gas(sender.address, readings)
        return self._send(sender, self._registry, "reportBatch", [pack_readings(readings)],
                          "meter readings", gas=gas, concerns=concerns)

    def readings_gas(self, sender: str, readings: list[Any]) -> int:
        """The gas to send these readings with (see `submit_readings`).

        A batch: the node's estimate on the pending block plus a tenth (at least
        BATCH_ITEM_FLOOR_GAS an item), and BATCH_MARGIN_GAS for what the next block may add; the
        worst-case bound per item if the node cannot estimate it. Either may exceed
        `block_gas_limit`: the caller then sends fewer.
        """
        if len(readings) == 1:
            return READING_GAS
        tx = {"from": to_checksum_address(sender), "to": self._registry.address,
              "data": self._registry.encode_abi("reportBatch", args=[pack_readings(readings)])}
        try:
            estimate = self._estimate_on_pending(tx)
        except ChainUnavailable:
            raise
        except ChainError as exc:
            log.debug("readings: no estimate for a batch of %d (%s)", len(readings), exc)
            return BATCH_BASE_GAS + BATCH_ITEM_GAS * len(readings)
        floor = BATCH_BASE_GAS + BATCH_ITEM_FLOOR_GAS * len(readings)
        return max(int(estimate * BATCH_ESTIMATE_FACTOR), floor) + BATCH_MARGIN_GAS

    def _estimate_on_pending(self, tx: dict[str, Any]) -> int:
        """The estimate on the pending block where the node has one (anvil, geth: the time of
        the block that will mine it, not the last one's), else on its default block."""
        if self._pending_estimates:
            try:
                return self.sender.estimate_gas(tx, "pending")
            except (ChainUnavailable, ContractReverted):
                raise
            except ChainError:
                self._pending_estimates = False  # this node has no pending block
        return self.sender.estimate_gas(tx)

    def block_gas_limit(self) -> int:
        """The latest block's gas limit (read again every GAS_LIMIT_TTL_S)."""
        now = time.monotonic()
        cached = self._gas_limit
        if cached is None or now - cached[1] > GAS_LIMIT_TTL_S:
            limit = int(self._w3.eth.get_block("latest")["gasLimit"])
            self._gas_limit = cached = (limit, now)
        return cached[0]

    def reading_outcomes(self, tx_hash: str, timeout: float = 60.0
                         ) -> dict[tuple[str, int], ReadingOutcome]:
        """Wait for a readings transaction; (meter, sequence) -> what the registry did."""
        receipt = self.sender.wait(tx_hash, timeout)
        stamp = self.block_timestamp(int(receipt["blockNumber"]))
        registry = self._registry.address.lower()
        out: dict[tuple[str, int], ReadingOutcome] = {}
        # Decoded by hand: web3's process_receipt took ~0.8 ms a log, most of a block's time
        # for a batch of a thousand readings. Layouts: tests/bridge/test_batch_encoding.py.
        for entry in receipt["logs"]:
            topics = entry["topics"]
            if len(topics) != 2 or str(entry["address"]).lower() != registry:
                continue
            topic, data = bytes(topics[0]), bytes(entry["data"])
            meter = to_checksum_address(bytes(topics[1])[12:])
            if topic == READING_RECORDED_TOPIC and len(data) == 96:
                sequence = int.from_bytes(data[32:64], "big")
                out[(meter, sequence)] = ReadingOutcome(
                    meter, sequence, True, None, int.from_bytes(data[0:32], "big"), stamp)
            elif topic == READING_REJECTED_TOPIC and len(data) == 64:
                sequence = int.from_bytes(data[0:32], "big")
                out[(meter, sequence)] = ReadingOutcome(
                    meter, sequence, False, self._error_name(data[32:36]))
        return out

    def _error_name(self, selector: bytes) -> str:
        """The registry's custom error with this 4-byte selector (hex if unknown)."""
        return error_name(selector) or "0x" + bytes(selector).hex()

    def wait(self, tx_hash: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for a transaction's receipt (ContractReverted if it failed)."""
        return self.sender.wait(tx_hash, timeout)


def pack_readings(readings: list[Any]) -> bytes:
    """Readings as `reportBatch` takes them: 109 bytes each, back to back, big-endian.

    meter (20) | energyWh (8) | sequence (8) | blockNumber (8) | r (32) | s (32) | v (1), the
    last three being the meter's 65-byte signature as `report` takes it. The block hash the
    meter signed is not sent: the registry takes it from `blockhash(blockNumber)`, so a reading
    signed over another hash recovers another signer. A signature of any other length goes as 65
    zero bytes, which recover no signer: the registry skips that item with
    MeterSignatureInvalid(meter, 0), as `report` refuses it, and takes the others.
    """
    items = []
    for r in readings:
        signature = bytes(r.signature)
        if len(signature) != SIGNATURE_BYTES:
            signature = bytes(SIGNATURE_BYTES)
        items.append(bytes.fromhex(to_checksum_address(r.meter)[2:])
                     + r.energy_wh.to_bytes(8, "big") + r.sequence.to_bytes(8, "big")
                     + r.block.number.to_bytes(8, "big") + signature)
    return b"".join(items)


def _hex(value: Any) -> str:
    """A hash as lower-case 0x-hex text."""
    if isinstance(value, str):
        return value.lower()
    return "0x" + bytes(value).hex()


def _lot(lot_id: int, info: Any) -> Lot:
    """A Lot from lotOf's answer."""
    (status, seller, buyer, energy, price, deadline, delivered, active_since, deposit, paid,
     close_requested) = info
    return Lot(
        id=lot_id,
        status=LotStatus(status),
        seller=seller,
        buyer=None if buyer == ZERO else buyer,
        energy_wh=energy,
        price_per_kwh=price,
        deadline=deadline,
        delivered_wh=delivered,
        active_since=active_since,
        deposit_wei=deposit,
        paid_wei=paid,
        close_requested_at=close_requested,
    )
