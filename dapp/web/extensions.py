"""The app's own state, kept in ``app.extensions["microgrid"]``.

`AppState` holds what one app needs: the chain client, the keystore, the unlocked keys, the
services, the login limiters, the live hub, and the background tasks (the new-heads feed, the
event listener it wakes and the hub's ticker the listener wakes). Flask-SocketIO (threading
mode: web3 and pyserial block) is made per app by `make_socketio`, not once at module level: a
SocketIO object keeps one server, so two apps in one process (the tests make many) would
otherwise share it.

Every consumer of chain events subscribes to the process's one `EventListener` (its own
subscriber list is the only one): the meter board, the market service and the live hub from
the start, the meter bridge through `attach_bridge`, others through `subscribe`::

    state = app.extensions["microgrid"]
    unsubscribe = state.subscribe(callback)   # callback(ChainEvent) for every contract event
    state.attach_bridge(bridge)               # bridge.on_event(ChainEvent) + bridge.state()
    MeterBridge(..., on_change=state.meter_changed)

The listener exists once the deployment is known (the chain may be down at start); callbacks
subscribed before that wait here and are handed to it, in order, when the listener task starts.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from eth_account.signers.local import LocalAccount
from flask_socketio import SocketIO

from dapp.chain.client import ChainClient
from dapp.chain.listener import ChainEvent, EventListener
from dapp.chain.transports import HeadFeed
from dapp.errors import ChainError
from dapp.services.agents import AgentService
from dapp.services.market import AutoFinalizer, MarketService
from dapp.services.meters import Bridge, MeterBoard
from dapp.services.wallet import WalletService
from dapp.wallet.keystore import Keystore, UnlockedKeys
from dapp.web.live import LiveHub, user_room
from dapp.web.security import RateLimiter

log = logging.getLogger(__name__)

Subscriber = Callable[[ChainEvent], None]


def make_socketio() -> SocketIO:
    """Flask-SocketIO in threading mode; cross-origin connections refused (engineio's default)."""
    return SocketIO(async_mode="threading", cors_allowed_origins=None)


class AppState:
    """Per-app state: chain client, keystore, unlocked keys, services, limiters, live hub."""

    def __init__(
        self,
        client: ChainClient,
        keystore: Keystore,
        *,
        idle_timeout: float,
        login_limit_per_account: int,
        login_limit_per_client: int,
        login_limit_window: float,
        socketio: SocketIO,
        finalizer: LocalAccount | None = None,
        live_interval: float = 0.5,
        listener_interval: float = 1.0,
        chart_window: int = 6 * 3600,
        chart_bucket: int = 600,
        agent_capacity_wh: float = 10_000.0,
        agent_battery_v: float = 24.0,
        agent_expiry_s: float = 24 * 3600.0,
    ) -> None:
        self.client = client
        self.keystore = keystore
        self.keys = UnlockedKeys(idle_timeout)
        self.meters = MeterBoard(client, window_seconds=chart_window, bucket_seconds=chart_bucket)
        self.wallet = WalletService(client, keystore, self.meters)
        self.market = MarketService(client, self.meters, names=self.wallet.label_of)
        self.finalizer = AutoFinalizer(self.market, finalizer)
        # Trading agents act on each new block (the hub's per-block hook), after the finalizer;
        # their log goes to the owner's room as `agent` events.
        self.agents = AgentService(
            client, self.market, self.meters, capacity_wh=agent_capacity_wh,
            battery_v=agent_battery_v, expiry_s=agent_expiry_s,
            emit=lambda address, entry: socketio.emit("agent", entry, to=user_room(address)),
            on_sent=self._agent_sent, finalize_own=not self.finalizer.enabled,
        )
        self.login_per_account = RateLimiter(login_limit_per_account, login_limit_window)
        self.login_per_client = RateLimiter(login_limit_per_client, login_limit_window)
        self.socketio = socketio
        self.hub = LiveHub(socketio, client=client, wallet=self.wallet, market=self.market,
                           keys=self.keys, on_block=self._on_block,
                           on_greet=self._greet_agent, interval=live_interval)
        self.listener_interval = listener_interval
        # New blocks by subscription where the node offers it (else a short poll): the listener
        # polls on each new head and then wakes the hub, instead of each sleeping a fixed time.
        self.heads = HeadFeed(client.rpc_url, client.block_number,
                              poll=min(0.1, listener_interval))
        self._lock = threading.Lock()
        self._listener: EventListener | None = None
        self._waiting: dict[int, Subscriber] = {}  # until the listener exists
        self._unsubscribe: dict[int, Callable[[], None]] = {}  # handed to the listener
        self._ids = itertools.count()
        self._stop: threading.Event | None = None
        self._tasks: list[Any] = []
        # The services first: what the hub pushes for an event reads what they learnt from it.
        for callback in (self.meters.on_event, self.market.on_event, self.hub.on_event):
            self.subscribe(callback)

    # -- chain events ---------------------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback` with every contract event the listener delivers; returns unsubscribe."""
        with self._lock:
            token = next(self._ids)
            if self._listener is None:
                self._waiting[token] = callback
            else:
                self._unsubscribe[token] = self._listener.subscribe(callback)

        def unsubscribe() -> None:
            with self._lock:
                self._waiting.pop(token, None)
                handed = self._unsubscribe.pop(token, None)
            if handed is not None:
                handed()

        return unsubscribe

    def _adopt(self, listener: EventListener) -> None:
        """Hand the waiting callbacks to the listener, in the order they subscribed."""
        with self._lock:
            if self._listener is not None:
                return  # a restart: they are subscribed already
            self._listener = listener
            for token, callback in sorted(self._waiting.items()):
                self._unsubscribe[token] = listener.subscribe(callback)
            self._waiting.clear()

    def attach_bridge(self, bridge: Bridge) -> None:
        """Use `bridge` for live meter state and feed it every chain event."""
        self.meters.bridge = bridge
        self.subscribe(bridge.on_event)

    def meter_changed(self, state: Any) -> None:
        """Bridge `on_change` hook: a meter's live state moved (generation, relay)."""
        owner, relay_moved = self.meters.relay_moved(state)
        self.hub.touch_user(owner)
        if relay_moved:  # the cards show relays; generation alone moves only the owner's wallet
            self.hub.touch_market()

    def _agent_sent(self, address: str, tx_hash: str, kind: str) -> None:
        """An agent sent a transaction: its owner's pending list and the market change."""
        self.hub.touch_user(address)
        self.hub.touch_market()

    def _greet_agent(self, socket_id: str, address: str) -> None:
        """A page (re)connected: send it the agent's log, so entries made while it was loading
        or away reach it too (the page keeps the ones it shows already, by number)."""
        entries = self.agents.entries(address)
        if entries:
            self.socketio.emit("agent_log", {"entries": entries}, to=socket_id)

    def _on_block(self) -> None:
        """The hub's per-block hook: finalize due auctions, then let the agents act."""
        self.finalizer.run_once()
        self.agents.run_once()

    # -- background tasks -----------------------------------------------------------------------

    def start_background(self) -> None:
        """Start the listener and the live ticker (once; later calls do nothing)."""
        with self._lock:
            if self._stop is not None:
                return
            self._stop = stop = threading.Event()
        self.hub.begin()
        self._tasks = [
            self.socketio.start_background_task(self.heads.run, stop),
            self.socketio.start_background_task(self._listen, stop),
            self.socketio.start_background_task(self.hub.run, stop),
        ]

    def stop_background(self, timeout: float = 5.0) -> None:
        """Stop the listener and the ticker and wait for them."""
        with self._lock:
            stop, self._stop = self._stop, None
        if stop is None:
            return
        stop.set()
        self.agents.forget_all()  # no key outlives the server's tasks
        for task in self._tasks:
            task.join(timeout)
        self._tasks = []

    @property
    def running(self) -> bool:
        """Whether the background tasks were started and not stopped."""
        return self._stop is not None

    def _listen(self, stop: threading.Event) -> None:
        """Resolve the deployment (retrying), then run the one event listener."""
        delay = 0.5
        while not stop.is_set():
            try:
                self.client.deployment  # noqa: B018 - resolves and caches the deployment
                listener = self.client.listener
                break
            except ChainError as exc:
                log.warning("live: no deployment yet (%s); retrying in %.1f s", exc, delay)
            except Exception:
                log.exception("live: resolving the deployment failed")
            stop.wait(delay)
            delay = min(delay * 2, 10.0)
        else:
            return
        self._adopt(listener)
        try:
            count = self.meters.backfill()
            log.info("live: %d recent meter readings loaded", count)
        except Exception as exc:  # noqa: BLE001 - the chart starts empty instead
            log.warning("live: meter history not loaded: %s", exc)
        listener.run(stop, interval=self.listener_interval, heads=self.heads,
                     on_poll=self.hub.wake)

    def status(self) -> dict[str, Any]:
        """Chain status for templates and the API."""
        return self.wallet.chain_status()
