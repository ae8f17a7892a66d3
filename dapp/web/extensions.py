"""The app's own state, kept in ``app.extensions["microgrid"]``.

`Microgrid` holds what one app needs: the chain client, the keystore, the unlocked keys, the
services, the login limiters and the live hub. Flask-SocketIO (threading mode: web3 and pyserial
block) is made per app by `make_socketio`, not once at module level: a SocketIO object keeps one
server, so two apps in one process (the tests make many) would otherwise share it.

Hook for other parts (e.g. the meter bridge)::

    ext = app.extensions["microgrid"]
    unsubscribe = ext.subscribe(callback)   # callback(ChainEvent) for every contract event
    ext.attach_bridge(bridge)               # bridge.on_event(ChainEvent) + bridge.state()

Both are fed by the one EventListener of the process, started with `start_background()`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from eth_account.signers.local import LocalAccount
from flask_socketio import SocketIO

from dapp.chain.client import ChainClient
from dapp.chain.listener import ChainEvent
from dapp.services.market import AutoFinalizer, MarketService
from dapp.services.meters import Bridge, MeterBoard
from dapp.services.wallet import WalletService
from dapp.wallet.keystore import Keystore, UnlockedKeys
from dapp.web.security import RateLimiter

log = logging.getLogger(__name__)



def make_socketio() -> SocketIO:
    """Flask-SocketIO in threading mode; cross-origin connections refused (engineio's default)."""
    return SocketIO(async_mode="threading", cors_allowed_origins=None)


class Microgrid:
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
    ) -> None:
        from dapp.web.live import LiveHub

        self.client = client
        self.keystore = keystore
        self.keys = UnlockedKeys(idle_timeout)
        self.meters = MeterBoard(client)
        self.wallet = WalletService(client, keystore, self.meters)
        self.market = MarketService(client, self.meters, names=self.wallet.label_of)
        self.finalizer = AutoFinalizer(self.market, finalizer)
        self.login_per_account = RateLimiter(login_limit_per_account, login_limit_window)
        self.login_per_client = RateLimiter(login_limit_per_client, login_limit_window)
        self._subscribers: dict[int, Callable[[ChainEvent], None]] = {}
        self._next_subscriber = 0
        self._lock = threading.Lock()
        self.socketio = socketio
        self.hub = LiveHub(self, socketio, interval=live_interval,
                           listener_interval=listener_interval)

    def subscribe(self, callback: Callable[[ChainEvent], None]) -> Callable[[], None]:
        """Call `callback` with every contract event the listener delivers; returns unsubscribe."""
        with self._lock:
            token = self._next_subscriber
            self._next_subscriber += 1
            self._subscribers[token] = callback

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.pop(token, None)

        return unsubscribe

    def subscribers(self) -> list[Callable[[ChainEvent], None]]:
        """The current external subscribers."""
        with self._lock:
            return list(self._subscribers.values())

    def attach_bridge(self, bridge: Bridge) -> None:
        """Use `bridge` for live meter state and feed it every chain event."""
        self.meters.bridge = bridge
        self.subscribe(bridge.on_event)

    def start_background(self) -> None:
        """Start the listener and the live ticker (once per app; later calls do nothing)."""
        self.hub.start()

    def stop_background(self, timeout: float = 5.0) -> None:
        """Stop the listener and the ticker and wait for them."""
        self.hub.stop(timeout)

    def status(self) -> dict[str, Any]:
        """Chain status for templates and the API."""
        return self.wallet.chain_status()
