"""Live updates: chain events and new blocks, pushed to Socket.IO rooms.

`LiveHub` is one subscriber of the app's event listener (see `dapp.web.extensions.AppState`,
which runs the listener and subscribes the services, the hub and the meter bridge to it). For
each contract event the hub marks what changed (the market, the accounts named in the event)
and, for events newer than the server's start, sends short notices to the people concerned.

Its ticker (`run`) ticks when the listener has delivered a block's events (`wake`) and at the
latest every `interval` seconds. On a new block it pushes the `market` (computed once) to the
market room first, then `chain`; it calls `on_block` (the auto-finalizer), so a `finalize`
makes the next block; then it pushes `wallet` to the rooms of the users the block concerns:
those named in its events, those with a transaction of this server in flight or shown as
pending last time, and a rotating few of the others (about 1/`ROTATION_BLOCKS` of the connected
users a block, for changes nothing announces, such as Ether sent from elsewhere). Last it
reports transactions sent from the pages that failed after sending and re-prices this server's
transactions that full blocks priced out (`TxSender.reprice_stuck`). Expired sessions are told
so and disconnected. A block costs one market snapshot plus the wallets that moved, whatever
the number of open pages.

Rooms: ``market`` (every logged-in socket) and ``user:<address>`` (one per account).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from flask_socketio import SocketIO

from dapp.chain.client import ChainClient
from dapp.chain.listener import ChainEvent
from dapp.chain.tx import OutboxEntry
from dapp.errors import ChainError, ChainUnavailable, ContractReverted
from dapp.services import messages
from dapp.services.market import MarketService
from dapp.services.wallet import WalletService
from dapp.wallet.keystore import UnlockedKeys

log = logging.getLogger(__name__)

MARKET_ROOM = "market"
WATCH_SECONDS = 600.0
ROTATION_BLOCKS = 30  # every connected wallet is recomputed at least once in this many blocks
# The outbox is checked against the node on the first block and then every this many blocks:
# a transaction the node lost (it restarted without its pending pool) is sent again.
RECONCILE_BLOCKS = 10


def user_room(address: str) -> str:
    """The Socket.IO room of one account."""
    return f"user:{address.lower()}"


def _accounts_of(entries: list[OutboxEntry]) -> set[str]:
    """The accounts outbox transactions move: sender, recipient and the ones they concern."""
    found: set[str] = set()
    for entry in entries:
        found.add(entry.sender)
        found.update(entry.concerns)
        if entry.to:
            found.add(entry.to)
    return found


class LiveHub:
    """Routes chain events and new blocks to Socket.IO rooms; calls `on_block` on each new block."""

    def __init__(self, socketio: SocketIO, *, client: ChainClient, wallet: WalletService,
                 market: MarketService, keys: UnlockedKeys,
                 on_block: Callable[[], object] = lambda: None,
                 on_greet: Callable[[str, str], object] = lambda socket_id, address: None,
                 interval: float = 0.5) -> None:
        self.socketio = socketio
        self.client = client
        self.wallet = wallet
        self.market = market
        self.keys = keys
        self.on_block = on_block
        self.on_greet = on_greet
        self.interval = interval
        self._lock = threading.Lock()
        self._sockets: dict[str, tuple[str, str]] = {}  # socket id -> (session id, address)
        self._dirty_users: set[str] = set()
        self._market_dirty = True
        self._greet: dict[str, str] = {}  # socket id -> address: send it the full state
        self._watched: dict[str, tuple[str, str, float]] = {}  # tx -> (address, kind, since)
        self._last_chain: str | None = None
        self._last_block: int | None = None
        self._reconciled_at: int | None = None  # the block of the last outbox reconcile
        self._notices_from: int | None = None
        self._wake = threading.Event()
        self._in_flight: set[str] = set()  # accounts with an outbox transaction last block
        self._showing_pending: set[str] = set()  # last pushed wallet listed pending txs
        self._rotation: list[str] = []

    # -- sockets --------------------------------------------------------------------------------

    def joined(self, socket_id: str, session_id: str, address: str) -> None:
        """A logged-in socket connected; it gets the full state on the next flush."""
        with self._lock:
            self._sockets[socket_id] = (session_id, address)
            self._greet[socket_id] = address

    def greet(self, socket_id: str, address: str) -> None:
        """Send this socket the full state again (a `refresh` request)."""
        with self._lock:
            self._greet[socket_id] = address

    def left(self, socket_id: str) -> None:
        """A socket disconnected."""
        with self._lock:
            self._sockets.pop(socket_id, None)
            self._greet.pop(socket_id, None)

    def connected_addresses(self) -> set[str]:
        """Accounts with at least one connected socket."""
        with self._lock:
            return {address for _, address in self._sockets.values()}

    def end_session(self, session_id: str, reason: str = "logged out") -> None:
        """Disconnect every socket of a session (logout, expiry)."""
        with self._lock:
            sockets = [sid for sid, (sess, _) in self._sockets.items() if sess == session_id]
        for socket_id in sockets:
            self.socketio.emit("session_expired", {"reason": reason}, to=socket_id)
            try:
                self.socketio.server.disconnect(socket_id, namespace="/")
            except Exception:  # noqa: BLE001 - already gone
                log.debug("socket %s was already gone", socket_id)
            self.left(socket_id)

    # -- marks ----------------------------------------------------------------------------------

    def touch_user(self, address: str | None) -> None:
        """The wallet of `address` changed: push it on the next flush."""
        if address:
            with self._lock:
                self._dirty_users.add(address)

    def touch_market(self) -> None:
        """The market changed: push it on the next flush."""
        with self._lock:
            self._market_dirty = True

    def watch(self, address: str, tx_hash: str, kind: str) -> None:
        """Tell `address` if this transaction fails after it was sent; show it as pending now."""
        with self._lock:
            self._watched[tx_hash] = (address, kind, time.monotonic())
        self.touch_user(address)

    def notify(self, address: str, text: str, level: str = "info",
               tx_hash: str | None = None) -> None:
        """A short notice to one account's sockets (naming its transaction, if it is about one)."""
        notice = {"text": text, "level": level, **({"tx_hash": tx_hash} if tx_hash else {})}
        self.socketio.emit("notice", notice, to=user_room(address))

    # -- listener side --------------------------------------------------------------------------

    def on_event(self, event: ChainEvent) -> None:
        """Listener subscriber: mark what changed, notify the people concerned."""
        try:
            parties = self._parties(event)
        except ChainError as exc:
            log.debug("live: parties of %s unknown: %s", event.name, exc)
            parties = set()
        for address in parties:
            self.touch_user(address)
        if event.contract == "EnergyMarket":
            self.touch_market()
        fresh = self._notices_from is not None and event.block_number >= self._notices_from
        if fresh:
            try:
                for address, text in self._notices(event):
                    self.notify(address, text)
            except ChainError as exc:
                log.debug("live: no notice for %s: %s", event.name, exc)

    def _lot_parties(self, lot_id: int) -> tuple[str, str | None]:
        lot = self.client.lot(lot_id)
        return lot.seller, lot.buyer

    def _parties(self, event: ChainEvent) -> set[str]:
        """Accounts whose wallet an event changes."""
        args = event.args
        found = {args[k] for k in ("seller", "buyer", "bidder", "account", "owner", "from", "to")
                 if isinstance(args.get(k), str)}
        if event.name in ("DeliverySettled", "ConnectionClosed"):
            found.update(p for p in self._lot_parties(int(args["tradeId"])) if p)
        if event.name == "ReadingRecorded":
            info = self.client.meter(args["meter"])
            if info is not None:
                found.add(info.owner)
        found.discard("0x0000000000000000000000000000000000000000")
        return found

    def _notices(self, event: ChainEvent) -> list[tuple[str, str]]:
        """(account, sentence) pairs worth telling people as they happen."""
        a = event.args
        if event.contract != "EnergyMarket":
            return []
        if event.name == "BidPlaced":
            seller, _ = self._lot_parties(int(a["listingId"]))
            return [
                (seller, messages.new_bid_notice(a["listingId"], a["pricePerKWh"])),
                (a["bidder"], messages.bid_in_notice(a["listingId"], a["pricePerKWh"])),
            ]
        if event.name == "Credited":
            return [(a["account"], messages.credited_notice(a["amountWei"], a["lotId"]))]
        if event.name == "ListingExpired":
            return [(a["seller"], messages.expired_notice(a["listingId"], a["energyWh"]))]
        if event.name == "TradeOpened":
            return [
                (a["seller"], messages.sold_notice(a["tradeId"], a["pricePerKWh"])),
                (a["buyer"], messages.won_notice(a["tradeId"], a["pricePerKWh"])),
            ]
        if event.name == "ConnectionClosed":
            seller, buyer = self._lot_parties(int(a["tradeId"]))
            text = messages.trade_closed_notice(a["tradeId"], a["deliveredWh"])
            return [(seller, text)] + ([(buyer, text)] if buyer else [])
        if event.name == "Withdrawn":
            return [(a["account"], messages.withdrawn_notice(a["amountWei"]))]
        return []

    # -- ticker ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """One round: the market, chain head, wallets, finalizer, watched transactions, expiries."""
        self._push_market()  # what the block's events changed, before anything else is read
        status = self.wallet.chain_status()
        key = json.dumps([status["available"], status["block"], status["mining"]],
                         sort_keys=True)
        if key != self._last_chain:
            was_available = self._last_chain is None or json.loads(self._last_chain)[0]
            self._last_chain = key
            self.socketio.emit("chain", status, to=MARKET_ROOM)
            if status["available"] != was_available:
                self.touch_market()
                for address in self.connected_addresses():
                    self.touch_user(address)
        new_block = status["available"] and status["block"] != self._last_block
        if new_block:
            self._last_block = status["block"]
            if self._notices_from is None:
                self._notices_from = status["block"] + 1
            for address in self._block_concerns():
                self.touch_user(address)
            self.on_block()  # the finalizer: its transaction should make the next block
        self.flush()
        if new_block:
            self._reprice()
            self._reconcile(status["block"])
            self._check_watched()  # after reconcile: a dropped one is told before the next push
        self._expire_sessions()

    def _reprice(self) -> None:
        """Re-price this server's transactions that full blocks priced out (see TxSender)."""
        try:
            self.client.sender.reprice_stuck()
        except ChainError as exc:
            log.debug("live: re-pricing skipped: %s", exc)

    def _reconcile(self, block: int) -> None:
        """Re-send what the node lost of this server's outbox (see TxSender.reconcile)."""
        since = None if self._reconciled_at is None else block - self._reconciled_at
        # A head below the last one (since < 0): the node went back to an older state; check.
        if since is not None and 0 <= since < RECONCILE_BLOCKS:
            return
        self._reconciled_at = block
        try:
            result = self.client.sender.reconcile()
        except ChainError as exc:
            log.debug("live: outbox not reconciled: %s", exc)
            return
        if result["resent"] or result["dropped"]:
            log.info("live: outbox: re-sent %d, dropped %d transaction(s) the node had lost",
                     len(result["resent"]), len(result["dropped"]))

    def _block_concerns(self) -> set[str]:
        """Accounts whose wallet a new block may have changed without a contract event."""
        try:
            mined = self.client.sender.forget_mined()
        except ChainError as exc:
            log.debug("live: outbox not checked: %s", exc)
            mined = []
        in_flight = _accounts_of(self.client.sender.outbox.entries())
        with self._lock:
            watched = {address for address, _, _ in self._watched.values()}
        # Last block's too, and what this block mined: their wallets changed with it.
        concerned = (in_flight | _accounts_of(mined) | self._in_flight | watched
                     | self._showing_pending)
        self._in_flight = in_flight
        return concerned | self._rotate()

    def _rotate(self) -> set[str]:
        """The next few connected accounts in turn (all of them within ROTATION_BLOCKS)."""
        if not self._rotation:
            self._rotation = sorted(self.connected_addresses())
        size = -(-len(self._rotation) // ROTATION_BLOCKS) if self._rotation else 0
        chosen, self._rotation = self._rotation[:size], self._rotation[size:]
        return set(chosen)

    def _push_market(self) -> None:
        """Push the market now if an event changed it and someone is connected."""
        with self._lock:
            if not (self._market_dirty and self._sockets):
                return
            self._market_dirty = False
        self.socketio.emit("market", self.market.snapshot(), to=MARKET_ROOM)

    def flush(self) -> None:
        """Push the market, wallets and greetings that changed since the last flush."""
        with self._lock:
            connected = {address for _, address in self._sockets.values()}
            greet = dict(self._greet)
            self._greet.clear()
            market = self._market_dirty and bool(connected)
            if market:
                self._market_dirty = False
            users = (self._dirty_users & connected) | set(greet.values())
            self._dirty_users -= connected
        snapshot = self.market.snapshot() if market or greet else None
        if market:
            self.socketio.emit("market", snapshot, to=MARKET_ROOM)
        for address in users:
            summary = self.wallet.summary(address)
            if summary.get("pending"):
                self._showing_pending.add(address)
            else:
                self._showing_pending.discard(address)
            self.socketio.emit("wallet", summary, to=user_room(address))
        if greet:
            status = self.wallet.chain_status()
            for socket_id, address in greet.items():
                self.socketio.emit("chain", status, to=socket_id)
                if not market:
                    self.socketio.emit("market", snapshot, to=socket_id)
                self.on_greet(socket_id, address)

    def _check_watched(self) -> None:
        """Tell users about their transactions that failed after being sent."""
        with self._lock:
            watched = dict(self._watched)
        now = time.monotonic()
        for tx_hash, (address, kind, since) in watched.items():
            done = now - since > WATCH_SECONDS
            try:
                self.client.wait(tx_hash, timeout=0.01)
                done = True
            except ContractReverted as exc:
                done = True
                self.notify(address, messages.transaction_failed_notice(
                    kind, messages.revert_sentence(exc)), "error", tx_hash)
            except ChainUnavailable:
                pass  # the node is away: look again next block
            except ChainError:
                why = self.client.sender.dropped(tx_hash)
                if why is not None:  # it left the pending list, but it was never mined
                    done = True
                    self.notify(address, messages.transaction_failed_notice(
                        kind, messages.transaction_dropped(why)), "error", tx_hash)
                # else not mined yet (or the node is away): look again next block
            if done:
                with self._lock:
                    self._watched.pop(tx_hash, None)

    def _expire_sessions(self) -> None:
        """Disconnect sockets whose session expired (idle timeout) and forget expired keys."""
        keys = self.keys
        with self._lock:
            sessions = {sess for sess, _ in self._sockets.values()}
        for session_id in sessions:
            if session_id not in keys:
                self.end_session(session_id, "session expired")
        keys.purge_expired()

    def wake(self) -> None:
        """Tick now (the listener delivered a new block's events)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Tick on each `wake` and at least every `interval` s until `stop`; failures logged."""
        while not stop.is_set():
            self._wake.clear()
            try:
                self.tick()
            except Exception:
                log.exception("live: tick failed")
            self._wake.wait(self.interval)

    def begin(self) -> None:
        """Before the ticker starts: only events after the current block are worth a notice."""
        try:
            self._notices_from = self.client.block_number() + 1
        except ChainError:
            self._notices_from = None  # set by the first tick that reaches the chain
