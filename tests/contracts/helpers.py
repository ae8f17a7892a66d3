"""Small helpers for the contract suites: expected events, meter readings, auctions, state views.

Timing: the session chain is snapshotted right after deployment and every test reverts to it, so
late in a session the wall clock is ahead of the snapshot's block time. eth-tester stamps a new
block with max(wall clock, parent + 1), which makes `chain.advance(small)` raise and block times
unpredictable. Each suite therefore calls `run_ahead_of_wall_clock` first; from then on every block
is exactly one second after the previous one, and `chain.advance(s)` mines the next transaction
exactly `s` seconds after the latest block.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from enum import IntEnum
from typing import Any, NamedTuple

from tests.contracts.conftest import PARAMS, Chain, Event

ZERO_ADDRESS = "0x" + "00" * 20
SUPPLY = 0  # MeterRegistry.MeterKind.Supply
LOAD = 1  # MeterRegistry.MeterKind.Load
SUPPLY_W = 5_000  # rated power of the seller's PV supply meter
LOAD_W = 3_000  # rated power of the buyer's load meter
DAY = 86_400


class Status(IntEnum):
    """EnergyMarket.Status."""

    NONE = 0
    LISTED = 1
    OPEN = 2
    CLOSED = 3
    EXPIRED = 4


class Lot(NamedTuple):
    """EnergyMarket.lotOf, with names."""

    status: Status
    seller: str
    buyer: str
    energy_wh: int
    price_per_kwh: int
    deadline: int
    delivered_wh: int
    active_since: int
    deposit_wei: int
    paid_wei: int
    close_requested_at: int = 0


class MeterStatus(IntEnum):
    """MeterRegistry.MeterStatus."""

    NONE = 0
    OFFERED = 1
    ACTIVE = 2
    DECLINED = 3
    DEACTIVATED = 4


class Meter(NamedTuple):
    """MeterRegistry.meterOf, with names."""

    owner: str
    kind: int
    status: MeterStatus
    rated_power_w: int
    energy_wh: int
    sequence: int
    read_at: int


# --- expected values -------------------------------------------------------------------------


def ev(contract: str, name: str, **args: Any) -> Event:
    """The event `contract` should emit, as `chain.events` decodes it."""
    return Event(contract, name, args)


def registry_event(name: str, **args: Any) -> Event:
    """A MeterRegistry event."""
    return Event("MeterRegistry", name, args)


def recorded(meter: str, energy_wh: int, sequence: int, delta_wh: int) -> Event:
    """The registry's ReadingRecorded event of an accepted reading."""
    return registry_event(
        "ReadingRecorded", meter=meter, energyWh=energy_wh, sequence=sequence, deltaWh=delta_wh
    )


def market_event(name: str, **args: Any) -> Event:
    """An EnergyMarket event."""
    return Event("EnergyMarket", name, args)


def transfer(sender: str, to: str, value: int) -> Event:
    """An EnergyToken Transfer event (its `from` argument is a Python keyword)."""
    return Event("EnergyToken", "Transfer", {"from": sender, "to": to, "value": value})


