"""Conservation of Ether and energy tokens over randomized sequences of market operations.

One checker, `check_invariants`, states what must hold after every transaction:

- Ether: the market's balance = every credit + the deposits of Listed lots with a bidder +
  (deposit - paid) of Open trades; each account's credit = what events credited it - what it
  withdrew; no lot has paid or delivered more than it holds.
- Tokens: supply = minted - burned; minted = what supply meters measured; burned = what Closed
  trades delivered; the market's tokens = Listed lots + undelivered and delivered-but-unburned
  energy of Open trades.

A Hypothesis state machine runs the checker after every step of random sequences by three
people and one contract that refuses Ether. Each step also predicts whether the market must
accept or refuse it (and with which custom error). A last test compiles deliberately broken
markets and shows that the same checker catches each of them on a short fixed sequence.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pytest
from eth_utils import event_abi_to_log_topic
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from web3.contract import Contract

from dapp.chain.contracts import (
    decode_revert,
    error_name,
    load_artifact,
    revert_data_from_exception,
)
from dapp.chain.deploy import create_address
from dapp.compiler import CONTRACTS_DIR, compile_sources
from dapp.errors import ContractReverted
from tests.contracts.conftest import PARAMS, PRICE, Chain
from tests.contracts.helpers import packed

LISTED, OPEN, CLOSED, EXPIRED = 1, 2, 3, 4
SUPPLY, LOAD = 0, 1
ZERO = "0x" + "00" * 20
RATED_W = 65_535  # the largest rating: readings of up to ~18 Wh per second are plausible
TX_GAS = 3_000_000
START_WH = 10_000  # each person's tokens when an example starts
MAX_LOTS = 8  # per example: room for several trades per buyer, cheap to check after each step
INCREMENT = PARAMS.min_increment_per_kwh
READING_KINDS = st.sampled_from(["ok", "ok", "ok", "heartbeat", "replay", "too much", "forged"])
MAX_CARRY_WS = 3599  # allowance below one Wh carried from one reading to the next
BID_KINDS = st.sampled_from(["valid"] * 3 + ["too low", "deposit short", "deposit over"])
STATUS_AFTER = {
    "Listed": LISTED, "TradeOpened": OPEN, "ListingExpired": EXPIRED, "ConnectionClosed": CLOSED
}


class Lot(NamedTuple):
    """EnergyMarket.LotInfo as returned by lotOf."""

    status: int
    seller: str
    buyer: str
    energy_wh: int
    price_per_kwh: int
    deadline: int
    delivered_wh: int
    active_since: int
    deposit_wei: int
    paid_wei: int
    close_requested_at: int


def deposit(energy_wh: int, price: int) -> int:
    """The deposit a bid needs, computed here rather than asked of the market (rounded up)."""
    return -(-energy_wh * price // 1000)


@dataclass
class Ledger:
    """Totals from the events of every transaction sent through an Exchange."""

    supply_meters: set[str] = field(default_factory=set)
    measured_wh: int = 0  # deltas of supply-meter readings
    minted: int = 0  # token Transfers from the zero address
    burned: int = 0  # token Transfers to the zero address
    sellers: dict[int, str] = field(default_factory=dict)  # lot id -> seller, from Listed
    credited: Counter = field(default_factory=Counter)  # Credited, and sellers' DeliverySettled
    withdrawn: Counter = field(default_factory=Counter)
    parties: set[str] = field(default_factory=set)  # every address an event named
    buyers: dict[int, str] = field(default_factory=dict)  # trade id -> buyer, from TradeOpened
    paid_wh: Counter = field(default_factory=Counter)  # buyer -> Wh billed (DeliverySettled)
    taken_wh: Counter = field(default_factory=Counter)  # buyer -> Wh drawn with a trade open
    unbought_wh: Counter = field(default_factory=Counter)  # buyer -> Wh beyond its open lots

    def record(self, name: str, args: dict[str, Any]) -> None:
        """Account for one decoded event."""
        if name == "MeterOffered" and args["kind"] == SUPPLY:
            self.supply_meters.add(args["meter"])
        elif name == "ReadingRecorded" and args["meter"] in self.supply_meters:
            self.measured_wh += args["deltaWh"]
        elif name == "Transfer":
            if args["from"] == ZERO:
                self.minted += args["value"]
            if args["to"] == ZERO:
                self.burned += args["value"]
            self.parties.update({args["from"], args["to"]} - {ZERO})
        elif name == "Listed":
            self.sellers[args["listingId"]] = args["seller"]
            self.parties.add(args["seller"])
        elif name == "BidPlaced":
            self.parties.add(args["bidder"])
        elif name == "Credited":
            self.credited[args["account"]] += args["amountWei"]
        elif name == "TradeOpened":
            self.buyers[args["tradeId"]] = args["buyer"]
        elif name == "DeliverySettled":
            self.credited[self.sellers[args["tradeId"]]] += args["paidWei"]
            self.paid_wh[self.buyers[args["tradeId"]]] += args["energyWh"]
        elif name == "Withdrawn":
            self.withdrawn[args["account"]] += args["amountWei"]


class Exchange:
    """A token/registry/market set on the in-process chain, with the ledger of what was sent.

    Every chain access runs on one worker thread. Under Hypothesis the stack is deep enough that
    py-evm's interpreter loop keeps crossing a boundary of CPython 3.11's frame-stack chunks, which
    maps and unmaps 16 KiB per crossing (millions of mmap calls, half the run time in the kernel);
    a thread of its own starts with a shallow stack. Calls are still strictly sequential.
    """

    def __init__(
        self, chain: Chain, token: Contract, registry: Contract, market: Contract, lens: Contract
    ) -> None:
        self.chain = chain
        self.token, self.registry, self.market, self.lens = token, registry, market, lens
        self.ledger = Ledger()
        self.accounts: set[str] = set()  # checked even before any event names them
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chain")
        self._events: dict[tuple[str, bytes], Any] = {}
        for contract in (token, registry, market):
            for item in contract.abi:
                if item["type"] == "event":
                    key = (contract.address, event_abi_to_log_topic(item))
                    self._events[key] = contract.events[item["name"]]()

    def close(self) -> None:
        """Stop the worker thread."""
        self._worker.shutdown()

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._worker.submit(fn, *args).result()

    def send(self, fn: Any, sender: str, value: int = 0) -> tuple[dict, list[tuple[str, dict]]]:
        """Send a call as a transaction; return the receipt and its decoded events.

        A dry run on the pending block finds reverts (raised as ContractReverted); the
        transaction then goes out with a fixed gas limit, which skips py-evm's gas estimation
        (a binary search of ~15 executions).
        """
        return self._run(self._send, fn, sender, value)

    def _send(self, fn: Any, sender: str, value: int) -> tuple[dict, list[tuple[str, dict]]]:
        tx = {"from": sender, "value": value, "gas": TX_GAS}
        try:
            fn.call(tx, block_identifier="pending")
        except Exception as exc:  # noqa: BLE001 - turned into the custom error below
            data = revert_data_from_exception(exc)  # follows the cause/context chain
            if data is None:
                raise
            raise decode_revert(data) from exc
        receipt = self.chain.w3.eth.get_transaction_receipt(fn.transact(tx))
        assert receipt["status"] == 1
        events = []
        for log in receipt["logs"]:
            event = self._events.get((log["address"], bytes(log["topics"][0])))
            if event is not None:
                decoded = event.process_log(log)
                events.append((decoded["event"], dict(decoded["args"])))
                self.ledger.record(*events[-1])
        return receipt, events

    def reading(
        self, meter: str, energy_wh: int, sequence: int | None = None, key: bytes | None = None
    ) -> Any:
        """`report` of a reading signed by `meter` (or by `key`, to forge) for this registry.

        `sequence` defaults to the one after the meter's last accepted reading.
        """
        if sequence is None:
            sequence = self.call(self.registry.functions.meterOf(meter))[5] + 1
        return self.registry.functions.report(*self.signed(meter, energy_wh, sequence, key))

    def signed(self, meter: str, energy_wh: int, sequence: int, key: bytes | None = None
               ) -> tuple[str, int, int, int, bytes]:
        """A reading signed by `meter` (or `key`) of the latest block: (meter, energy,
        sequence, block number, signature), as `report` and a `reportBatch` item take it."""
        block = self._run(lambda: self.chain.w3.eth.block_number)
        signature = self._run(
            self.chain.sign_reading, meter, energy_wh, sequence, block, None, None,
            self.registry.address, key,
        )
        return meter, energy_wh, sequence, block, signature

    def install(self, operator: str, meter: str, owner: str, kind: int, counter: int) -> None:
        """Offer `meter` to `owner`, who accepts it; its baseline reading is `counter`."""
        self.send(self.registry.functions.offerMeter(meter, owner, kind, RATED_W), operator)
        self.send(self.registry.functions.acceptMeter(meter), owner)
        self.send(self.reading(meter, counter), operator)

    def call(self, fn: Any) -> Any:
        """Evaluate a view call."""
        return self._run(fn.call)

    def lot(self, lot_id: int) -> Lot:
        """The market's view of one lot."""
        return Lot(*self.call(self.market.functions.lotOf(lot_id)))

    def balance(self, address: str) -> int:
        """Ether balance in wei."""
        return self._run(self.chain.balance, address)

    def pending_time(self) -> int:
        """Timestamp the next transaction's block will carry."""
        return self._run(self.chain.tester.get_block_by_number, "pending")["timestamp"]

    def advance(self, seconds: int) -> None:
        """Mine an empty block `seconds` after the pending one would have been."""
        self._run(self.chain.tester.time_travel, self.pending_time() + seconds)

    def snapshot(self) -> tuple[int, Ledger]:
        """Remember the chain and the ledger."""
        return self._run(self.chain.tester.take_snapshot), copy.deepcopy(self.ledger)

    def revert(self, snapshot: tuple[int, Ledger]) -> None:
        """Go back to a snapshot taken by `snapshot`."""
        self._run(self.chain.tester.revert_to_snapshot, snapshot[0])
        self.ledger = copy.deepcopy(snapshot[1])


