"""`microgrid simulate`'s engine: a community trading by itself on the real chain, in lock-step.

    run = ChainSimulation(SimulationSettings(households=12, days=1, seed=1))
    result = run.run(stop=threading.Event())   # RunSeries of the trading run (+ chain figures)
    report = run.write(out_dir)                 # with the baseline, report.json + index.html

Set-up: a managed anvil in a temporary data directory (its own port, no development
accounts); the contracts deployed by an operator account; per household an account (funded
with `anvil_setBalance`), a supply and a load meter with their own keys (`meters.py`), each
offered by the operator and accepted by its owner (a bidder needs its accepted load meter);
one real `MeterBridge` over all meters (`community://` drivers), the operator forwarding their
signed readings in one `reportBatch` per block; a keeper account that finalizes ended auctions.

Time: anvil mines only when told (`evm_mine`), and `anvil_setBlockTimestampInterval` makes
every block exactly `block_s` seconds later than the last, so chain time *is* simulated time
(the registry's plausibility check, the auction deadlines and the delivery timeouts all run on
it) and the run goes as fast as the machine allows. Each block:

1. the bridge's trade book is current (the listener delivered the last block's events); the
   routes (buyer <- seller of its delivering trade) and each meter's relay set the connections;
2. the bridge's meter passes that are due run (`MeterPort.step`: read, judge, sign check,
   relay), as the bridge's own scheduler would run them, and each household's agent that is
   due decides (`dapp.agents.policy.decide`) and sends its Sell/Bid/Close; the keeper finalizes
   ended auctions; agents withdraw their credit;
3. the bridge's `ReadingSubmitter` sends every due reading in one batch; the block is mined;
4. the community's physics runs over the block's `block_s` seconds with the relays as they
   were; the listener reads the block's events (the bridge and the book follow them).

The trading run is recorded like the baseline (`report.Interval` per household per
`interval_s`), plus what only the chain knows: Ether sent and returned, payments, gas and
transactions per household, transactions per block, trade prices, the Ether the market still
holds and every account's balance change, and the age (in blocks) of every reading at mining.
"""

from __future__ import annotations

import logging
import math
import shutil
import socket
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from dapp.agents.policy import (
    Bid,
    Close,
    HouseholdState,
    Limits,
    Listing,
    MarketTerms,
    Sell,
    decide,
)
from dapp.bridge import BridgeMeter, MeterBridge
from dapp.bridge.bridge import REGISTRY_EVENTS
from dapp.chain.anvil import ManagedAnvil
from dapp.chain.client import ChainClient
from dapp.chain.deploy import MarketParameters
from dapp.chain.listener import ChainEvent
from dapp.chain.transports import connect, rpc
from dapp.errors import ChainError, ContractReverted
from dapp.simulate.baseline import run_baseline
from dapp.simulate.market import MarketBook
from dapp.simulate.meters import CommunityBus, SignedRecord
from dapp.simulate.report import HouseholdSeries, Interval, RunSeries, write_report
from hardware.community import Community
from hardware.models import DAY_S, soc_from_voltage
from hardware.protocol import LOAD, SUPPLY
from hardware.signing import BlockRef

log = logging.getLogger(__name__)

ETHER = 10**18
MILLI_ETHER = 10**15
DEFAULT_LIMITS = Limits(reserve_percent=40.0, floor_wei_per_kwh=MILLI_ETHER // 2,
                        ceiling_wei_per_kwh=3 * MILLI_ETHER, daily_limit_wei=20 * MILLI_ETHER)
WITHDRAW_MIN_WEI = MILLI_ETHER  # an agent withdraws its credit once it reaches this
BLOCK_GAS_LIMIT = 1_000_000_000  # a batch of every meter's reading must fit one block
# An unchanged counter still goes to the chain this often: well inside the market's stall
# timeout, so a live buyer's trade never stalls for want of a reading.
HEARTBEAT_S = 600.0
# Events that only move a trade's stall time: the trade book re-reads their owners at most
# this often (blocks), far inside the market's stall timeout (15 blocks of a minute).
LAZY_EVENTS = ("ReadingRecorded", "DeliverySettled")
REFRESH_BLOCKS = 5