def deposit_wei(energy_wh: int, price_per_kwh: int) -> int:
    """Escrow for a whole lot: rounded up, so it covers every Wh."""
    return -(-energy_wh * price_per_kwh // 1000)


def paid_wei(delivered_wh: int, price_per_kwh: int) -> int:
    """What the seller is owed for the first `delivered_wh`: rounded down."""
    return delivered_wh * price_per_kwh // 1000


# --- reading the chain -----------------------------------------------------------------------


def run_ahead_of_wall_clock(chain: Chain) -> None:
    """Move the chain a day past the wall clock so block times are exact (see module doc)."""
    chain.advance(DAY)


def block_time(chain: Chain, receipt: dict) -> int:
    """Timestamp of the block that mined `receipt`."""
    return chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"]


def gas_cost(receipt: dict) -> int:
    """Wei the sender paid for gas."""
    return receipt["gasUsed"] * receipt["effectiveGasPrice"]


def gas_spent_since(chain: Chain, first_block: int) -> dict[str, int]:
    """Wei each sender paid for gas in the blocks from `first_block` to the latest."""
    spent: dict[str, int] = defaultdict(int)
    for number in range(first_block, chain.w3.eth.block_number + 1):
        for tx_hash in chain.w3.eth.get_block(number)["transactions"]:
            receipt = chain.w3.eth.get_transaction_receipt(tx_hash)
            spent[receipt["from"]] += gas_cost(receipt)
    return spent


def lot_of(chain: Chain, lot_id: int) -> Lot:
    """The market's view of one lot."""
    info = chain.market.functions.lotOf(lot_id).call()
    return Lot(Status(info[0]), *info[1:])


def meter_of(chain: Chain, meter: str) -> Meter:
    """The registry's view of one meter."""
    owner, kind, status, rated, energy, sequence, read_at = (
        chain.registry.functions.meterOf(meter).call()
    )
    return Meter(owner, kind, MeterStatus(status), rated, energy, sequence, read_at)


def credit(chain: Chain, account: str) -> int:
    """Withdrawable market credit of `account`."""
    return chain.market.functions.creditOf(account).call()


def tokens(chain: Chain, account: str) -> int:
    """Energy token balance (Wh) of `account`."""
    return chain.token.functions.balanceOf(account).call()


def supply(chain: Chain) -> int:
    """Energy token total supply (Wh)."""
    return chain.token.functions.totalSupply().call()


def queue(chain: Chain, buyer: str) -> list[int]:
    """The buyer's open trades in settlement order, walked through the market's views."""
    head, tail = chain.market.functions.openTradesOf(buyer).call()
    order = []
    trade = head
    while trade:
        order.append(trade)
        trade = chain.market.functions.nextTradeOfBuyer(trade).call()
    assert (order[-1] if order else 0) == tail, "the queue's tail is not its last element"
    return order


def observe(chain: Chain, accounts: Iterable[str], meters: Iterable[str] = ()) -> dict[str, Any]:
    """What a refused call must leave alone: `accounts` and the market, every lot, `meters`."""
    accounts = list(accounts)
    holders = [*accounts, chain.market.address]
    market = chain.market.functions
    count = market.lotCount().call()
    return {
        "ether": {a: chain.balance(a) for a in holders},
        "tokens": {a: tokens(chain, a) for a in holders},
        "supply": supply(chain),
        "credits": {a: credit(chain, a) for a in accounts},
        "lots": [market.lotOf(i).call() for i in range(1, count + 1)],
        "meters": {m: chain.registry.functions.meterOf(m).call() for m in meters},
    }


@contextlib.contextmanager
def unchanged(chain: Chain, accounts: Iterable[str], meters: Iterable[str] = ()) -> Iterator[None]:
    """Assert that the block ends with the same observable state it started with."""
    accounts = list(accounts)
    meters = list(meters)
    before = observe(chain, accounts, meters)
    yield
    assert observe(chain, accounts, meters) == before


# --- acting on the chain ---------------------------------------------------------------------


def offer_meter(
    chain: Chain, operator: str, meter: str, owner: str, kind: int, rated_w: int
) -> dict:
    """The operator offers `meter` to `owner`; return the receipt."""
    return chain.send(chain.registry.functions.offerMeter(meter, owner, kind, rated_w), operator)


def accept_meter(chain: Chain, owner: str, meter: str) -> dict:
    """`owner` accepts the offer of `meter`; return the receipt."""
    return chain.send(chain.registry.functions.acceptMeter(meter), owner)


def register_meter(
    chain: Chain, operator: str, meter: str, owner: str, kind: int, rated_w: int
) -> dict:
    """Offer `meter` to `owner` and let `owner` accept it; return the acceptance's receipt."""
    offer_meter(chain, operator, meter, owner, kind, rated_w)
    return accept_meter(chain, owner, meter)


def signed(
    chain: Chain,
    meter: str,
    energy_wh: int,
    sequence: int | None = None,
    block_number: int | None = None,
) -> tuple[str, int, int, int, bytes]:
    """A reading signed by `meter`'s own key for this chain and registry, as `report` takes it.

    `sequence` defaults to the next one after the meter's last accepted reading; the reading
    signs block `block_number` (default: the latest block) with its real hash.
    """
    if sequence is None:
        sequence = meter_of(chain, meter).sequence + 1
    if block_number is None:
        block_number = chain.w3.eth.block_number
    signature = chain.sign_reading(meter, energy_wh, sequence, block_number)
    return (meter, energy_wh, sequence, block_number, signature)


def report(
    chain: Chain,
    meter: str,
    energy_wh: int,
    sequence: int | None = None,
    sender: str | None = None,
    block_number: int | None = None,
) -> dict:
    """Carry one reading signed by the meter to the chain (from the carrier, not the meter);
    it signs block `block_number` (default: the latest)."""
    fn = chain.registry.functions.report(*signed(chain, meter, energy_wh, sequence, block_number))
    return chain.send(fn, sender or chain.carrier)


def packed(readings: list[tuple[str, int, int, int, bytes]]) -> bytes:
    """Readings as `reportBatch` takes them: meter(20) energyWh(8) sequence(8) blockNumber(8)
    r(32) s(32) v(1)."""
    return b"".join(
        bytes.fromhex(meter[2:]) + energy_wh.to_bytes(8, "big") + sequence.to_bytes(8, "big")
        + block_number.to_bytes(8, "big") + signature
        for meter, energy_wh, sequence, block_number, signature in readings
    )


def report_batch(chain: Chain, readings: list[tuple], sender: str | None = None) -> dict:
    """Carry several signed readings in one transaction; return the receipt."""
    fn = chain.registry.functions.reportBatch(packed(readings))
    return chain.send(fn, sender or chain.carrier)


def seconds_for(energy_wh: int, rated_w: int) -> int:
    """Shortest time in which a meter rated `rated_w` can measure `energy_wh`."""
    return max(1, -(-energy_wh * 3600 // rated_w))


def measure(chain: Chain, meter: str, energy_wh: int) -> dict:
    """Let `meter` measure `energy_wh` at its rated power, then report the new counter."""
    info = meter_of(chain, meter)
    assert info.read_at, "the meter needs its baseline reading first"
    chain.advance(seconds_for(energy_wh, info.rated_power_w))
    return report(chain, meter, info.energy_wh + energy_wh)


def install_meter(
    chain: Chain,
    operator: str,
    meter: str,
    owner: str,
    kind: int,
    rated_w: int,
    baseline_wh: int = 10_000,
) -> None:
    """Offer and accept `meter`, then send its baseline reading (the counter at installation)."""
    register_meter(chain, operator, meter, owner, kind, rated_w)
    report(chain, meter, baseline_wh)


def mint(chain: Chain, operator: str, meter: str, owner: str, energy_wh: int) -> None:
    """Give `owner` `energy_wh` tokens the honest way: their supply meter measures the energy."""
    if meter_of(chain, meter).owner == ZERO_ADDRESS:
        install_meter(chain, operator, meter, owner, SUPPLY, SUPPLY_W)
    measure(chain, meter, energy_wh)


def list_lot(
    chain: Chain, seller: str, energy_wh: int, price_per_kwh: int, duration: int | None = None
) -> int:
    """List `energy_wh` at a start price; return the listing id."""
    duration = PARAMS.min_duration if duration is None else duration
    fn = chain.market.functions.list(energy_wh, price_per_kwh, duration)
    listing_id = fn.call({"from": seller})
    chain.send(fn, seller)
    return listing_id


def ensure_load_meter(chain: Chain, account: str, rated_w: int = LOAD_W) -> str:
    """`account`'s active load meter; one is offered, accepted and read first if it has none."""
    meter = chain.registry.functions.loadMeterOf(account).call()
    if meter == ZERO_ADDRESS:
        meter = chain.new_key(f"load meter of {account}")
        install_meter(chain, chain.addresses[0], meter, account, LOAD, rated_w)
    return meter


def heartbeat(chain: Chain, meter: str, seconds: int = 1) -> dict:
    """`seconds` later, `meter` reports its unchanged counter; return the receipt."""
    chain.advance(seconds)
    return report(chain, meter, meter_of(chain, meter).energy_wh)


def buyer_closes(chain: Chain, trade_id: int, buyer: str) -> dict:
    """The buyer closes `trade_id`: asks, and (for the active trade) its meter's next reading,
    a heartbeat a second later, settles the tail and closes it; return the closing receipt."""
    receipt = chain.send(chain.market.functions.closeConnection(trade_id), buyer)
    if lot_of(chain, trade_id).status != Status.OPEN:
        return receipt
    return heartbeat(chain, chain.registry.functions.loadMeterOf(buyer).call())


def place_bid(chain: Chain, bidder: str, listing_id: int, price_per_kwh: int) -> dict:
    """Bid with exactly the deposit the lot needs (the bidder gets a load meter first if it has
    none: only accounts with one may bid); return the receipt."""
    ensure_load_meter(chain, bidder)
    energy_wh = chain.market.functions.lotOf(listing_id).call()[3]
    return chain.send(
        chain.market.functions.bid(listing_id, price_per_kwh),
        bidder,
        value=deposit_wei(energy_wh, price_per_kwh),
    )


def advance_to(chain: Chain, timestamp: int) -> None:
    """Mine the next transaction at `timestamp` (which must be later than the latest block)."""
    assert timestamp > chain.now(), "cannot go back in time"
    chain.advance(timestamp - chain.now())


def end_auction(chain: Chain, listing_id: int, caller: str) -> dict:
    """Wait for the deadline (if not yet reached) and finalize; return the receipt."""
    deadline = lot_of(chain, listing_id).deadline
    if deadline > chain.now():
        advance_to(chain, deadline)
    return chain.send(chain.market.functions.finalize(listing_id), caller)


def open_trade(chain: Chain, seller: str, buyer: str, energy_wh: int, price_per_kwh: int) -> int:
    """List, bid at the start price and finalize: an open trade; return its id."""
    trade_id = list_lot(chain, seller, energy_wh, price_per_kwh)
    place_bid(chain, buyer, trade_id, price_per_kwh)
    end_auction(chain, trade_id, seller)
    return trade_id
