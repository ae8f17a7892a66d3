"""Fixtures for the bridge suites: a chain with the contracts, emulated meters, bridges, a listener.

The in-process chain is the process-wide `inprocess://bridge-tests` (so the CLI, run in this
process, reaches the same chain), mining every 0.25 s while transactions wait. Every test makes
fresh accounts, meters and device keys, so tests share the chain without sharing state. Every
emulator, bridge and listener a test starts is stopped by its fixture.
"""

from __future__ import annotations

import itertools
import math
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from dapp.bridge import BridgeMeter, MeterBridge
from dapp.chain.client import ChainClient, LotStatus
from dapp.chain.deploy import Deployment, MarketParameters, deploy
from dapp.chain.inprocess import InProcessChain, close_shared_chains, shared_chain
from dapp.chain.listener import ChainEvent, EventListener
from dapp.wallet.keystore import Keystore
from hardware.emulator import EmulatedMeter, MeterMemory, MeterServer, Microgrid
from hardware.models import LeadAcidBattery, LoadProfile, Plant, SolarArray
from hardware.protocol import (
    ErrorCode,
    Identity,
    LineBuffer,
    MeterProtocolError,
    ReadReply,
    encode_error,
    encode_frame,
    encode_ok,
    parse_reply,
    parse_request,
)
from hardware.signing import BlockRef, Domain, sign_reading
from tests.support import SigningMeter, wait_for  # noqa: F401 - wait_for: for the tests

ETHER = 10**18
PRICE = 10**15  # wei per kWh: 0.001 ether
CHAIN_NAME = "bridge-tests"
PASSPHRASE = "correct horse battery staple"  # noqa: S105 - a test keystore's passphrase
# The minimum charge is 1 Wh here: these suites check metered delivery to the Wh (the walk-away
# charge has its own contract tests).
PARAMS = MarketParameters(min_duration=1, max_duration=3600, min_increment_per_kwh=1,
                          stall_timeout=600, close_grace=60, min_charge_wh=1)
# The emulated plant runs 36x faster than real time: a PV peak of 800 W fills the supply
# counter with 8 Wh a second, an 800 W load drains it at 8 Wh a second. The meters are rated
# 1.5x their peak, so the registry's plausibility check has headroom (the emulator warns when
# the accelerated rating exceeds the registry's 16-bit limit; 1200 W x 36 is well inside).
ACCELERATION = 36.0
PV_PEAK_W = 800.0
LOAD_W = 800.0
SUPPLY_RATED_W = 1200.0
LOAD_RATED_W = 1200.0
# Fast settings so that a test sees several polls and readings per second.
# The in-process chain makes blocks only while transactions wait, so a quiet test would look
# like a halted chain after a few seconds: the bridges here call it halted after a minute.
FAST = dict(poll_interval=0.2, submit_interval=0.5, read_timeout=0.5,
            reconnect_backoff=(0.2, 1.0), registry_recheck=1.0, receipt_timeout=30.0,
            halt_after=60.0, head_interval=0.2)


class GridClock:
    """A monotonic clock that a test can freeze (the emulated counters stop) and resume."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._frozen: float | None = None
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """Now, or the moment of freezing."""
        with self._lock:
            return self._frozen if self._frozen is not None else time.monotonic() - self._offset

    def freeze(self) -> None:
        """Stop time: every emulated counter on this clock stands still."""
        with self._lock:
            if self._frozen is None:
                self._frozen = time.monotonic() - self._offset

    def resume(self) -> None:
        """Let time run again from where it stopped."""
        with self._lock:
            if self._frozen is not None:
                self._offset = time.monotonic() - self._frozen
                self._frozen = None


class RecordingMeter(EmulatedMeter):
    """The emulated meter, remembering every relay command it carried out (True: close)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.relay_commands: list[bool] = []

    def set_relay(self, closed: bool) -> None:
        """Record, then act like the emulator."""
        self.relay_commands.append(bool(closed))
        super().set_relay(closed)


