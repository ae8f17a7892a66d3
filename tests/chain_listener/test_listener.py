"""The event listener against a real in-process chain (and a real anvil for node restarts).

Delivery guarantee under test (see dapp/chain/listener.py): events arrive decoded, in (block,
log index) order; nothing the state file records is delivered again (restarts, re-scans, reorgs);
only the events of a window whose save never reached the file are delivered again.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_utils import to_hex
from web3 import HTTPProvider, Web3

from dapp.chain.contracts import load_artifact
from dapp.chain.deploy import deploy
from dapp.chain.listener import ChainEvent, EventListener
from dapp.errors import ChainUnavailable
from tests.contracts.conftest import PRICE, Chain

ROOT = Path(__file__).resolve().parents[2]
ANVIL = ROOT / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
SUPPLY, LOAD = 0, 1
LOGGER = "dapp.chain.listener"

Key = tuple[str, str, dict, int, int]


# -- in-process chain ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain_module() -> Chain:
    """One in-process chain with the contracts deployed, shared by this module."""
    return Chain()


@pytest.fixture
def chain(chain_module: Chain) -> Iterator[Chain]:
    """The chain, reverted to its deployed state after each test."""
    snapshot = chain_module.tester.take_snapshot()
    yield chain_module
    chain_module.tester.revert_to_snapshot(snapshot)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """Where the listener keeps its cursor (a data directory that does not exist yet)."""
    return tmp_path / "data" / "listener.json"


class Story:
    """Produces contract events by role, remembering every receipt as the expected events."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        a = chain.addresses
        self.operator, self.seller, self.buyer, self.rival = a[0], a[1], a[2], a[3]
        self.supply_meter, self.load_meter = a[4], a[5]
        self.receipts: list[dict] = []
        self.sequence = 0
        self.setup = 0  # how many receipts meters_and_tokens made

    def send(self, fn: Any, sender: str, value: int = 0) -> dict:
        """Send a transaction (one block each) and remember its receipt."""
        receipt = self.chain.send(fn, sender, value)
        self.receipts.append(receipt)
        return receipt

    def meters_and_tokens(self) -> None:
        """Offer the meters, their owners accept, a baseline reading, then 2 kWh to the seller.

        The readings are signed by the supply meter's own key and carried by the operator (any
        account may carry them).
        """
        reg = self.chain.registry.functions
        self.send(reg.offerMeter(self.supply_meter, self.seller, SUPPLY, 5000), self.operator)
        self.send(reg.offerMeter(self.load_meter, self.buyer, LOAD, 5000), self.operator)
        self.send(reg.acceptMeter(self.supply_meter), self.seller)
        self.send(reg.acceptMeter(self.load_meter), self.buyer)
        # Bidders need an accepted load meter: the rival has one too.
        rival_meter = self.chain.new_key("the rival's load meter")
        self.send(reg.offerMeter(rival_meter, self.rival, LOAD, 5000), self.operator)
        self.send(reg.acceptMeter(rival_meter), self.rival)
        self.reading(100)
        self.chain.advance(3600)
        self.reading(2100)
        self.setup = len(self.receipts)

    def reading(self, energy_wh: int) -> None:
        """The supply meter signs its counter with the next sequence; the operator carries it."""
        self.sequence += 1
        block = self.chain.w3.eth.block_number
        signature = self.chain.sign_reading(self.supply_meter, energy_wh, self.sequence, block)
        self.send(
            self.chain.registry.functions.report(
                self.supply_meter, energy_wh, self.sequence, block, signature
            ),
            self.operator,
        )

    def auction(self) -> None:
        """List 1 kWh; the buyer bids, the rival outbids (so the buyer is credited)."""
        market = self.chain.market.functions
        self.send(market.list(1000, PRICE, 600), self.seller)
        self.send(market.bid(1, PRICE), self.buyer, value=PRICE)  # each test starts at lot 1
        higher = PRICE + 10**12
        self.send(market.bid(1, higher), self.rival, value=higher)

    def expected(self, receipts: list[dict] | None = None) -> list[Key]:
        """The events of `receipts`, decoded independently of the listener, in chain order."""
        out = []
        for receipt in self.receipts if receipts is None else receipts:
            for log in receipt["logs"]:
                (event,) = self.chain.events({"logs": [log]})
                out.append(
                    (event.contract, event.name, event.args, log["blockNumber"], log["logIndex"])
                )
        return out