def check_invariants(ex: Exchange) -> list[str]:
    """Every conservation rule that does not hold right now, as a message (empty: all hold)."""
    ledger = ex.ledger
    seen = ex.accounts | ledger.parties | set(ledger.credited) | set(ledger.withdrawn)
    accounts = sorted(seen - {ex.market.address})
    # One eth_call returns the balances, the credits and every lot (see contracts/test/MarketLens).
    view = ex.call(ex.lens.functions.read(ex.market.address, ex.token.address, accounts))
    market_wei, supply, market_tokens, credits, raw_lots = view
    lots = [Lot(*raw) for raw in raw_lots]
    problems = []

    if len(lots) != len(ledger.sellers):
        problems.append(f"{len(lots)} lots on chain but {len(ledger.sellers)} Listed events")
    escrow_wei = 0
    for lot_id, lot in enumerate(lots, start=1):
        if lot.delivered_wh > lot.energy_wh or lot.paid_wei > lot.deposit_wei:
            problems.append(f"lot {lot_id} delivered or paid more than it holds: {lot}")
        if lot.status == LISTED and lot.buyer != ZERO:
            escrow_wei += lot.deposit_wei
        elif lot.status == OPEN:
            escrow_wei += lot.deposit_wei - lot.paid_wei
    total_credits = sum(credits)
    if market_wei != total_credits + escrow_wei:
        problems.append(
            f"market holds {market_wei} wei but credits {total_credits} + escrow {escrow_wei}"
            f" = {total_credits + escrow_wei}"
        )
    for account, credit in zip(accounts, credits, strict=True):
        expected = ledger.credited[account] - ledger.withdrawn[account]
        if credit != expected:
            problems.append(f"credit of {account} is {credit} wei but its events say {expected}")

    if ledger.minted != ledger.measured_wh:
        problems.append(
            f"minted {ledger.minted} Wh but supply meters measured {ledger.measured_wh}"
        )
    if supply != ledger.minted - ledger.burned:
        problems.append(f"token supply {supply} != minted {ledger.minted} - burned {ledger.burned}")
    delivered_closed = sum(lot.delivered_wh for lot in lots if lot.status == CLOSED)
    if ledger.burned != delivered_closed:
        problems.append(f"burned {ledger.burned} Wh but closed trades delivered {delivered_closed}")
    listed = sum(lot.energy_wh for lot in lots if lot.status == LISTED)
    undelivered = sum(lot.energy_wh - lot.delivered_wh for lot in lots if lot.status == OPEN)
    unburned = sum(lot.delivered_wh for lot in lots if lot.status == OPEN)
    if market_tokens != listed + undelivered + unburned:
        problems.append(
            f"market holds {market_tokens} Wh of tokens but listed {listed} + undelivered"
            f" {undelivered} + delivered-unburned {unburned} = {listed + undelivered + unburned}"
        )
    # Energy: nobody takes more than it pays for, beyond the stated bound (what its readings
    # could not walk yet, carried to the next reading; energy beyond every open lot of its own
    # was not bought from anyone).
    for buyer in sorted(set(ledger.taken_wh)):
        carried = ex.call(ex.market.functions.carriedOf(buyer))
        bound = ledger.paid_wh[buyer] + carried + ledger.unbought_wh[buyer]
        if ledger.taken_wh[buyer] > bound:
            problems.append(
                f"{buyer} took {ledger.taken_wh[buyer]} Wh but paid for {ledger.paid_wh[buyer]}"
                f" + carried {carried} + unbought {ledger.unbought_wh[buyer]}"
            )
    return problems