@dataclass
class World:
    """A chain with the contracts, and helpers to make funded accounts, meters and trades."""

    client: ChainClient
    deployment: Deployment
    operator: LocalAccount
    fund: Callable[[list[str], int], None]
    advance: Callable[[int], None]
    rpc_url: str
    tmp: Path
    w3: Web3
    _count: int = 0
    _faucets: dict[str, SigningMeter] = field(default_factory=dict)

    def account(self, ether: int = 5) -> LocalAccount:
        """A fresh account holding `ether`."""
        account = Account.create()
        self.fund([account.address], ether * ETHER)
        return account

    def accounts(self, n: int, ether: int = 5) -> list[LocalAccount]:
        """`n` fresh funded accounts (funded together: fewer blocks to wait for)."""
        made = [Account.create() for _ in range(n)]
        self.fund([a.address for a in made], ether * ETHER)
        return made

    def give(self, server: MeterServer, owner: LocalAccount) -> str:
        """The operator offers the emulated meter on `server` to `owner`, who accepts it."""
        meter = server.meter
        self.offer(server, owner.address)
        self.client.wait(self.client.accept_meter(owner, meter.address))
        return meter.address

    def offer(self, server: MeterServer, owner: str, kind: str | None = None) -> str:
        """The operator offers the emulated meter on `server` to `owner` (not yet accepted)."""
        meter = server.meter
        self.client.wait(self.client.offer_meter(self.operator, meter.address, owner,
                                                 kind or meter.kind,
                                                 meter.identity.rated_power_w))
        return meter.address

    def mint(self, owner: LocalAccount, energy_wh: int) -> None:
        """Give `owner` energy tokens through a registry-checked supply meter (a faucet)."""
        faucet = self._faucets.get(owner.address)
        if faucet is None:
            faucet = self._faucets[owner.address] = SigningMeter("supply", 65535)
            faucet.offer_to(self.client, self.operator, owner)
            assert faucet.report(self.client, self.operator, 1).accepted  # the baseline
        self.advance(math.ceil(energy_wh * 3600 / 65535) + 1)
        outcome = faucet.report(self.client, self.operator, faucet.energy_wh + energy_wh)
        assert outcome.accepted, outcome

    def load_meter(self, buyer: LocalAccount) -> str:
        """The buyer's accepted load meter (bidding needs one): a meter the test holds if the
        buyer has none yet."""
        meter = self.client.load_meter_of(buyer.address)
        if meter is None:
            held = SigningMeter("load", 65535)
            held.offer_to(self.client, self.operator, buyer)
            meter = held.address
        return meter

    def readings_on_chain(self, meter: str) -> int:
        """How many of `meter`'s readings the registry accepted (0: none, or not registered)."""
        registered = self.client.meter(meter)
        return registered.sequence if registered is not None else 0

    def trade(self, seller: LocalAccount, buyer: LocalAccount, energy_wh: int,
              price: int = PRICE) -> int:
        """List, bid and finalize: an open trade between `seller` and `buyer`; its id."""
        # A minute of chain time: the chain's clock keeps the wall clock's pace, and on a busy
        # machine mining the listing and the bid can take many seconds.
        self.load_meter(buyer)
        self.client.wait(self.client.sell(seller, energy_wh, price, 60))
        lot_id = self.client.lot_count()
        assert self.client.lot(lot_id).seller == seller.address
        self.client.wait(self.client.bid(buyer, lot_id, price))
        self.advance(61)
        self.client.wait(self.client.finalize(buyer, lot_id))
        assert self.client.lot(lot_id).status is LotStatus.OPEN
        return lot_id

    def close(self, buyer: LocalAccount, trade_id: int) -> None:
        """The buyer closes the connection."""
        self.client.wait(self.client.close_connection(buyer, trade_id))

    def chain_client(self, data_dir: Path | None = None) -> ChainClient:
        """A new ChainClient on the same chain (a new process), in `data_dir` or a new one."""
        self._count += 1
        client = ChainClient(self.rpc_url, data_dir or self.tmp / f"client{self._count}",
                             w3=self.w3 if self.rpc_url.startswith("inprocess") else None)
        client.use_deployment(self.deployment)
        return client