def keys(events: list[ChainEvent]) -> list[Key]:
    """What a user of an event sees: contract, name, args and position."""
    return [(e.contract, e.name, e.args, e.block_number, e.log_index) for e in events]


def head(chain: Chain) -> int:
    """The chain's latest block number."""
    return chain.w3.eth.block_number


def test_delivers_decoded_events_in_order_from_the_deployment_block(chain: Chain, state: Path):
    listener = EventListener(chain.w3, chain.deployment, state)
    assert listener.cursor == chain.deployment.block - 1
    received: list[ChainEvent] = []
    listener.subscribe(received.append)

    deployed = listener.poll_once()
    # The registry grants its roles in its constructor: the first run read the deployment blocks.
    assert ("MeterRegistry", "RoleGranted") in [(e.contract, e.name) for e in deployed]
    assert all(e.block_number >= chain.deployment.block for e in deployed)
    assert listener.cursor == head(chain)

    story = Story(chain)
    story.meters_and_tokens()
    story.auction()
    events = listener.poll_once()

    assert keys(events) == story.expected()
    assert received == deployed + events
    assert [e.name for e in events][:7] == [
        "MeterOffered", "MeterOffered", "MeterAccepted", "MeterAccepted", "MeterOffered",
        "MeterAccepted", "ReadingRecorded"
    ]
    credited = next(e for e in events if e.name == "Credited")
    assert credited.contract == "EnergyMarket"
    assert credited.args == {"account": story.buyer, "lotId": 1, "amountWei": PRICE}
    minted = next(e for e in events if e.name == "Transfer")
    assert minted.args["to"] == story.seller and minted.args["value"] == 2000
    last = story.receipts[-1]
    assert events[-1].tx_hash == to_hex(last["transactionHash"])
    assert events[-1].block_hash == to_hex(last["blockHash"])
    assert listener.cursor == head(chain)

    # Nothing new: a second poll delivers nothing, to nobody.
    assert listener.poll_once() == []
    assert len(received) == len(deployed) + len(events)


def test_first_run_starts_at_deployment_block(chain: Chain, state: Path):
    story = Story(chain)
    story.meters_and_tokens()
    later = dataclasses.replace(chain.deployment, block=story.receipts[2]["blockNumber"])

    events = EventListener(chain.w3, later, state).poll_once()

    assert keys(events) == story.expected(story.receipts[2:])


def test_new_listener_on_the_same_state_file_delivers_exactly_the_new_events(
    chain: Chain, state: Path, tmp_path: Path
):
    story = Story(chain)
    first = EventListener(chain.w3, chain.deployment, state)
    before = first.poll_once()
    story.meters_and_tokens()
    before += first.poll_once()
    del first  # the server stops

    story.auction()
    second = EventListener(chain.w3, chain.deployment, state)
    assert second.cursor == head(chain) - len(story.receipts[story.setup :])
    after = second.poll_once()

    assert keys(after) == story.expected(story.receipts[story.setup :])
    assert second.poll_once() == []
    # No loss and no duplicate: together they are what one uninterrupted listener delivers.
    whole = EventListener(chain.w3, chain.deployment, tmp_path / "other.json").poll_once()
    assert keys(before + after) == keys(whole)


def test_crash_before_the_save_redelivers_only_what_was_not_recorded(chain: Chain, state: Path):
    story = Story(chain)
    listener = EventListener(chain.w3, chain.deployment, state)
    listener.poll_once()
    story.meters_and_tokens()
    acknowledged = listener.poll_once()
    saved = state.read_bytes()

    story.auction()
    lost_save = listener.poll_once()
    assert keys(lost_save) == story.expected(story.receipts[story.setup :])
    # The process died after delivering these but before their save reached the disk.
    state.write_bytes(saved)

    restarted = EventListener(chain.w3, chain.deployment, state)
    again = restarted.poll_once()

    assert keys(again) == keys(lost_save)
    assert not set(map(repr, keys(again))) & set(map(repr, keys(acknowledged)))
    assert restarted.poll_once() == []