def exchange_of(chain: Chain) -> Exchange:
    """The session deployment as an Exchange."""
    lens = chain.deploy_contract("MarketLens")
    return Exchange(chain, chain.token, chain.registry, chain.market, lens)


def deploy_exchange(chain: Chain, market_abi: list, market_bytecode: str) -> Exchange:
    """Deploy a fresh token and registry wired to a market built from `market_bytecode`.

    As in dapp/chain/deploy.py, the three addresses are predicted from the deployer's nonces.
    """
    w3 = chain.w3
    deployer = chain.addresses[0]
    nonce = w3.eth.get_transaction_count(deployer)
    addresses = [create_address(deployer, nonce + i) for i in range(3)]
    token_at, registry_at, market_at = addresses
    token_art, registry_art = load_artifact("EnergyToken"), load_artifact("MeterRegistry")
    market_args = [token_at, registry_at, *PARAMS.args()]
    plan = [
        (token_art.abi, token_art.bytecode, [registry_at, market_at]),
        (registry_art.abi, registry_art.bytecode, [deployer, token_at, market_at]),
        (market_abi, market_bytecode, market_args),
    ]
    contracts = []
    for (abi, bytecode, args), expected in zip(plan, addresses, strict=True):
        factory = w3.eth.contract(abi=abi, bytecode=bytecode)
        tx_hash = factory.constructor(*args).transact({"from": deployer})
        assert w3.eth.get_transaction_receipt(tx_hash)["contractAddress"] == expected
        contracts.append(w3.eth.contract(address=expected, abi=abi))
    return Exchange(chain, *contracts, chain.deploy_contract("MarketLens"))