@pytest.fixture(scope="session")
def inprocess_chain() -> Iterator[InProcessChain]:
    """The process-wide in-process chain `inprocess://bridge-tests`, mining while busy."""
    chain = shared_chain(CHAIN_NAME)
    chain.empty_blocks = False  # a short chain: eth-tester slows down with history
    chain.start_mining(0.25)
    yield chain
    close_shared_chains(CHAIN_NAME)


@pytest.fixture(scope="session")
def operator_keystore(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A data directory whose keystore holds the grid operator's key: (data dir, address)."""
    data_dir = tmp_path_factory.mktemp("operator-data")
    keystore = Keystore(data_dir / "keystore", scrypt_n=2)
    return data_dir, keystore.create(PASSPHRASE, label="operator")


@pytest.fixture(scope="session")
def world_session(inprocess_chain: InProcessChain, operator_keystore: tuple[Path, str],
                  tmp_path_factory: pytest.TempPathFactory) -> World:
    """The contracts deployed on the in-process chain by a keystore operator."""
    data_dir, address = operator_keystore
    operator = Keystore(data_dir / "keystore").unlock(address, PASSPHRASE)
    tmp = tmp_path_factory.mktemp("world")
    url = f"inprocess://{CHAIN_NAME}"
    client = ChainClient(url, tmp / "client0", w3=inprocess_chain.w3)
    dev = inprocess_chain.accounts[0]

    def fund(addresses: list[str], wei: int) -> None:
        hashes = [client.send_ether(dev, a, wei) for a in addresses]
        for tx in hashes:
            client.wait(tx)

    def advance(seconds: int) -> None:
        # One block `seconds` after the latest (many blocks would also age signed readings).
        with inprocess_chain.lock:
            tester = inprocess_chain.tester
            latest = tester.get_block_by_number("latest")["timestamp"]
            pending = tester.get_block_by_number("pending")["timestamp"]
            tester.time_travel(max(latest + seconds, pending + 1))

    fund([operator.address], 1000 * ETHER)
    # Deploy with every transaction mined at once (quicker than waiting for the block timer).
    with inprocess_chain.lock:
        inprocess_chain.tester.enable_auto_mine_transactions()
        try:
            deployment = deploy(inprocess_chain.w3, operator, PARAMS)
        finally:
            inprocess_chain.tester.disable_auto_mine_transactions()
    client.use_deployment(deployment)
    return World(client, deployment, operator, fund, advance, url, tmp, inprocess_chain.w3)


@pytest.fixture
def world(world_session: World) -> World:
    """The shared in-process world (fresh accounts per test keep tests apart)."""
    return world_session


@dataclass
class PlantMeters:
    """Emulated meters on one shared plant: the producer's supply, the consumer's load."""

    clock: GridClock
    grid: Microgrid
    servers: list[MeterServer]

    def meter(self, kind: str, *, watchdog_s: int = 10, transport: str = "tcp",
              meter_id: str | None = None) -> MeterServer:
        """Serve a new emulated meter of `kind` on this plant."""
        rated = SUPPLY_RATED_W if kind == "supply" else LOAD_RATED_W
        meter = RecordingMeter(kind, self.grid, meter_id=meter_id, rated_power_w=rated,
                               watchdog_s=watchdog_s, state=MeterMemory.ephemeral())
        server = MeterServer(meter, transport=transport)
        self.servers.append(server)
        server.start()
        return server


@pytest.fixture
def plant() -> Iterator[PlantMeters]:
    """A sunny noon plant at 36x speed, with a factory for meters on it; all stopped after."""
    clock = GridClock()
    grid = Microgrid(
        Plant(pv=SolarArray(peak_w=PV_PEAK_W),
              battery=LeadAcidBattery(capacity_wh=20_000, soc=0.5),
              load=LoadProfile.constant(LOAD_W), time_s=12 * 3600.0),
        acceleration=ACCELERATION, clock=clock)
    household = PlantMeters(clock, grid, [])
    yield household
    for server in household.servers:
        server.stop()


@pytest.fixture
def bridges(world: World) -> Iterator[Callable[..., MeterBridge]]:
    """Factory: a started MeterBridge with its own ChainClient; all stopped after the test."""
    made: list[MeterBridge] = []

    def make(meters: list[BridgeMeter], client: ChainClient | None = None,
             **kwargs: Any) -> MeterBridge:
        options = {"submitter": world.operator, **FAST, **kwargs}
        bridge = MeterBridge(client or world.chain_client(), meters, **options)
        made.append(bridge)
        bridge.start()
        return bridge

    yield make
    for bridge in made:
        bridge.stop(timeout=5)


class Listener:
    """The process's one event listener (as the web server runs it), from the current block."""

    _made = itertools.count()  # a state file per listener: ids are reused, and a reused file
                               # would resume where an earlier test's listener stopped

    def __init__(self, world: World) -> None:
        head = world.client.block_number()
        self.listener = EventListener(world.w3, world.deployment,
                                      world.tmp / f"listener-{next(self._made)}.json",
                                      start_block=head + 1)
        self.events: list[ChainEvent] = []
        self.listener.subscribe(self.events.append)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.listener.run, args=(self._stop, 0.1),
                                        daemon=True)
        self._thread.start()

    def subscribe(self, callback: Callable[[ChainEvent], None]) -> Callable[[], None]:
        """Subscribe like the web server does; returns the unsubscribe function."""
        return self.listener.subscribe(callback)

    def readings(self, meter: str) -> list[int]:
        """Counters of every ReadingRecorded of `meter` seen so far."""
        return [e.args["energyWh"] for e in self._recorded(meter)]

    def sequences(self, meter: str) -> list[int]:
        """Sequence numbers of every ReadingRecorded of `meter` seen so far."""
        return [e.args["sequence"] for e in self._recorded(meter)]

    def _recorded(self, meter: str) -> list[ChainEvent]:
        return [e for e in list(self.events)
                if e.name == "ReadingRecorded" and e.args["meter"] == meter]

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def listener(world: World) -> Iterator[Listener]:
    """A running listener; stopped after the test."""
    running = Listener(world)
    yield running
    running.stop()


