"""New heads: the feed follows a real anvil by subscription (or by polling), the listener wakes
on each new block instead of sleeping its interval."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from dapp.chain.contracts import load_artifact
from dapp.chain.deploy import MarketParameters, deploy
from dapp.chain.listener import EventListener
from dapp.chain.transports import HeadFeed, connect, rpc
from dapp.chain.tx import TxSender
from tests.chain.conftest import anvil_factory, fund, inprocess  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


@pytest.fixture
def manual_anvil(anvil_factory):  # noqa: F811 - the fixture imported above
    """An anvil that mines only when asked (evm_mine)."""
    node = anvil_factory(block_time=None, extra_args=["--no-mining"])
    node.start()
    return node


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def _follow(feed: HeadFeed, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=feed.run, args=(stop,), daemon=True)
    thread.start()
    return thread


def test_feed_subscribes_over_the_http_nodes_websocket_and_wakes_at_once(manual_anvil, stop):
    w3 = connect(manual_anvil.url)
    feed = HeadFeed(manual_anvil.url, lambda: w3.eth.block_number, poll=5.0)
    _follow(feed, stop)
    assert feed.wait(-1, 5) == 0
    deadline = time.monotonic() + 5
    while not feed.subscribed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert feed.subscribed
    for expected in (1, 2, 3):
        started = time.monotonic()
        rpc(w3, "evm_mine")
        assert feed.wait(expected - 1, 5) == expected
        # The poll is 5 s: only the subscription can tell this fast.
        assert time.monotonic() - started < 0.5


def test_feed_polls_where_the_node_offers_no_subscription(inprocess, stop):  # noqa: F811
    feed = HeadFeed("inprocess://feed-test", lambda: inprocess.w3.eth.block_number, poll=0.05)
    _follow(feed, stop)
    first = feed.wait(-1, 5)
    assert first >= 0 and not feed.subscribed
    inprocess.mine()
    assert feed.wait(first, 5) == first + 1


def test_feed_wait_returns_when_stopped(manual_anvil, stop):
    feed = HeadFeed(manual_anvil.url, lambda: 0)
    started = time.monotonic()
    threading.Timer(0.2, stop.set).start()
    assert feed.wait(10, 30, stop) == -1
    assert time.monotonic() - started < 1.5


def test_listener_delivers_a_blocks_events_right_after_it_with_a_long_interval(
        anvil_factory, stop, tmp_path):  # noqa: F811
    node = anvil_factory(block_time=None)  # automine: each transaction is a new block
    node.start()
    w3 = connect(node.url)
    deployer = fund(w3)
    dep = deploy(w3, deployer, MarketParameters(min_duration=60))
    feed = HeadFeed(node.url, lambda: w3.eth.block_number)
    listener = EventListener(w3, dep, tmp_path / "listener.json")
    delivered: list[tuple[float, str]] = []
    listener.subscribe(lambda e: delivered.append((time.monotonic(), e.name)))
    polls: list[int] = []
    _follow(feed, stop)
    threading.Thread(target=listener.run, args=(stop,),
                     kwargs={"interval": 30.0, "heads": feed,
                             "on_poll": lambda: polls.append(listener.cursor)},
                     daemon=True).start()
    deadline = time.monotonic() + 10
    while listener.cursor < w3.eth.block_number and time.monotonic() < deadline:
        time.sleep(0.02)
    delivered.clear()
    seller = fund(w3)
    sender = TxSender(w3)
    token = w3.eth.contract(address=dep.token, abi=load_artifact("EnergyToken").abi)
    tx_hash = sender.send(seller, {"to": dep.token,
                                   "data": token.encode_abi("approve", args=[dep.market, 1])},
                          "approve")
    sender.wait(tx_hash, timeout=10, poll=0.005)
    mined = time.monotonic()
    deadline = mined + 5
    while not delivered and time.monotonic() < deadline:
        time.sleep(0.005)
    assert [name for _, name in delivered] == ["Approval"]
    # The interval is 30 s: the listener woke on the new head.
    assert delivered[0][0] - mined < 0.5
    head = w3.eth.block_number
    deadline = time.monotonic() + 5
    while not (polls and polls[-1] == head) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert polls[-1] == head  # on_poll follows each poll