@dataclass
class SimulationSettings:
    """What to simulate and how (seconds are simulated seconds)."""

    households: int = 12
    days: float = 1.0
    seed: int = 1
    block_s: int = 60  # chain time per block (anvil_setBlockTimestampInterval)
    interval_s: int = 900  # the report's interval
    agent_interval_s: int = 300  # how often each agent decides (auctions outlast it)
    poll_s: int = 120  # how often the bridge reads each meter (relays follow every block)
    auction_s: int = 600
    household_funds_wei: int = 10 * ETHER
    limits: Limits = DEFAULT_LIMITS
    household_limits: dict[str, Limits] = field(default_factory=dict)  # overrides by name
    community_factory: Callable[[], Community] | None = None  # default: Community.generate
    data_dir: Path | None = None  # default: a temporary directory, removed afterwards

    def __post_init__(self) -> None:
        if self.households < 1:
            raise ValueError("--households must be at least 1")
        if not self.days > 0 or not math.isfinite(self.days):
            raise ValueError("--days must be a positive number")
        for name in ("block_s", "interval_s", "agent_interval_s", "poll_s", "auction_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.interval_s % self.block_s or self.agent_interval_s % self.block_s \
                or self.poll_s % self.block_s:
            raise ValueError("the interval, agent interval and poll time must be whole blocks")

    def limits_of(self, name: str) -> Limits:
        """The limits household `name`'s owner set."""
        return self.household_limits.get(name, self.limits)

    def make_community(self) -> Community:
        """A fresh copy of the community (the baseline gets its own)."""
        if self.community_factory is not None:
            return self.community_factory()
        return Community.generate(self.households, self.seed)


@dataclass
class HouseholdAccount:
    """A household's chain side: its account and meters."""

    name: str
    account: LocalAccount
    supply_meter: str
    load_meter: str
    start_balance_wei: int = 0
    log: list[str] = field(default_factory=list)
    decisions: int = 0


@dataclass
class ReadingAges:
    """How long measured energy took to reach the chain, in blocks (signed -> recorded)."""

    ages: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    pending: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    last_signed: dict[str, int] = field(default_factory=dict)
    signed: int = 0
    recorded: int = 0
    rejected: int = 0
    rejections: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def on_signed(self, record: SignedRecord) -> None:
        """A meter signed a reading at `record.block` (the latest block then)."""
        self.signed += 1
        if record.energy_wh > self.last_signed.get(record.address, -1):
            self.pending[record.address].append((record.energy_wh, record.block))
        self.last_signed[record.address] = record.energy_wh

    def on_event(self, event: ChainEvent) -> None:
        """ReadingRecorded: every signed counter it covers reached the chain in this block."""
        meter = to_checksum_address(event.args["meter"])
        if event.name == "ReadingRejected":
            self.rejected += 1
            self.rejections[str(event.args.get("reason"))] += 1
            return
        self.recorded += 1
        energy = int(event.args["energyWh"])
        waiting = self.pending[meter]
        while waiting and waiting[0][0] <= energy:
            _, block = waiting.pop(0)
            self.ages[event.block_number - block] += 1

    def backlog(self, latest_block: int) -> int:
        """Readings with new energy signed more than two blocks ago and not on chain yet."""
        return sum(1 for waiting in self.pending.values() for _, block in waiting
                   if latest_block - block > 2)

    def summary(self, latest_block: int) -> dict:
        """The figures for the report."""
        total = sum(self.ages.values())
        worst = max(self.ages, default=None)
        return {
            "readings_signed": self.signed,
            "readings_recorded": self.recorded,
            "readings_rejected": self.rejected,
            "rejections": dict(self.rejections),
            "energy_readings_measured": total,
            "age_blocks_histogram": {str(k): v for k, v in sorted(self.ages.items())},
            "age_blocks_max": worst,
            "age_blocks_mean": (sum(k * v for k, v in self.ages.items()) / total
                                if total else None),
            "backlog_at_end": self.backlog(latest_block),
            "within_two_blocks": worst is not None and worst <= 2
            and self.backlog(latest_block) == 0,
        }


def free_port() -> int:
    """A TCP port nobody listens on now (for the run's own anvil)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChainSimulation:
    """One `microgrid simulate` run (see the module docstring)."""

    def __init__(self, settings: SimulationSettings,
                 progress: Callable[[int, int, str], None] | None = None) -> None:
        self.settings = settings
        self.progress = progress
        self.community = settings.make_community()
        self.total_s = settings.days * DAY_S
        self.blocks_total = max(1, math.ceil(self.total_s / settings.block_s))
        self.time_s = 0.0  # simulated seconds since the start (= chain time - chain_t0)
        self.chain_t0 = 0
        self.block0 = 0
        self.latest_block = 0
        self.households: dict[str, HouseholdAccount] = {}
        self.by_address: dict[str, str] = {}
        self.book = MarketBook(block_day=self._block_day)
        self.ages = ReadingAges()
        self.series: dict[str, HouseholdSeries] = {}
        self.block_transactions: list[int] = []
        self.gas_interval: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.fees: dict[str, int] = defaultdict(int)
        self.operator_gas = 0
        self.keeper_gas = 0
        self.failed_txs: dict[str, int] = defaultdict(int)
        self.limit_violations: list[str] = []
        self.trading: RunSeries | None = None
        self.baseline: RunSeries | None = None
        self.wall_s = 0.0
        self.stopped_early = False
        self._tmp: Path | None = None
        self._node: ManagedAnvil | None = None
        self._rpc = None
        self.chain: ChainClient | None = None
        self.bridge: MeterBridge | None = None
        self.bus: CommunityBus | None = None
        self._due: dict[int, float] = {}
        self._pending_txs: list[tuple[str, str]] = []  # (household or role, tx hash)
        self._submit_job: threading.Thread | None = None
        self._refresh_now: set[str] = set()
        self._refresh_later: set[str] = set()
        self._refreshed: dict[str, int] = {}
        self._last_counters: dict[str, object] = {}

    # ------------------------------------------------------------------ clocks

    def now(self) -> float:
        """Simulated seconds since the start: the bridge's clock."""
        return self.time_s

    def chain_now(self) -> int:
        """Chain time of the latest block (every block is exactly block_s after the last)."""
        return self.chain_t0 + (self.latest_block - self.block0) * self.settings.block_s

    def _block_day(self, block_number: int) -> int:
        offset = (block_number - self.block0) * self.settings.block_s
        return int((self.community.start_s + offset) // DAY_S)

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        """Node, contracts, accounts, meters (offered and accepted), bridge, listener."""
        s = self.settings
        if s.data_dir is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="microgrid-sim-"))
            data_dir = self._tmp
        else:
            data_dir = Path(s.data_dir)
        self._node = ManagedAnvil(data_dir, port=free_port(), block_time=None, state_interval=0,
                                  extra_args=["--gas-limit", str(BLOCK_GAS_LIMIT)])
        self._node.start()
        # The chain id never changes: asked once, not before every call (a third of all
        # requests here otherwise).
        node = self._rpc = connect(self._node.url, timeout=60.0, cache_constants=True)
        chain = self.chain = ChainClient(self._node.url, data_dir, w3=node)
        operator = Account.create()
        keeper = Account.create()
        self.operator, self.keeper = operator, keeper
        chain.fund_dev_account(operator.address, 10**6 * ETHER)
        chain.fund_dev_account(keeper.address, 10**3 * ETHER)
        chain.deploy(operator, MarketParameters(min_duration=min(60, s.auction_s)))
        bus = self.bus = CommunityBus(self.community, self.now, block=lambda: self.latest_block,
                                      on_signed=self.ages.on_signed)
        bus.register()
        hashes = []
        for name in self.community.households:
            account = Account.create()
            house = HouseholdAccount(name, account, bus.address(name, SUPPLY),
                                     bus.address(name, LOAD))
            self.households[name] = house
            self.by_address[account.address] = name
            chain.fund_dev_account(account.address, s.household_funds_wei)
            for kind in (SUPPLY, LOAD):
                hashes.append(chain.offer_meter(operator, bus.address(name, kind),
                                                account.address, kind,
                                                bus.rated_power_w(name, kind)))
        for tx in hashes:
            chain.wait(tx)
        hashes = [chain.accept_meter(house.account, meter) for house in self.households.values()
                  for meter in (house.supply_meter, house.load_meter)]
        for tx in hashes:
            chain.wait(tx)
        meters = [BridgeMeter(bus.url(name, kind), bus.address(name, kind),
                              self.households[name].account.address, kind)
                  for name in self.community.households for kind in (SUPPLY, LOAD)]
        self.bridge = MeterBridge(
            chain, meters, submitter=operator, clock=self.now, poll_interval=s.poll_s,
            submit_interval=0.0, heartbeat_interval=HEARTBEAT_S, registry_recheck=3600.0,
            max_batch=len(meters), workers=1, retries=0, halt_after=3.0 * s.block_s)
        listener = chain.listener
        listener.subscribe(self._on_event)
        listener.subscribe(self.book.on_event)
        self.book.on_reading = self.ages.on_event
        listener.poll_once()
        self.bridge.trades.on_head(*chain.head())  # the first head reads the book
        # From here on blocks are made only by `_mine`, each exactly block_s later.
        chain.stop_mining()
        rpc(self._rpc, "anvil_setBlockTimestampInterval", [s.block_s])
        self.latest_block = self.chain.block_number()
        self._mine()
        self.block0 = self.latest_block
        self.chain_t0 = chain.block_timestamp(self.block0)
        for house in self.households.values():
            house.start_balance_wei = chain.ether_balance(house.account.address)
        self.market_start_wei = chain.ether_balance(chain.deployment.market)
        for name, household in self.community.households.items():
            self.series[name] = HouseholdSeries(
                name=name, pv_peak_w=household.pv.peak_w,
                capacity_wh=household.battery.capacity_wh,
                initial_stored_wh=household.battery.stored_wh,
                discharge_efficiency=household.battery.discharge_efficiency)
        self._last_counters = {n: h.counters for n, h in self.community.households.items()}

    def close(self) -> None:
        """Stop the node and remove the temporary data directory."""
        if self._submit_job is not None:
            self._submit_job.join(30)
        if self._node is not None:
            self._node.stop()
            self._node = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # ------------------------------------------------------------------ one block

    def _mine(self) -> None:
        rpc(self._rpc, "evm_mine", [])
        self.latest_block += 1
        if self.bridge is not None:  # the head every meter signs from now on
            block = rpc(self._rpc, "eth_getBlockByNumber", [hex(self.latest_block), False])
            self.bridge.note_head(BlockRef(self.latest_block, bytes.fromhex(block["hash"][2:])))

    def _on_event(self, event: ChainEvent) -> None:
        """The bridge's event handling, with its trade-book re-reads gathered per block.

        Registry events go to `MeterBridge.on_event` as they come. For trade events the bridge
        re-reads every owner `TradeBook.concerns` names; here each owner is re-read once per
        block (`_refresh_trades`), and for readings and settlements (which only move a trade's
        stall time) at most every REFRESH_BLOCKS blocks, well inside the stall timeout.
        """
        assert self.bridge is not None
        if event.name in REGISTRY_EVENTS:
            self.bridge.on_event(event)
            return
        owners = self.bridge.trades.concerns(event, set(self.by_address))
        target = self._refresh_later if event.name in LAZY_EVENTS else self._refresh_now
        target.update(owners)

    def _refresh_trades(self) -> None:
        """Re-read the owners the block's events named (see `_on_event`)."""
        assert self.bridge is not None
        trades = self.bridge.trades
        due = {o for o in self._refresh_later
               if self.latest_block - self._refreshed.get(o, -REFRESH_BLOCKS) >= REFRESH_BLOCKS}
        for owner in sorted(self._refresh_now | due):
            try:
                trades.refresh(owner)
            except ChainError as exc:
                log.warning("simulate: cannot re-read the trades of %s (%s)", owner, exc)
                continue
            self._refreshed[owner] = self.latest_block
            self._refresh_later.discard(owner)
        self._refresh_now.clear()

    def _step_ports(self) -> None:
        assert self.bridge is not None
        now = self.now()
        for port in self.bridge.ports:
            due = self._due.get(id(port), 0.0)
            if due <= now or port.relay is not port.wanted():
                self._due[id(port)] = port.step()

    def _submit(self) -> None:
        """Send every due reading in one batch (the bridge's submitter, on its own thread)."""
        assert self.bridge is not None and self.chain is not None
        if self._submit_job is not None:
            self._submit_job.join(120)
        outbox = self.chain.sender.outbox
        before = {e.hash for e in outbox.entries()}
        done = threading.Event()
        submitter = self.bridge.submitter

        def job() -> None:
            try:
                submitter.send_due()
            except ChainError as exc:
                log.warning("simulate: forwarding readings failed: %s", exc)
            finally:
                done.set()

        self._submit_job = threading.Thread(target=job, name="sim-submit", daemon=True)
        self._submit_job.start()
        operator = self.operator.address
        while not done.is_set():
            if any(e.sender == operator and e.hash not in before for e in outbox.entries()):
                return
            done.wait(0.0005)

    def _send(self, who: str, fn: Callable[[], str], what: str = "") -> str | None:
        """Send one transaction; a pre-flight revert is counted and skipped."""
        try:
            tx = fn()
        except ContractReverted as exc:
            self.failed_txs[f"{what} refused at pre-flight: {exc.name}"] += 1
            return None
        self._pending_txs.append((what, tx))
        return tx

    def _agents(self) -> None:
        """Each agent whose turn it is decides and acts; the keeper finalizes ended auctions."""
        assert self.chain is not None and self.bridge is not None
        s = self.settings
        chain = self.chain
        now_chain = self.chain_now() + s.block_s  # when what is sent now is mined
        for lot_id in self.book.to_finalize(self.chain_now()):
            if self._send("keeper", lambda i=lot_id: chain.finalize(self.keeper, i), "finalize"):
                self.book.finalizing.add(lot_id)
        # Bids sent in this block, as the node's pending view shows them to the next agent.
        pending: dict[int, tuple[int, str]] = {}
        slots = s.agent_interval_s // s.block_s
        block_index = round(self.time_s / s.block_s)
        terms = MarketTerms(min_increment_wei_per_kwh=MarketParameters().min_increment_per_kwh,
                            auction_s=s.auction_s)
        for index, (name, house) in enumerate(self.households.items()):
            if (block_index + index) % slots:
                continue
            household = self.community.households[name]
            address = house.account.address
            # What the wallet's agent knows too: the voltage the supply meter last reported
            # through the bridge (dapp/services/agents.py), not the model's own state of charge.
            volts = self.bridge.meter_state(house.supply_meter).voltage_v
            if not volts:
                continue  # the bridge has not read the supply meter yet
            state = HouseholdState(
                account=address, now_s=now_chain,
                soc=soc_from_voltage(volts, household.battery.nominal_v),
                capacity_wh=household.battery.capacity_wh,
                net_load_w=self._forecast_net_load_w(name, 3600.0), horizon_s=3600.0,
                tokens_wh=self.book.tokens.get(address, 0),
                listings=self._listings_with_pending(now_chain, pending),
                trades=self.book.trades_of(address),
                spent_today_wei=self.book.spent_today(address, self._day()))
            decision = decide(state, s.limits_of(name), terms)
            house.decisions += 1
            day = self._day()
            house.log += [f"day {day} {self._clock_text()}: {line}" for line in decision.log]
            for action in decision.actions:
                if isinstance(action, Close) and self.book.lots[action.trade_id].closing:
                    continue  # asked already: the next reading settles the tail
                sent = self._send(name, lambda a=action, acct=house.account: self._act(acct, a),
                                  type(action).__name__.lower())
                if sent and isinstance(action, Bid):
                    pending[action.lot_id] = (action.price_wei_per_kwh, address)
            if self.book.credit(address) >= WITHDRAW_MIN_WEI:
                self._send(name, lambda h=house: chain.withdraw(h.account), "withdraw")

    def _listings_with_pending(self, now_s: int, pending: dict[int, tuple[int, str]]
                               ) -> tuple[Listing, ...]:
        """The open listings, with the bids already sent in this block as the highest ones."""
        return tuple(replace(lot, highest_bid_wei_per_kwh=pending[lot.lot_id][0],
                             highest_bidder=pending[lot.lot_id][1])
                     if lot.lot_id in pending else lot
                     for lot in self.book.open_listings(now_s))

    def _act(self, account: LocalAccount, action: Sell | Bid | Close) -> str:
        """Send one of an agent's actions; the transaction hash."""
        assert self.chain is not None
        if isinstance(action, Sell):
            return self.chain.sell(account, action.energy_wh, action.start_price_wei_per_kwh,
                                   action.duration_s)
        if isinstance(action, Bid):
            return self.chain.bid(account, action.lot_id, action.price_wei_per_kwh)
        return self.chain.close_connection(account, action.trade_id)

    def _day(self) -> int:
        return int(self.community.time_s // DAY_S)

    def _clock_text(self) -> str:
        seconds = int(self.community.time_s % DAY_S)
        return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"

    def _forecast_net_load_w(self, name: str, horizon_s: float) -> float:
        """The household's own forecast: mean load minus PV over the next `horizon_s`."""
        household = self.community.households[name]
        weather = self.community.weather
        samples = 12
        total = 0.0
        for k in range(samples):
            t = self.community.time_s + (k + 0.5) * horizon_s / samples
            hour = (t % DAY_S) / 3600.0
            pv = household.pv.power_at(hour) * weather.clearness(int(t // DAY_S))
            total += household.demand_w(t) - pv
        return total / samples

    def _after_block(self) -> None:
        """Receipts of the new block: gas and fees per account; transactions per block."""
        assert self.chain is not None
        receipts = rpc(self._rpc, "eth_getBlockReceipts", [hex(self.latest_block)]) or []
        kinds = {tx.lower(): what for what, tx in self._pending_txs}
        self.block_transactions.append(len(receipts))
        for receipt in receipts:
            sender = to_checksum_address(receipt["from"])
            gas = int(receipt["gasUsed"], 16)
            fee = gas * int(receipt["effectiveGasPrice"], 16)
            self.fees[sender] += fee
            name = self.by_address.get(sender)
            if name is not None:
                self.gas_interval[name][0] += gas
                self.gas_interval[name][1] += 1
            elif sender == self.operator.address:
                self.operator_gas += gas
            elif sender == self.keeper.address:
                self.keeper_gas += gas
            if int(receipt["status"], 16) != 1:
                what = kinds.get(str(receipt["transactionHash"]).lower(), "readings")
                self.failed_txs[f"{what} reverted in its block"] += 1
        for _, tx in self._pending_txs:
            self.chain.sender.outbox.remove(tx)
        self._pending_txs.clear()

    def _record_interval(self) -> None:
        flows = self.book.drain()
        for name, household in self.community.households.items():
            now, then = household.counters, self._last_counters[name]
            address = self.households[name].account.address
            money = flows.get(address, {})
            gas, txs = self.gas_interval.pop(name, [0, 0])
            self.series[name].intervals.append(Interval.between(
                self.time_s, now, then, household.battery.soc,
                paid_wei=money.get("paid_wei", 0),
                ether_out_wei=money.get("deposited_wei", 0),
                ether_in_wei=money.get("withdrawn_wei", 0),
                gas_used=gas, transactions=txs))
            self._last_counters[name] = now

    def step(self) -> None:
        """One block of the run (see the module docstring)."""
        assert self.bus is not None and self.chain is not None
        s = self.settings
        self.bus.set_routes({self.by_address[b]: self.by_address[sel]
                             for b, sel in self.book.routes().items()})
        self.bus.watchdogs()
        self._step_ports()
        self._agents()
        self._submit()
        self._mine()
        dt = min(s.block_s, self.total_s - self.time_s)
        self.community.advance(dt)
        self.time_s += dt
        self.bridge.trades.on_head(self.latest_block, self.chain_now())
        self.chain.listener.poll_once()
        self._refresh_trades()
        self._after_block()
        if round(self.time_s) % s.interval_s == 0:
            self._record_interval()

    # ------------------------------------------------------------------ the run

    def run(self, stop: threading.Event | None = None) -> RunSeries:
        """Set up, run every block until done (or `stop`), and collect the trading run."""
        stop = stop or threading.Event()
        started = time.monotonic()
        try:
            self.setup()
            block = 0
            while self.time_s < self.total_s - 1e-9:
                if stop.is_set():
                    self.stopped_early = True
                    break
                self.step()
                block += 1
                if self.progress is not None:
                    self.progress(block, self.blocks_total, self._status())
            if self.series and self._last_counters and any(
                    self.series[n].intervals == [] or self.series[n].intervals[-1].t_s
                    < self.time_s for n in self.series) and self.time_s > 0:
                self._record_interval()  # the partial last interval
            if self.time_s > 0:
                self._closing_readings()
            self.trading = self._collect()
        finally:
            self.wall_s = time.monotonic() - started
            self.close()
        return self.trading

    def _closing_readings(self) -> None:
        """One last pass over every meter, forwarded and mined: the chain has the final
        counters (no physics runs in this block)."""
        assert self.bridge is not None and self.chain is not None
        for port in self.bridge.ports:
            port.next_read = 0.0
            self._due[id(port)] = 0.0
        self._step_ports()
        self._submit()
        self._mine()
        if self._submit_job is not None:
            self._submit_job.join(120)
        self.bridge.trades.on_head(self.latest_block, self.chain_now())
        self.chain.listener.poll_once()
        self._refresh_trades()
        self._after_block()
        flows = self.book.drain()  # settled by the closing readings: part of the last interval
        for name, series in self.series.items():
            if not series.intervals:
                continue
            last = series.intervals[-1]
            money = flows.get(self.households[name].account.address, {})
            last.paid_wei += money.get("paid_wei", 0)
            last.ether_out_wei += money.get("deposited_wei", 0)
            last.ether_in_wei += money.get("withdrawn_wei", 0)
            gas, txs = self.gas_interval.pop(name, [0, 0])
            last.gas_used += gas
            last.transactions += txs

    def _status(self) -> str:
        day = self.time_s / DAY_S
        return (f"day {day:.2f}, {len(self.book.open_trades)} open trades, "
                f"{len(self.book.trade_prices)} trades")

    def _collect(self) -> RunSeries:
        """The trading run's series plus what the chain says at the end."""
        assert self.chain is not None
        chain = self.chain
        market = chain.deployment.market
        held = chain.ether_balance(market) - self.market_start_wei
        accounts = []
        for name, house in self.households.items():
            address = house.account.address
            totals = self.book.totals.get(address, {})
            end = chain.ether_balance(address)
            deposited = totals.get("deposited_wei", 0)
            withdrawn = totals.get("withdrawn_wei", 0)
            fees = self.fees.get(address, 0)
            accounts.append({
                "name": name, "address": address, "start_wei": house.start_balance_wei,
                "end_wei": end, "deposited_wei": deposited, "withdrawn_wei": withdrawn,
                "gas_fees_wei": fees, "credit_wei": chain.credit_of(address),
                "earned_wei": totals.get("earned_wei", 0), "paid_wei": totals.get("paid_wei", 0),
                "residual_wei": house.start_balance_wei - deposited + withdrawn - fees - end,
            })
        credits = sum(a["credit_wei"] for a in accounts)
        metering = []
        for name, house in self.households.items():
            counters = self.community.households[name].counters
            supply = chain.meter(house.supply_meter)
            load = chain.meter(house.load_meter)
            totals = self.book.totals.get(house.account.address, {})
            metering.append({
                "name": name,
                "charged_wh": counters.charged_wh,
                "supply_on_chain_wh": supply.cumulative_wh if supply else 0,
                "imported_wh": counters.imported_wh,
                "load_on_chain_wh": load.cumulative_wh if load else 0,
                "settled_wh": totals.get("settled_wh", 0),
                "stall_charged_wh": totals.get("stall_charged_wh", 0),
                "min_charge_wei": totals.get("min_charge_wei", 0),
                "tokens_wh": chain.token_balance(house.account.address),
                "tokens_wh_from_events": self.book.tokens.get(house.account.address, 0),
            })
        book_matches = (all(m["tokens_wh"] == m["tokens_wh_from_events"] for m in metering)
                        and all(a["credit_wei"] == self.book.credit(a["address"])
                                for a in accounts)
                        and chain.block_number() == self.latest_block)
        self._check_limits()
        run = RunSeries(label="trading", interval_s=float(self.settings.interval_s),
                        households=list(self.series.values()),
                        block_transactions=self.block_transactions,
                        trade_prices_wei_per_kwh=list(self.book.trade_prices), held_wei=held,
                        ether_accounts=accounts,
                        operator_gas_used=self.operator_gas + self.keeper_gas)
        run.extra = {
            "simulated_s": self.time_s,
            "stopped_early": self.stopped_early,
            "blocks": len(self.block_transactions),
            "block_s": self.settings.block_s,
            "seed": self.settings.seed,
            "market_held_wei": held,
            "event_book_matches_chain": book_matches,
            "market_credits_wei": credits,
            "market_escrow_wei": self.book.held_in_lots(),
            "lots_listed": len(self.book.lots),
            "trades_opened": len(self.book.trade_prices),
            "failed_transactions": dict(self.failed_txs),
            "readings": self.ages.summary(self.latest_block),
            "reading_gas_used": self.operator_gas,
            "keeper_gas_used": self.keeper_gas,
            "limits": {
                "reserve_percent": self.settings.limits.reserve_percent,
                "floor_wei_per_kwh": self.settings.limits.floor_wei_per_kwh,
                "ceiling_wei_per_kwh": self.settings.limits.ceiling_wei_per_kwh,
                "daily_limit_wei": self.settings.limits.daily_limit_wei,
                "violations": self.limit_violations,
            },
            "metering": metering,
            "agent_logs": {name: house.log[-10:] for name, house in self.households.items()},
        }
        return run

    def _check_limits(self) -> None:
        """From the chain's events: no bid above the ceiling, no listing below the floor, no
        day's settled payments above the daily limit."""
        limits = self.settings.limits_of
        for bidder, lot, price in self.book.bids:
            if price > limits(self.by_address[bidder]).ceiling_wei_per_kwh:
                self.limit_violations.append(f"{self.by_address[bidder]} bid {price} on {lot}")
        for seller, lot, price in self.book.listings:
            if price < limits(self.by_address[seller]).floor_wei_per_kwh:
                self.limit_violations.append(f"{self.by_address[seller]} listed {lot} at {price}")
        for (account, day), paid in self.book.spent_by_day.items():
            if paid > limits(self.by_address[account]).daily_limit_wei:
                self.limit_violations.append(f"{self.by_address[account]} paid {paid} on day {day}")

    def write(self, out_dir: Path) -> dict:
        """Run the baseline over the same simulated time and write the report directory."""
        if self.trading is None:
            raise RuntimeError("run() first")
        if self.time_s <= 0:
            raise RuntimeError("nothing was simulated")
        self.baseline = run_baseline(self.settings.make_community(), self.time_s,
                                     float(self.settings.interval_s))
        report = write_report(Path(out_dir), self.trading, self.baseline)
        return report