def relay(server: MeterServer) -> bool:
    """Whether the emulated meter's relay is closed now."""
    return server.meter.relay_closed


def energy(server: MeterServer) -> int:
    """The emulated meter's counter as READ reports it (whole Wh; a reading nobody forwards)."""
    return server.meter.reading(NO_BLOCK).energy_wh


def trade_scenario(world: World, plant: PlantMeters, make_bridge: Callable[..., MeterBridge],
                   listener: Listener) -> None:
    """Producer and consumer meters on one plant, bridged: mint, trade, pay, close.

    Asserts what a user sees: the seller's tokens are exactly the energy the supply meter
    measured, the seller's credit is price x the energy the buyer's load meter measured during
    the trade, both relays close when the trade opens and open when the buyer closes it, and no
    signed reading reaches the chain twice.
    """
    client = world.client
    seller, buyer = world.accounts(2)
    supply, load = plant.meter("supply"), plant.meter("load")
    supply_key, load_key = world.give(supply, seller), world.give(load, buyer)  # addresses
    bridge = make_bridge([BridgeMeter(supply.url, supply_key, seller.address, "supply"),
                          BridgeMeter(load.url, load_key, buyer.address, "load")])
    listener.subscribe(bridge.on_event)

    def accepted(meter: str) -> int:
        registered = client.meter(meter)
        return registered.cumulative_wh if registered.read_at else -1

    wait_for(lambda: accepted(supply_key) >= 0 and accepted(load_key) >= 0, what="baselines")
    supply_base, load_base = accepted(supply_key), accepted(load_key)
    lot = 60  # delivery is stopped at 4 Wh or more: room for a late poll on a busy machine
    wait_for(lambda: client.token_balance(seller.address) >= lot, timeout=30, what="tokens")
    assert not relay(supply) and not relay(load)  # no trade yet: no power flows
    assert accepted(load_key) == load_base  # and the consumer's meter counted nothing

    trade_id = world.trade(seller, buyer, lot)
    wait_for(lambda: relay(supply) and relay(load), timeout=5, what="relays closed")
    wait_for(lambda: energy(load) >= load_base + 4, step=0.01, what="delivery")
    plant.clock.freeze()  # counters stand still: the chain must catch up exactly
    final_supply, final_load = energy(supply), energy(load)
    wait_for(lambda: accepted(supply_key) == final_supply and accepted(load_key) == final_load,
             timeout=15, what="final readings on chain")

    trade = client.lot(trade_id)
    delivered = final_load - load_base
    assert 0 < delivered < lot and trade.status is LotStatus.OPEN
    assert trade.delivered_wh == delivered
    assert client.credit_of(seller.address) == trade.paid_wei == delivered * PRICE // 1000
    load_state = lambda: bridge.meter_state(load_key)  # noqa: E731
    wait_for(lambda: load_state().last_accepted_wh == final_load, what="bridge state")
    assert load_state().relay_closed is True and load_state().energy_wh == final_load

    world.close(buyer, trade_id)  # two-phase: the relays open at once ...
    wait_for(lambda: not relay(supply) and not relay(load), timeout=5, what="relays open")
    # ... and the buyer's next reading settles the tail (nothing: the counters stood still).
    wait_for(lambda: client.lot(trade_id).status is LotStatus.CLOSED, timeout=10,
             what="the trade closed by the next reading")
    trade = client.lot(trade_id)
    assert trade.delivered_wh == delivered
    # A listener may deliver an event again (at-least-once): a replayed TradeOpened of the
    # closed trade must not close a relay, because the bridge asks the chain, not the event.
    opened = [e for e in list(listener.events)
              if e.name == "TradeOpened" and e.args["tradeId"] == trade_id]
    assert opened
    for event in opened:
        bridge.on_event(event)
    time.sleep(0.5)
    assert not relay(supply) and not relay(load)
    # Minted from the first accepted reading (the baseline, which mints nothing): on a busy
    # machine a second reading may be accepted before `supply_base` was read.
    wait_for(lambda: listener.readings(supply_key)[-1:] == [final_supply],
             what="the listener has the final reading")
    first_supply = listener.readings(supply_key)[0]
    assert first_supply <= supply_base
    minted = final_supply - first_supply
    assert minted > lot
    # Minted exactly what was measured; the delivered part was burned, the rest came back.
    assert client.token_balance(seller.address) == minted - delivered
    assert client.credit_of(buyer.address) == trade.deposit_wei - trade.paid_wei
    for key in (supply_key, load_key):
        counters, sequences = listener.readings(key), listener.sequences(key)
        assert counters and counters == sorted(counters)  # never backwards
        assert sequences == sorted(set(sequences))  # each signed reading once
    wait_for(lambda: all(s.relay_closed is False and s.online for s in bridge.state()),
             what="bridge state shows open relays")