# --- randomized sequences -----------------------------------------------------------------------


@dataclass
class Actor:
    """Someone the state machine acts for: a person with meters, or the Ether-refusing bidder."""

    address: str  # where credits and tokens accrue
    sender: str  # who signs the transactions
    contract: Contract | None = None  # the RevertingBidder: calls go through it
    supply_meter: str | None = None
    load_meter: str | None = None


@dataclass
class Seen:
    """What the events said about a lot; used only to choose useful actions, never to predict."""

    status: int
    seller: str
    deadline: int
    buyer: str = ZERO


class MarketMachine(RuleBasedStateMachine):
    """Random list/bid/finalize/read/close/withdraw sequences; conservation after each step.

    Every rule predicts from the chain's state whether the market must accept or refuse (and
    with which error). Arguments are mostly drawn so that the step can succeed (a lot in the
    right state, a bidder who is not the seller, an actor with credit) and otherwise at random,
    including a lot id that does not exist.
    """

    def __init__(
        self, ex: Exchange, actors: list[Actor], meters: dict[str, tuple[int, int, int, int]]
    ) -> None:
        super().__init__()
        self.ex = ex
        self.actors = actors
        self.people = [a for a in actors if a.contract is None]
        # meter -> (counter, time, sequence, carried watt-seconds) of the last accepted reading
        self.meters = dict(meters)
        self.load_owners = {a.load_meter: a.address for a in actors if a.load_meter}
        self.lots: dict[int, Seen] = {}
        self._snapshot = ex.snapshot()

    def teardown(self) -> None:
        """Put the chain back for the next example."""
        self.ex.revert(self._snapshot)

    # helpers

    def _expect(self, fn: Any, sender: str, error: str | None, value: int = 0) -> list:
        """Send `fn`: it must succeed when `error` is None, else revert with exactly `error`."""
        if error is None:
            events = self.ex.send(fn, sender, value)[1]
            for name, args in events:
                self._follow(name, args)
            return events
        with pytest.raises(ContractReverted) as info:
            self.ex.send(fn, sender, value)
        assert info.value.name == error, f"expected {error}, got {info.value}"
        return []

    def _follow(self, name: str, args: dict[str, Any]) -> None:
        """Keep `self.lots` up to date from one market event."""
        lot_id = args.get("listingId", args.get("tradeId"))
        if name == "Listed":
            self.lots[lot_id] = Seen(LISTED, args["seller"], args["deadline"])
        elif name == "BidPlaced":
            self.lots[lot_id].buyer = args["bidder"]
        elif name in STATUS_AFTER:
            self.lots[lot_id].status = STATUS_AFTER[name]

    def _choose(self, data: st.DataObject, useful: list, fallback: st.SearchStrategy) -> Any:
        """Usually one of the `useful` choices (when there are any), else from `fallback`."""
        if useful and data.draw(st.integers(0, 4), label="at random") < 4:
            return data.draw(st.sampled_from(useful), label="choice")
        return data.draw(fallback, label="choice")

    def _any_lot(self) -> st.SearchStrategy:
        """Any lot id, or the next one, which does not exist yet."""
        return st.integers(1, len(self.lots) + 1)

    def _reading(self, meter: str, kind: str, percent: int) -> None:
        """Carry a signed reading of `kind` (ok / heartbeat / replay / too much / forged) to the
        chain; predict the registry's verdict, the allowance carried over included."""
        item, error, accepted = self._signed_reading(meter, kind, percent)
        self._expect(self.ex.registry.functions.report(*item), self.people[0].sender, error)
        if error is None:
            accepted()

    def _signed_reading(self, meter: str, kind: str, percent: int
                        ) -> tuple[tuple, str | None, Callable[[], None]]:
        """A signed reading of `kind`, the registry's predicted verdict (an error name or None)
        and what to remember once it is accepted; what an accepted load reading will take from
        sellers is entered in the ledger here, from the chain's state before it."""
        counter, read_at, sequence, carry = self.meters[meter]
        now = self.ex.pending_time()
        allowance_ws = RATED_W * (now - read_at) + carry
        max_wh = allowance_ws // 3600
        delta_wh = {"ok": max_wh * percent // 100, "too much": max_wh + 1}.get(kind, 0)
        next_sequence = sequence if kind == "replay" else sequence + 1
        key = b"\x22" * 32 if kind == "forged" else None
        error = None
        if kind == "replay":
            error = "MeterSequenceNotNewer"
        elif kind == "forged":
            error = "MeterSignatureInvalid"
        elif delta_wh > max_wh:
            error = "MeterReadingImplausible"
        item = self.ex.signed(meter, counter + delta_wh, next_sequence, key)
        owner = self.load_owners.get(meter)
        if owner is not None and error is None:
            # What this reading takes from sellers, counted here, independently of the market.
            trades = self.ex.call(self.ex.market.functions.tradesOfBuyer(owner))
            if trades:
                open_wh = sum(
                    (lot := self.ex.lot(t)).energy_wh - lot.delivered_wh for t in trades
                )
                carried = self.ex.call(self.ex.market.functions.carriedOf(owner))
                self.ex.ledger.taken_wh[owner] += delta_wh
                self.ex.ledger.unbought_wh[owner] += max(0, delta_wh + carried - open_wh)

        def accepted() -> None:
            carried = min(allowance_ws - delta_wh * 3600, MAX_CARRY_WS)
            self.meters[meter] = (counter + delta_wh, now, next_sequence, carried)

        return item, error, accepted

    def _stalls_at(self, lot: Lot) -> int:
        """When the seller may close: the buyer's load meter silent for the stall timeout since
        its last reading (or since the trade became active, if later); or the buyer's close
        request past its grace time."""
        read_at, _ = self.ex.call(self.ex.registry.functions.lastLoadReadingOf(lot.buyer))
        stalls_at = max(read_at, lot.active_since) + PARAMS.stall_timeout
        if lot.close_requested_at:
            stalls_at = min(stalls_at, lot.close_requested_at + PARAMS.close_grace)
        return stalls_at

    # rules

    @initialize(
        energies=st.lists(st.integers(1, 3_000), min_size=3, max_size=3),
        prices=st.lists(st.integers(1, 2 * PRICE), min_size=3, max_size=3),
    )
    def busy_market(self, energies: list[int], prices: list[int]) -> None:
        """Start busy: one buyer holds two open trades (having outbid someone for the first),
        and the Ether-refusing bidder leads a running auction. Hypothesis enables only a random
        subset of the rules in each example; without this most examples never reach a trade."""
        first, second, third = self.people
        market = self.ex.market.functions
        ids = []
        for seller, energy_wh, price, duration in zip(
            (first, first, second), energies, prices, (300, 300, 600), strict=True
        ):
            events = self._expect(market.list(energy_wh, price, duration), seller.address, None)
            ids.extend(args["listingId"] for name, args in events if name == "Listed")
        bids = [
            (second, 0, prices[0]), (third, 0, prices[0] + INCREMENT), (third, 1, prices[1]),
            (self.actors[3], 2, prices[2]),
        ]
        for bidder, i, price in bids:
            target = bidder.contract or self.ex.market
            value = deposit(energies[i], price)
            self._expect(target.functions.bid(ids[i], price), bidder.sender, None, value)
        self.ex.advance(300)
        for lot_id in ids[:2]:
            self._expect(market.finalize(lot_id), first.address, None)

    @rule(seconds=st.integers(1, 30))
    def wait_a_little(self, seconds: int) -> None:
        """A few blocks' worth of time passes."""
        self.ex.advance(seconds)

    @rule(seconds=st.integers(300, PARAMS.stall_timeout + 60))
    def wait_long(self, seconds: int) -> None:
        """Long enough for auctions to end or deliveries to time out."""
        self.ex.advance(seconds)

    @rule(who=st.integers(0, 2), kind=READING_KINDS, percent=st.integers(1, 100))
    def supply_reading(self, who: int, kind: str, percent: int) -> None:
        """A supply meter reports (mints), or replays / overstates its counter (refused)."""
        self._reading(self.people[who].supply_meter, kind, percent)

    @rule(data=st.data(), kind=READING_KINDS, percent=st.integers(1, 100))
    def load_reading(self, data: st.DataObject, kind: str, percent: int) -> None:
        """A load meter reports, usually a buyer's: its open trades are settled, oldest first."""
        buyers = {s.buyer for s in self.lots.values() if s.status == OPEN}
        useful = [p for p in self.people if p.address in buyers]
        person = self._choose(data, useful, st.sampled_from(self.people))
        self._reading(person.load_meter, kind, percent)

    @rule(data=st.data(), size=st.integers(2, 4))
    def batch_of_readings(self, data: st.DataObject, size: int) -> None:
        """The bridge's way: several meters' readings in one `reportBatch`, good and bad mixed.
        The batch never reverts; each item is recorded or rejected (with the predicted error)
        on its own, and a refused one moves no token and no Wh."""
        meters = data.draw(st.lists(st.sampled_from(sorted(self.meters)), min_size=size,
                                    max_size=size, unique=True), label="meters")
        prepared = [self._signed_reading(
            meter, data.draw(READING_KINDS, label="kind"),
            data.draw(st.integers(1, 100), label="percent")) for meter in meters]
        fn = self.ex.registry.functions.reportBatch(packed([item for item, _, _ in prepared]))
        events = self._expect(fn, self.people[0].sender, None)
        verdicts = {(args["meter"], args["sequence"]): (name, args) for name, args in events
                    if name in ("ReadingRecorded", "ReadingRejected")}
        assert len(verdicts) == len(prepared)
        for (meter, energy_wh, sequence, _, _), error, accepted in prepared:
            name, args = verdicts[(meter, sequence)]
            if error is None:
                assert name == "ReadingRecorded" and args["energyWh"] == energy_wh
                accepted()
            else:
                assert name == "ReadingRejected" and error_name(args["reason"]) == error

    @precondition(lambda self: len(self.lots) < MAX_LOTS)
    @rule(
        who=st.integers(0, 2),
        energy_wh=st.one_of(st.integers(1, 3), st.integers(1, 3_000)),  # dust, or a real lot
        price=st.integers(1, 2 * PRICE),
        duration=st.sampled_from([PARAMS.min_duration - 1, PARAMS.min_duration, 300, 900, 1_800]),
    )
    def list_lot(self, who: int, energy_wh: int, price: int, duration: int) -> None:
        """A seller lists tokens (refused for a bad duration or without the tokens)."""
        seller = self.people[who].address
        error = None
        if duration < PARAMS.min_duration:
            error = "MarketDurationOutOfRange"
        elif self.ex.call(self.ex.token.functions.balanceOf(seller)) < energy_wh:
            error = "ERC20InsufficientBalance"
        self._expect(self.ex.market.functions.list(energy_wh, price, duration), seller, error)

    @precondition(lambda self: self.lots)
    @rule(data=st.data(), kind=BID_KINDS, raise_by=st.integers(0, PRICE))
    def bid(self, data: st.DataObject, kind: str, raise_by: int) -> None:
        """Someone bids, correctly or not; the expected refusal is predicted from the lot."""
        now = self.ex.pending_time()
        running = [i for i, s in self.lots.items() if s.status == LISTED and now < s.deadline]
        lot_id = self._choose(data, running, self._any_lot())
        seen = self.lots.get(lot_id)
        others = [a for a in self.actors if seen is None or a.address != seen.seller]
        bidder = self._choose(data, others, st.sampled_from(self.actors))
        lot = self.ex.lot(lot_id)
        minimum = lot.price_per_kwh + (INCREMENT if lot.buyer != ZERO else 0)
        price = max(0, minimum - 1) if kind == "too low" else minimum + raise_by
        value = deposit(lot.energy_wh, price)
        value = max(0, value + {"deposit short": -1, "deposit over": 1}.get(kind, 0))
        error = None
        if lot.status != LISTED:
            error = "MarketListingNotOpen"
        elif now >= lot.deadline:
            error = "MarketAuctionEnded"
        elif bidder.address == lot.seller:
            error = "MarketSellerCannotBid"
        elif kind == "too low":
            error = "MarketBidTooLow"
        elif kind != "valid":
            error = "MarketDepositMismatch"
        target = bidder.contract or self.ex.market
        self._expect(target.functions.bid(lot_id, price), bidder.sender, error, value)

    @precondition(lambda self: self.lots)
    @rule(data=st.data(), who=st.integers(0, 2))
    def finalize(self, data: st.DataObject, who: int) -> None:
        """Anyone ends an auction (refused before the deadline or twice)."""
        now = self.ex.pending_time()
        ended = [i for i, s in self.lots.items() if s.status == LISTED and now >= s.deadline]
        lot_id = self._choose(data, ended, self._any_lot())
        lot = self.ex.lot(lot_id)
        error = None
        if lot.status != LISTED:
            error = "MarketListingNotOpen"
        elif now < lot.deadline:
            error = "MarketAuctionNotEnded"
        self._expect(self.ex.market.functions.finalize(lot_id), self.people[who].address, error)

    @precondition(lambda self: self.lots)
    @rule(data=st.data(), role=st.sampled_from(["buyer", "seller", "seller", "other"]))
    def close_connection(self, data: st.DataObject, role: str) -> None:
        """The buyer (asking first, for its active trade), the seller (only once stalled) or an
        outsider closes a trade."""
        trades = [i for i, s in self.lots.items() if s.status == OPEN]
        lot_id = self._choose(data, trades, self._any_lot())
        lot = self.ex.lot(lot_id)
        wanted = {"buyer": lot.buyer, "seller": lot.seller}.get(role)
        closer = next((a for a in self.actors if a.address == wanted), None)
        if closer is None:  # an outsider, or the lot has no such party
            others = [a for a in self.actors if a.address not in (lot.buyer, lot.seller)]
            closer = data.draw(st.sampled_from(others), label="closer")
        error = None
        if lot.status != OPEN:
            error = "MarketTradeNotOpen"
        elif closer.address == lot.buyer:
            active = self.ex.call(self.ex.market.functions.activeTradeOf(lot.buyer)) == lot_id
            grace_ends = lot.close_requested_at + PARAMS.close_grace
            if active and lot.close_requested_at and self.ex.pending_time() < grace_ends:
                error = "MarketCloseAlreadyRequested"
        elif closer.address != lot.seller:
            error = "MarketNotTradeParty"
        elif self.ex.pending_time() < self._stalls_at(lot):
            error = "MarketTradeNotStalled"
        target = closer.contract or self.ex.market
        self._expect(target.functions.closeConnection(lot_id), closer.sender, error)

    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        """Someone, usually with credit, withdraws: gets exactly the credit, or nothing changes."""
        owed = self.ex.ledger.credited - self.ex.ledger.withdrawn
        useful = [a for a in self.actors if owed[a.address] > 0]
        actor = self._choose(data, useful, st.sampled_from(self.actors))
        credit = self.ex.call(self.ex.market.functions.creditOf(actor.address))
        error = None
        if credit == 0:
            error = "MarketNothingToWithdraw"
        elif actor.contract is not None:
            error = "MarketWithdrawalFailed"  # it refuses Ether; its credit must stay
        target = actor.contract or self.ex.market
        before = self.ex.balance(actor.address)
        if error is None:
            receipt, _ = self.ex.send(target.functions.withdraw(), actor.sender)
            gas = receipt["gasUsed"] * receipt["effectiveGasPrice"]
            assert self.ex.balance(actor.address) == before + credit - gas
        else:
            self._expect(target.functions.withdraw(), actor.sender, error)
            assert self.ex.call(self.ex.market.functions.creditOf(actor.address)) == credit

    @invariant()
    def conserved(self) -> None:
        """Ether and tokens are all accounted for."""
        assert check_invariants(self.ex) == []


def test_random_sequences_conserve_ether_and_tokens(chain: Chain):
    ex = exchange_of(chain)
    operator = chain.addresses[0]
    people = [
        Actor(chain.addresses[i], chain.addresses[i], None, chain.addresses[3 + i],
              chain.addresses[6 + i])
        for i in (1, 2, 3)
    ]
    griefer = chain.deploy_contract("RevertingBidder", ex.market.address)
    # The griefer's load meter never reports after its baseline: a buyer whose meter is silent.
    griefer_meter = chain.new_key("the griefer's silent load meter")
    ex.send(ex.registry.functions.offerMeter(griefer_meter, griefer.address, LOAD, RATED_W),
            operator)
    ex.send(griefer.functions.acceptMeter(ex.registry.address, griefer_meter), operator)
    ex.send(ex.reading(griefer_meter, 0), operator)
    actors = [*people, Actor(griefer.address, operator, griefer)]
    ex.accounts = {a.address for a in actors}
    registry = ex.registry.functions
    for person in people:
        for meter, kind in ((person.supply_meter, SUPPLY), (person.load_meter, LOAD)):
            ex.install(operator, meter, person.address, kind, 0)
    ex.advance(3_600)
    for person in people:
        ex.send(ex.reading(person.supply_meter, START_WH), operator)
    meters = {}
    for person in people:
        for meter in (person.supply_meter, person.load_meter):
            info = ex.call(registry.meterOf(meter))
            # energyWh, readAt, sequence; the carry is RATED_W x 3600 s - START_WH x 3600 Ws,
            # capped below one Wh, for the supply meters, none for the load meters' baselines.
            carry = MAX_CARRY_WS if meter == person.supply_meter else 0
            meters[meter] = (info[4], info[6], info[5], carry)
    # Run well ahead of the wall clock so that every block is its parent + 1 s: sequences, and
    # the timestamps the rules predict refusals from, replay identically when Hypothesis shrinks.
    ex.advance(30 * 86_400)
    assert check_invariants(ex) == []

    try:
        run_state_machine_as_test(
            lambda: MarketMachine(ex, actors, meters),
            settings=settings(
                max_examples=12,
                stateful_step_count=50,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        ex.close()


# --- the checker catches broken markets -----------------------------------------------------------

# name -> (a line of EnergyMarket.sol, what the broken market has instead)
MUTANTS = {
    "outbid deposit not credited": ("            _credits[previousBidder] += refund;\n", ""),
    "refund on close one wei too high": (
        "uint256 refund = _deposit(lotWh, price) - _paid(delivered, price) - fee;",
        "uint256 refund = _deposit(lotWh, price) - _paid(delivered, price) - fee + 1;",
    ),
    "delivered tokens never burned": (
        "        if (delivered != 0) _token.burnDelivered(delivered);\n", ""
    ),
}


@pytest.fixture(scope="module")
def mutant_markets() -> dict[str, tuple[list, str]]:
    """Each broken market's ABI and bytecode, compiled now with the project's compiler."""
    source = (CONTRACTS_DIR / "EnergyMarket.sol").read_text(encoding="utf-8")
    overrides = {}
    for i, (original, broken) in enumerate(MUTANTS.values()):
        assert source.count(original) == 1, f"EnergyMarket.sol changed: {original!r} not found"
        overrides[f"mutants/m{i}.sol"] = source.replace(original, broken)
    output, _ = compile_sources(list(overrides), overrides=overrides)
    markets = {}
    for name, unit in zip(MUTANTS, overrides, strict=True):
        compiled = output["contracts"][unit]["EnergyMarket"]
        markets[name] = (compiled["abi"], "0x" + compiled["evm"]["bytecode"]["object"])
    return markets


def fixed_sequence(ex: Exchange, chain: Chain) -> Iterator[str]:
    """A short market history touching every money and token path; yields after each step."""
    operator, seller, buyer, rival, pv, buyer_load, rival_load = chain.addresses[:7]
    market = ex.market.functions
    for meter, owner, kind in ((pv, seller, SUPPLY), (buyer_load, buyer, LOAD),
                               (rival_load, rival, LOAD)):
        ex.install(operator, meter, owner, kind, 0)
    yield "meters registered"
    ex.advance(3_600)
    ex.send(ex.reading(pv, 3_000), operator)
    yield "the seller's PV measured 3000 Wh"
    odd_price = PRICE + 7  # deposits round up, payments round down
    ex.send(market.list(999, odd_price, 300), seller)
    ex.send(market.list(1_000, PRICE, 300), seller)
    yield "two lots listed"
    ex.send(market.bid(1, odd_price), buyer, deposit(999, odd_price))
    yield "the buyer bid on lot 1"
    ex.send(market.bid(1, odd_price + INCREMENT), rival, deposit(999, odd_price + INCREMENT))
    yield "the rival outbid the buyer"
    ex.send(market.bid(2, PRICE), buyer, deposit(1_000, PRICE))
    yield "the buyer bid on lot 2"
    ex.advance(300)
    ex.send(market.finalize(1), operator)
    ex.send(market.finalize(2), operator)
    yield "both auctions finalized"
    ex.advance(60)
    ex.send(ex.reading(buyer_load, 401), operator)
    yield "the buyer's load measured 401 Wh"
    ex.send(market.closeConnection(2), buyer)
    ex.advance(1)
    ex.send(ex.reading(buyer_load, 401), operator)  # the next reading (a heartbeat) closes it
    yield "the buyer closed its trade"
    ex.send(ex.reading(rival_load, 999), operator)
    yield "the rival's load measured its whole lot"
    # The rival's refund is the 1 wei by which its rounded-up deposit exceeds the rounded-down
    # payment for the whole lot, so all three have credit.
    for account in (seller, buyer, rival):
        ex.send(market.withdraw(), account)
    yield "everyone withdrew"


def first_violation(ex: Exchange, chain: Chain) -> tuple[str, list[str]] | None:
    """Run the fixed sequence, checking after each step; return the first step that broke a rule."""
    for step in fixed_sequence(ex, chain):
        problems = check_invariants(ex)
        if problems:
            return step, problems
    return None


def test_the_checker_passes_the_real_market_through_the_fixed_sequence(chain: Chain):
    art = load_artifact("EnergyMarket")
    ex = deploy_exchange(chain, art.abi, art.bytecode)
    try:
        steps = []
        for step in fixed_sequence(ex, chain):
            assert check_invariants(ex) == [], step
            steps.append(step)
        assert steps[-1] == "everyone withdrew"
        assert ex.balance(ex.market.address) == 0
        assert ex.call(ex.token.functions.balanceOf(ex.market.address)) == 0
    finally:
        ex.close()


@pytest.mark.parametrize(
    ("mutant", "caught_after", "message"),
    [
        ("outbid deposit not credited", "the rival outbid the buyer", "market holds"),
        ("refund on close one wei too high", "the buyer closed its trade", "market holds"),
        ("delivered tokens never burned", "the buyer closed its trade", "burned 0 Wh"),
    ],
)
def test_the_checker_catches_a_broken_market(
    chain: Chain, mutant_markets: dict, mutant: str, caught_after: str, message: str
):
    ex = deploy_exchange(chain, *mutant_markets[mutant])
    try:
        violation = first_violation(ex, chain)
    finally:
        ex.close()
    assert violation is not None, f"{mutant} went unnoticed"
    step, problems = violation
    assert step == caught_after
    assert any(p.startswith(message) for p in problems), problems