def test_interruption_inside_a_window_redelivers_that_window_only(chain: Chain, state: Path):
    story = Story(chain)
    listener = EventListener(chain.w3, chain.deployment, state)
    listener.poll_once()
    story.meters_and_tokens()
    story.auction()
    expected = story.expected()

    seen: list[ChainEvent] = []

    def dies_on_third(event: ChainEvent) -> None:
        seen.append(event)
        if len(seen) == 3:
            raise KeyboardInterrupt  # not an Exception: it stops the process

    unsubscribe = listener.subscribe(dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        listener.poll_once()
    unsubscribe()
    at_interruption = state.read_bytes()

    # The same process going on skips what every subscriber already had ...
    resumed = listener.poll_once()
    assert keys(seen[:2] + resumed) == expected
    # ... while a restart from the file as the interruption left it redelivers the interrupted
    # window in full (at-least-once), and nothing of the windows saved before it.
    state.write_bytes(at_interruption)
    restarted = EventListener(chain.w3, chain.deployment, state)
    assert keys(restarted.poll_once()) == expected
    assert restarted.poll_once() == []


def test_small_windows_deliver_everything_exactly_once(chain: Chain, state: Path, tmp_path: Path):
    story = Story(chain)
    story.meters_and_tokens()
    story.auction()
    listener = EventListener(chain.w3, chain.deployment, state, window=3, max_windows=2)

    delivered: list[ChainEvent] = []
    polls = 0
    while listener.cursor < head(chain):
        before = listener.cursor
        delivered += listener.poll_once()
        polls += 1
        assert listener.cursor - before <= 6  # one poll is bounded: 2 windows of 3 blocks
    assert polls >= 2

    whole = EventListener(chain.w3, chain.deployment, tmp_path / "one-window.json").poll_once()
    assert keys(delivered) == keys(whole)
    assert keys(delivered)[-len(story.expected()) :] == story.expected()


def _raw(chain: Chain, fn: Any, sender: int, nonce: int) -> bytes:
    """A transaction signed with fixed fields, so it can be mined again after a reorg."""
    tx = fn.build_transaction(
        {
            "from": chain.addresses[sender],
            "nonce": nonce,
            "gas": 200_000,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
            "chainId": chain.w3.eth.chain_id,
        }
    )
    return Account.sign_transaction(tx, chain.keys[sender]).raw_transaction


def test_reorg_rewinds_to_the_fork_and_delivers_the_new_canonical_events(
    chain: Chain, state: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    story = Story(chain)
    story.meters_and_tokens()
    listener = EventListener(chain.w3, chain.deployment, state)
    delivered = listener.poll_once()
    fork = head(chain)

    reg = chain.registry.functions
    nonce = chain.w3.eth.get_transaction_count(story.operator)
    kept = _raw(chain, reg.offerMeter(story.rival, story.rival, LOAD, 100), 0, nonce)
    dropped = _raw(
        chain, reg.offerMeter(chain.addresses[6], story.rival, LOAD, 200), 0, nonce + 1
    )
    replacement = _raw(
        chain, reg.offerMeter(chain.addresses[7], story.buyer, SUPPLY, 300), 0, nonce + 1
    )

    snapshot = chain.tester.take_snapshot()
    chain.w3.eth.send_raw_transaction(kept)
    chain.w3.eth.send_raw_transaction(dropped)
    delivered += listener.poll_once()
    old_tip = listener.cursor
    assert [e.args["ratedPowerW"] for e in delivered[-2:]] == [100, 200]

    # Replace the two newest blocks: the same first transaction, then a different second one.
    chain.tester.revert_to_snapshot(snapshot)
    chain.w3.eth.send_raw_transaction(kept)
    assert head(chain) == fork + 1 < old_tip
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert listener.poll_once() == []  # the re-mined transaction is not delivered again
    assert "reorg" in caplog.text
    assert listener.cursor == fork + 1

    chain.w3.eth.send_raw_transaction(replacement)
    new = listener.poll_once()
    assert [(e.name, e.args["ratedPowerW"], e.block_number) for e in new] == [
        ("MeterOffered", 300, fork + 2)
    ]
    assert new[0].block_hash == to_hex(chain.w3.eth.get_block(fork + 2)["hash"])
    assert listener.poll_once() == []

    # What it delivered is the canonical history plus the one abandoned event, each once.
    canonical = EventListener(chain.w3, chain.deployment, tmp_path / "canonical.json").poll_once()
    abandoned = [e for e in delivered if e.args.get("ratedPowerW") == 200]
    assert keys(delivered + new) == keys(
        [e for e in canonical if e.block_number <= fork + 1] + abandoned + canonical[-1:]
    )


def test_failing_subscriber_does_not_stop_the_others(
    chain: Chain, state: Path, caplog: pytest.LogCaptureFixture
):
    listener = EventListener(chain.w3, chain.deployment, state)
    listener.poll_once()
    first: list[ChainEvent] = []
    last: list[ChainEvent] = []

    def broken(event: ChainEvent) -> None:
        raise RuntimeError("subscriber bug")

    listener.subscribe(first.append)
    listener.subscribe(broken)
    unsubscribe_last = listener.subscribe(last.append)
    story = Story(chain)
    story.meters_and_tokens()

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        delivered = listener.poll_once()

    assert keys(delivered) == story.expected()
    assert first == delivered and last == delivered
    assert "subscriber bug" in caplog.text
    assert listener.cursor == head(chain)

    unsubscribe_last()
    story.auction()
    more = listener.poll_once()
    assert first == delivered + more and last == delivered


# -- node unavailable ---------------------------------------------------------------------------


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_in_thread(
    listener: EventListener, interval: float
) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    """Start listener.run in a thread; any exception escaping it is collected."""
    stop = threading.Event()
    escaped: list[BaseException] = []

    def target() -> None:
        try:
            listener.run(stop, interval)
        except BaseException as exc:  # noqa: BLE001 - the test asserts nothing escapes
            escaped.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, stop, escaped


def test_unreachable_node_is_retried_and_never_kills_run(
    chain: Chain, state: Path, caplog: pytest.LogCaptureFixture
):
    w3 = Web3(HTTPProvider(f"http://127.0.0.1:{free_port()}", request_kwargs={"timeout": 2}))
    listener = EventListener(w3, chain.deployment, state)
    with pytest.raises(ChainUnavailable):
        listener.poll_once()

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        thread, stop, escaped = run_in_thread(listener, interval=0.01)
        time.sleep(0.5)
        assert thread.is_alive()
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive() and escaped == []
    failures = [r for r in caplog.records if "cannot reach the Ethereum node" in r.getMessage()]
    assert 2 <= len(failures) < 20  # retried, with back-off rather than a busy loop
    assert listener.cursor == chain.deployment.block - 1
    assert not state.exists()


# -- real anvil: node restarts and a replaced chain ---------------------------------------------


class Anvil:
    """The pinned anvil binary on a free 127.0.0.1 port, optionally persisting its chain."""

    def __init__(self, state_file: Path | None, genesis_timestamp: int | None) -> None:
        self.port = free_port()
        self.state_file = state_file
        self.genesis_timestamp = genesis_timestamp
        self.proc: subprocess.Popen | None = None
        self.w3 = Web3(HTTPProvider(f"http://127.0.0.1:{self.port}", request_kwargs={"timeout": 5}))

    def start(self) -> None:
        """Start the node and wait until it answers."""
        args = [str(ANVIL), "--host", "127.0.0.1", "--port", str(self.port), "--silent"]
        if self.state_file is not None:
            args += ["--state", str(self.state_file)]
        if self.genesis_timestamp is not None:
            args += ["--timestamp", str(self.genesis_timestamp)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.w3.eth.block_number >= 0:
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (anvil writes its state on it) and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def fund(self, address: str) -> None:
        """Give `address` 1000 ether."""
        self.w3.provider.make_request("anvil_setBalance", [address, hex(10**21)])

    def send(self, account: Any, fn: Any) -> dict:
        """Sign locally, send raw, wait for the receipt."""
        tx = fn.build_transaction(
            {
                "from": account.address,
                "nonce": self.w3.eth.get_transaction_count(account.address, "pending"),
                "chainId": self.w3.eth.chain_id,
            }
        )
        tx_hash = self.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10)
        assert receipt["status"] == 1
        return receipt


@pytest.fixture
def anvil_factory(tmp_path: Path) -> Iterator[Any]:
    """Make anvil nodes; every one is stopped at the end of the test."""
    if not ANVIL.is_file():
        pytest.skip("anvil is not installed (npm ci)")
    nodes: list[Anvil] = []

    def make(state_file: Path | None = None, genesis_timestamp: int | None = None) -> Anvil:
        node = Anvil(state_file, genesis_timestamp)
        nodes.append(node)
        node.start()
        return node

    yield make
    for node in nodes:
        node.stop()


def wait_until(condition: Any, timeout: float = 10) -> None:
    """Poll `condition` until true or fail."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def log_keys(receipts: list[dict]) -> list[tuple[str, int]]:
    """(tx hash, log index) of every log in `receipts`."""
    return [
        (to_hex(entry["transactionHash"]), entry["logIndex"])
        for r in receipts
        for entry in r["logs"]
    ]


@pytest.mark.slow
def test_node_restart_loses_nothing_and_duplicates_nothing(
    anvil_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    node = anvil_factory(tmp_path / "anvil-state.json")
    operator = Account.create()
    node.fund(operator.address)
    deployment = deploy(node.w3, operator)
    registry = node.w3.eth.contract(
        address=deployment.registry, abi=load_artifact("MeterRegistry").abi
    )

    def offer() -> dict:
        meter = Account.create().address
        return node.send(
            operator, registry.functions.offerMeter(meter, operator.address, SUPPLY, 1000)
        )

    state = tmp_path / "data" / "listener.json"
    listener = EventListener(node.w3, deployment, state, start_block=node.w3.eth.block_number + 1)
    received: list[ChainEvent] = []
    listener.subscribe(received.append)
    thread, stop, escaped = run_in_thread(listener, interval=0.02)
    try:
        receipts = [offer(), offer()]
        wait_until(lambda: len(received) == 2)

        node.stop()  # the node goes away for a while ...
        time.sleep(0.3)
        assert thread.is_alive()
        node.start()  # ... and comes back with its persisted chain
        receipts += [offer(), offer()]
        wait_until(lambda: listener.cursor >= receipts[-1]["blockNumber"])
    finally:
        stop.set()
        thread.join(timeout=10)
    assert escaped == []
    assert "cannot reach the Ethereum node" in caplog.text  # the outage was seen and retried
    assert [(e.tx_hash, e.log_index) for e in received] == log_keys(receipts)

    # The server restarts too: a new listener on the same file has nothing to redeliver.
    receipts.append(offer())
    restarted = EventListener(node.w3, deployment, state)
    assert [(e.tx_hash, e.log_index) for e in restarted.poll_once()] == log_keys(receipts[-1:])


@pytest.mark.slow
def test_replaced_chain_resets_to_the_deployment_block(
    anvil_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    operator = Account.create()
    state = tmp_path / "listener.json"
    now = int(time.time())
    old = anvil_factory(genesis_timestamp=now - 60)  # no --state: the chain dies with the node
    old.fund(operator.address)
    deployment = deploy(old.w3, operator)
    assert [e.name for e in EventListener(old.w3, deployment, state).poll_once()].count(
        "RoleGranted"
    ) == 2
    old.stop()

    new = anvil_factory(genesis_timestamp=now)  # a fresh dev chain: another genesis
    new.fund(operator.address)
    assert deploy(new.w3, operator) == deployment  # same deployer and nonces: same addresses
    registry = new.w3.eth.contract(
        address=deployment.registry, abi=load_artifact("MeterRegistry").abi
    )
    receipt = new.send(
        operator,
        registry.functions.offerMeter(Account.create().address, operator.address, LOAD, 10),
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        events = EventListener(new.w3, deployment, state).poll_once()

    assert "chain was replaced" in caplog.text
    assert [e.name for e in events].count("RoleGranted") == 2  # from the deployment block again
    assert (events[-1].name, events[-1].tx_hash) == (
        "MeterOffered",
        to_hex(receipt["transactionHash"]),
    )