FAKE_KEY = bytes(range(1, 33))  # the damaged "meter"'s key: a fixed test key, not a secret
FAKE_ADDRESS = Account.from_key(FAKE_KEY).address
FAKE_DOMAIN = Domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
# The block of a reading nobody forwards (no chain has this hash at block 0).
NO_BLOCK = BlockRef(0, bytes(32))


class DamagedMeter:
    """A TCP "meter" that answers every request with a damaged or misleading reply.

    Replies are random bytes, truncated or bit-flipped frames, frames with a valid CRC but
    malformed fields, replies to another command, ERR replies, over-long lines and echoes. An ID
    is sometimes answered correctly (so the bridge goes on to READ); a READ never is. Every
    RELAY request is recorded (True: close).
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.replies = 0
        self.relay_requests: list[bool] = []
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(4)
        self._server.settimeout(0.1)
        self.url = f"socket://127.0.0.1:{self._server.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> DamagedMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.1)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                lines = LineBuffer()
                while not self._stop.is_set():
                    try:
                        data = conn.recv(4096)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                    if not data:
                        break
                    for line in lines.feed(data):
                        try:
                            conn.sendall(self._answer(line))
                        except OSError:
                            break
                        self.replies += 1

    def _answer(self, line: bytes | None) -> bytes:
        try:
            request = parse_request(line or b"")
        except MeterProtocolError:
            request = None
        if request is not None and request.command == "RELAY":
            self.relay_requests.append(bool(request.relay))
        seq = request.seq if request else 0
        command = request.command if request else "READ"
        rng = self.rng
        counter, sequence = rng.randrange(10**6), rng.randrange(1, 10**6)
        block = request.block if request and request.block else NO_BLOCK
        reading = ReadReply(counter, rng.uniform(0, 900), 24.5, 1.2, rng.random() < 0.5,
                                rng.randrange(10**6), sequence,
                                sign_reading(FAKE_KEY, FAKE_DOMAIN, counter, sequence, block),
                                block)
        identity = Identity("fake", "fuzz-1", "load", 1200, 10, FAKE_ADDRESS, FAKE_DOMAIN)
        valid = {
            "ID": encode_ok(seq, "ID", identity.fields()),
            "READ": encode_ok(seq, "READ", reading.fields()),
            "RELAY": encode_ok(seq, "RELAY", ("0",)),
            "HB": encode_ok(seq, "HB", ("0",)),
        }[command]
        if command == "ID" and rng.random() < 0.3:
            return valid  # let the bridge get as far as READ sometimes
        choice = rng.randrange(10)
        if choice == 0:
            reply = bytes(rng.choice(range(32, 127)) for _ in range(rng.randrange(1, 60)))
        elif choice == 1:
            reply = bytes(b for b in rng.randbytes(rng.randrange(1, 80)) if b != 10)
        elif choice == 2:
            at = rng.randrange(len(valid) - 1)
            reply = valid[:at] + bytes([valid[at] ^ (1 << rng.randrange(7))]) + valid[at + 1:-1]
        elif choice == 3:
            reply = valid[:rng.randrange(len(valid) - 1)]
        elif choice == 4:
            fields = [rng.choice(["", "-1", "x", "1e3", "99999999999999999", "2", "0.5"])
                      for _ in range(rng.randrange(0, 8))]
            reply = encode_frame(seq, ("OK", command, *fields))[:-1]
        elif choice == 5:
            other = rng.choice([c for c in ("ID", "READ", "RELAY", "HB") if c != command])
            reply = encode_ok(seq, other, ("1",))[:-1]
        elif choice == 6:
            reply = encode_error(rng.choice([0, seq]), ErrorCode(rng.randrange(1, 7)), "no")[:-1]
        elif choice == 7:
            reply = b"$" + b"7" * rng.randrange(121, 300)
        elif choice == 8:
            reply = (line or b"")[:110]
        else:
            reply = encode_frame(seq, ("OK", command, *reading.fields()[:-1]))[:-1]
        reply = reply.replace(b"\n", b"")
        if command == "READ" and _is_valid_read(reply, seq):
            reply = b"garbage"
        return reply + b"\n"


def _is_valid_read(line: bytes, seq: int) -> bool:
    try:
        reply = parse_reply(line)
        ReadReply.from_fields(reply.values, NO_BLOCK)
    except MeterProtocolError:
        return False
    return reply.ok and reply.seq == seq and reply.command == "READ"
