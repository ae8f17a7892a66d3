"""Trading agents: the server trades for a household that turned its agent on (no Flask).

`AgentService` keeps, per account whose owner turned the agent on, its `Limits` and its
decrypted key (a `LocalAccount`, in memory only: turning the agent off, its expiry or the server
stopping forgets it; logging out does not, the agent holds its own reference). On each new
block (`run_once`, called from the live hub's per-block hook, never from a polling loop of its
own) it builds each household's `HouseholdState` from what the app already knows, asks the pure
policy (`dapp.agents.policy.decide`) what to do, and sends the Sells, Bids and Closes through the
market service, which pre-checks them with the market's rules and signs locally (a server
without a finalizer account of its own lets each agent also end the auctions it sells or leads,
once their deadline has passed; the buyer's two-phase close is asked for once, then the agent
waits for the load meter's reading that finishes it). Every decision
goes into a bounded log, with the policy's sentences and, for refused actions, the reason in
words (also for a transaction that fails when mined); each new entry is handed to
`emit(address, entry)` (the app sends it to the owner's Socket.IO room), and each transaction
sent to `on_sent(address, tx_hash, kind)` (the app pushes the owner's wallet and the market).

The state of charge is not on the chain and the meters do not report it. Where the bridge reports
the owner's supply meter live, the charge is read from the voltage it measures at the battery's
terminals (a lead-acid bank of `battery_v` nominal: 1.95 V a cell empty, 2.12 V full, as
`hardware.models.soc_from_voltage`). Otherwise the stored energy is estimated from the account's
energy tokens, plus those it has listed or still has to deliver (they are in the market's escrow
but still in its battery), plus energy delivered to it on open trades; that estimate forgets what
the household used itself, so it runs high. The capacity is the server's `capacity_wh`. The
expected use is the net power (load minus generation) of the meters: the bridge's live power when
it reports both meters, else the last hour of readings on the chain. "Today" for the daily limit is
the chain's UTC day; it counts what the account paid on trades opened today (also those it made by
hand) plus what the policy adds (deposits on leading bids, escrow of open trades).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from eth_account.signers.local import LocalAccount

from dapp.agents.policy import (
    Bid,
    Close,
    Decision,
    HouseholdState,
    InvalidLimits,
    Limits,
    Listing,
    MarketTerms,
    Sell,
    Trade,
    decide,
)
from dapp.chain.client import ChainClient, Lot, LotStatus
from dapp.errors import ChainError, ContractReverted
from dapp.services import messages
from dapp.services.errors import InvalidInput, UserError
from dapp.services.market import MarketService
from dapp.services.meters import LOAD, SUPPLY, MeterBoard, MeterView
from dapp.services.units import WEI_PER_ETHER, format_ether_fixed, format_time
from hardware.models import soc_from_voltage

log = logging.getLogger(__name__)

DAY_S = 86_400
HORIZON_S = 3600
MAX_LOG = 100
WATCH_S = 600.0  # how long a sent transaction is looked after

# The fields of the page's form and the JSON API, and what the policy calls them.
FIELDS = {
    "reserve_percent": "reserve_percent",
    "floor_eth_per_kwh": "floor_wei_per_kwh",
    "ceiling_eth_per_kwh": "ceiling_wei_per_kwh",
    "daily_limit_eth": "daily_limit_wei",
}
_API_FIELD = {policy: api for api, policy in FIELDS.items()}


def _same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and str(a).lower() == str(b).lower()


def _ether_to_wei(value: object, what: str, unit: str, example: str, name: str) -> str:
    """ETH text (or a JSON number) as whole wei text; InvalidInput naming the field otherwise."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidInput(messages.agent_amount_not_number(what, unit, example), name)
    text = str(value).strip().replace(",", ".") if not isinstance(value, float) else repr(value)
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise InvalidInput(messages.agent_amount_not_number(what, unit, example), name) from None
    if not amount.is_finite() or "e" in text.lower():
        raise InvalidInput(messages.agent_amount_not_number(what, unit, example), name)
    if amount < 0:
        raise InvalidInput(messages.agent_amount_negative(what), name)
    if amount > Decimal(10) ** 30:
        return str(10**48)  # far beyond any limit: the policy says what the most is
    wei = amount * WEI_PER_ETHER
    if wei != wei.to_integral_value():
        raise InvalidInput(messages.agent_amount_decimals(what), name)
    return str(int(wei))


def parse_limits(reserve_percent: object, floor_eth_per_kwh: object,
                 ceiling_eth_per_kwh: object, daily_limit_eth: object) -> Limits:
    """Limits as the page and the API take them (ETH per kWh, ETH a day); InvalidInput if bad."""
    floor = _ether_to_wei(floor_eth_per_kwh, "floor price", "ETH per kWh", "0.001",
                          "floor_eth_per_kwh")
    ceiling = _ether_to_wei(ceiling_eth_per_kwh, "ceiling price", "ETH per kWh", "0.002",
                            "ceiling_eth_per_kwh")
    daily = _ether_to_wei(daily_limit_eth, "daily spending limit", "ETH", "0.05",
                          "daily_limit_eth")
    try:
        return Limits.parse(reserve_percent, floor, ceiling, daily)
    except InvalidLimits as exc:
        raise InvalidInput(exc.message, _API_FIELD.get(exc.field, exc.field)) from None


def parse_switch(value: object, form: bool = False) -> bool:
    """The on/off switch: JSON true/false, or the form's "on"/"off"; InvalidInput otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("on", "true", "1", "off", "false", "0"):
        return value.strip().lower() in ("on", "true", "1")
    raise InvalidInput(messages.AGENT_ON_FORM if form else messages.AGENT_ON_FIELD, "on")


def limits_view(limits: Limits) -> dict[str, str]:
    """The limits as the page shows them (percent, ETH per kWh, ETH)."""
    return {
        "reserve_percent": f"{limits.reserve_percent:g}",
        "floor_eth_per_kwh": format_ether_fixed(limits.floor_wei_per_kwh),
        "ceiling_eth_per_kwh": format_ether_fixed(limits.ceiling_wei_per_kwh),
        "daily_limit_eth": format_ether_fixed(limits.daily_limit_wei),
    }


@dataclass
class _Agent:
    """One account's agent while it is on."""

    account: LocalAccount
    limits: Limits
    expires_at: float
    last_run: tuple[str, ...] = ()
    sent: dict[str, tuple[str, float]] = field(default_factory=dict)  # tx -> (what, when)
    seen: dict[str, str] | None = None  # the household as the last run saw it


@dataclass
class _Book:
    """What the service remembers per address: the limits last saved and the log."""

    limits: Limits | None = None
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_LOG))
    seq: int = 0  # the number of the last entry: a page that reconnects asks for what is newer


class AgentService:
    """The trading agents of one server: settings, the per-block run, the decision log."""

    def __init__(self, client: ChainClient, market: MarketService, meters: MeterBoard, *,
                 capacity_wh: float = 10_000.0, battery_v: float = 24.0,
                 expiry_s: float = 24 * 3600.0,
                 emit: Callable[[str, dict[str, Any]], None] = lambda address, entry: None,
                 on_sent: Callable[[str, str, str], None] = lambda address, tx, kind: None,
                 finalize_own: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.market = market
        self.meters = meters
        self.capacity_wh = float(capacity_wh)
        self.battery_v = float(battery_v)
        self.expiry_s = float(expiry_s)
        self.emit = emit
        self.on_sent = on_sent
        self.finalize_own = finalize_own  # no server finalizer: agents end their own auctions
        self._clock = clock
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._agents: dict[str, _Agent] = {}
        self._books: dict[str, _Book] = {}

    # -- settings -------------------------------------------------------------------------------

    def purge_expired(self) -> None:
        """Turn off the agents whose time is up (their keys are forgotten), saying so."""
        with self._lock:
            now = self._clock()
            expired = [self._agents.pop(k).account.address
                       for k, a in list(self._agents.items()) if a.expires_at <= now]
        for address in expired:
            self._log(address, "status", [messages.agent_expired(self.expiry_s / 3600)])

    def is_on(self, address: str) -> bool:
        """Whether the agent of `address` is on."""
        self.purge_expired()
        with self._lock:
            return address.lower() in self._agents

    def notes(self) -> dict[str, str]:
        """The sentences the page shows about the key and the battery signal."""
        return {
            "key": messages.AGENT_KEY_NOTE.format(hours=f"{self.expiry_s / 3600:g}"),
            "signal": messages.AGENT_SIGNAL_NOTE.format(
                capacity=f"{self.capacity_wh / 1000:g}", volts=f"{self.battery_v:g}"),
        }

    def status(self, address: str) -> dict[str, Any]:
        """The agent of `address`: on/off, limits, when it expires, the log (newest first)."""
        self.purge_expired()
        key = address.lower()
        with self._lock:
            agent = self._agents.get(key)
            book = self._books.get(key)
            limits = agent.limits if agent else (book.limits if book else None)
            entries = list(reversed(book.log)) if book else []
        return {
            "on": agent is not None,
            "limits": limits_view(limits) if limits else None,
            "expires_at": agent.expires_at if agent else None,
            "household": agent.seen if agent else None,
            "capacity_kwh": f"{self.capacity_wh / 1000:g}",
            "notes": self.notes(),
            "log": entries,
        }

    def entries(self, address: str) -> list[dict[str, Any]]:
        """The log of `address`, oldest first (each entry numbered by its `seq`)."""
        with self._lock:
            book = self._books.get(address.lower())
            return list(book.log) if book else []

    def configure(self, account: LocalAccount, on: object, reserve_percent: object = None,
                  floor_eth_per_kwh: object = None, ceiling_eth_per_kwh: object = None,
                  daily_limit_eth: object = None, *, form: bool = False) -> dict[str, Any]:
        """Turn the agent on (with limits) or off; InvalidInput and nothing changed if bad.

        Limits left out (None) keep the ones saved before; turning it off needs none.
        """
        switch = parse_switch(on, form)
        key = account.address.lower()
        given = (reserve_percent, floor_eth_per_kwh, ceiling_eth_per_kwh, daily_limit_eth)
        with self._lock:
            book = self._books.get(key)
            saved = book.limits if book else None
        limits = saved
        if any(v is not None for v in given) or (switch and saved is None):
            old = limits_view(saved) if saved else {}
            values = [old.get(name) if v is None else v
                      for name, v in zip(FIELDS, given, strict=True)]
            limits = parse_limits(*values)
        with self._lock:
            book = self._books.setdefault(key, _Book())
            book.limits = limits
            if switch:
                assert limits is not None
                agent = _Agent(account, limits, self._clock() + self.expiry_s)
                before = self._agents.get(key)
                if before is not None:  # new limits: keep watching what it sent
                    agent.sent = before.sent
                self._agents[key] = agent
            else:
                self._agents.pop(key, None)
        view = limits_view(limits) if limits else None
        if switch:
            assert view is not None
            text = messages.agent_turned_on(*view.values())
        elif view is not None and any(v is not None for v in given):
            text = messages.agent_limits_saved(*view.values())
        else:
            text = messages.AGENT_TURNED_OFF
        self._log(account.address, "status", [text])
        return {"message": text, **self.status(account.address)}

    def forget_all(self) -> None:
        """Turn every agent off (the server stops): no key stays behind."""
        with self._lock:
            self._agents.clear()

    # -- the per-block run ----------------------------------------------------------------------

    def run_once(self) -> int:
        """Decide and act for every agent that is on; returns the number of actions sent."""
        self.purge_expired()
        with self._lock:
            agents = list(self._agents.values())
        if not agents or not self._run_lock.acquire(blocking=False):
            return 0
        try:
            try:
                chain_now = self.client.latest_timestamp()
                params = self.market.parameters()
                lots = self.market.lots()
            except ChainError as exc:
                log.debug("agents: chain not readable: %s", exc)
                return 0
            terms = MarketTerms(
                min_increment_wei_per_kwh=params["min_increment_per_kwh"],
                auction_s=min(max(300, params["min_duration"]), params["max_duration"]),
            )
            sent = 0
            for agent in agents:
                try:
                    sent += self._run_agent(agent, chain_now, lots, terms)
                except ChainError as exc:
                    log.debug("agents: %s skipped: %s", agent.account.address, exc)
                except Exception:
                    log.exception("agents: run for %s failed", agent.account.address)
            return sent
        finally:
            self._run_lock.release()

    def state_of(self, address: str, chain_now: int, lots: list[Lot],
                 states: list[MeterView] | None = None) -> HouseholdState:
        """The household as the agent sees it (see the module docstring for the estimates);
        `states`: the bridge's meters, read once per run (read here if None)."""
        states = self.meters.states() if states is None else states
        listings = tuple(
            Listing(lot.id, lot.seller, lot.energy_wh, self._start(lot), lot.deadline,
                    lot.price_per_kwh if lot.buyer else 0, lot.buyer)
            for lot in lots if lot.status == LotStatus.LISTED
        )
        trades = tuple(Trade(lot.id, lot.seller, lot.buyer or "", lot.energy_wh,
                             lot.delivered_wh, lot.price_per_kwh)
                       for lot in lots if lot.status == LotStatus.OPEN)
        tokens = self.client.token_balance(address)
        in_escrow = sum(x.energy_wh for x in listings if _same(x.seller, address))
        in_escrow += sum(t.remaining_wh for t in trades if _same(t.seller, address))
        received = sum(t.delivered_wh for t in trades if _same(t.buyer, address))
        volts = self._battery_volts(address, states)
        if volts is not None:
            soc = soc_from_voltage(volts, self.battery_v)
        else:
            soc = min(1.0, (tokens + in_escrow + received) / self.capacity_wh)
        day_start = chain_now - chain_now % DAY_S
        spent = sum(lot.paid_wei for lot in lots
                    if lot.status in (LotStatus.OPEN, LotStatus.CLOSED)
                    and _same(lot.buyer, address) and lot.deadline >= day_start)
        return HouseholdState(
            account=address, now_s=chain_now,
            soc=soc, capacity_wh=self.capacity_wh,
            net_load_w=self._net_load_w(address, states), horizon_s=HORIZON_S, tokens_wh=tokens,
            listings=listings, trades=trades, spent_today_wei=spent,
        )

    def _start(self, lot: Lot) -> int:
        start = self.market.start_price(lot)
        return lot.price_per_kwh if start is None else start

    def _battery_volts(self, address: str, states: list[MeterView]) -> float | None:
        """The voltage the owner's supply meter measures at its battery now (None: not live)."""
        supply = self.meters.meter_of(address, SUPPLY, states)
        if supply is None or not supply.online or not supply.voltage_v:
            return None
        return supply.voltage_v

    def battery_source(self, address: str, states: list[MeterView] | None = None) -> str:
        """Where the agent's state of charge comes from: "voltage" or "tokens"."""
        states = self.meters.states() if states is None else states
        return "voltage" if self._battery_volts(address, states) is not None else "tokens"

    def _net_load_w(self, address: str, states: list[MeterView]) -> float:
        """Load minus generation in W: the bridge's live power, else the last hour on chain."""
        load = self.meters.meter_of(address, LOAD, states)
        supply = self.meters.meter_of(address, SUPPLY, states)
        if (load and supply and load.online and supply.online
                and load.power_w is not None and supply.power_w is not None):
            return load.power_w - supply.power_w
        history = self.meters.history(address)
        buckets = max(1, HORIZON_S // history["bucket_seconds"])
        used = sum(history["consumption_kwh"][-buckets:])
        made = sum(history["generation_kwh"][-buckets:])
        return (used - made) * 1000 * 3600 / (buckets * history["bucket_seconds"])

    def _run_agent(self, agent: _Agent, chain_now: int, lots: list[Lot],
                   terms: MarketTerms) -> int:
        address = agent.account.address
        self._check_sent(agent)
        if self.client.pending_transactions(address):
            self._note_run(agent, [("note", messages.AGENT_WAITING)])
            return 0
        states = self.meters.states()  # the bridge's meters, once for this run
        state = self.state_of(address, chain_now, lots, states)
        agent.seen = {
            "battery_percent": f"{100 * state.soc:.0f}",
            "battery_from": ("its voltage" if self.battery_source(address, states) == "voltage"
                             else "your tokens"),
            "stored_kwh": f"{state.stored_wh / 1000:.3f}",
            "net_load_w": f"{state.net_load_w:.0f}",
            "spent_today_eth": format_ether_fixed(state.committed_wei),
            "daily_limit_eth": format_ether_fixed(agent.limits.daily_limit_wei),
        }
        decision: Decision = decide(state, agent.limits, terms)
        entries: list[tuple[str, str]] = []
        closing = {lot.id for lot in lots if lot.status == LotStatus.OPEN and lot.closing}
        actions = []
        for action in decision.actions:  # the buyer's close is two-phase: ask once, then wait
            if isinstance(action, Close) and action.trade_id in closing:
                entries.append(("note", messages.agent_close_pending(action.trade_id)))
            else:
                actions.append(action)
        if self.finalize_own:
            actions[:0] = [_Finalize(lot.id) for lot in lots
                           if lot.status == LotStatus.LISTED and chain_now >= lot.deadline
                           and (_same(lot.seller, address) or _same(lot.buyer, address))]
        if any(isinstance(a, Bid) for a in actions) and not self.client.load_meter_of(address):
            actions = [a for a in actions if not isinstance(a, Bid)]
            entries.append(("note", messages.AGENT_NO_LOAD_METER))
        sent = 0
        for action in actions:
            if not self._current(agent):
                return sent  # turned off (or changed) meanwhile: its key is not used again
            try:
                tx_hash = self._execute(agent.account, action)
            except UserError as exc:
                entries.append(("failure", messages.agent_action_failed(
                    _what(action), exc.message)))
                continue
            sent += 1
            agent.sent[tx_hash] = (_what(action), self._clock())
            self.on_sent(address, tx_hash, "agent's " + _kind(action))
            reason = (messages.agent_finalized(action.lot_id) if isinstance(action, _Finalize)
                      else action.reason)
            entries.append(("action", f"{reason} (transaction {tx_hash})"))
        entries += [("note", text) for text in decision.notes]
        self._note_run(agent, entries, always=sent > 0)
        return sent

    def _current(self, agent: _Agent) -> bool:
        """Whether `agent` is still the one on for its account (not turned off or replaced)."""
        with self._lock:
            return self._agents.get(agent.account.address.lower()) is agent

    def _check_sent(self, agent: _Agent) -> None:
        """Log the agent's transactions that failed when mined, with the reason in words."""
        for tx_hash, (what, since) in list(agent.sent.items()):
            try:
                self.client.wait(tx_hash, timeout=0.01)
            except ContractReverted as exc:
                self._log(agent.account.address, "failure", [messages.agent_action_failed(
                    what, messages.revert_sentence(exc))])
            except ChainError:
                if self._clock() - since < WATCH_S:
                    continue  # not mined yet: look again next block
            del agent.sent[tx_hash]

    def _execute(self, account: LocalAccount, action: Sell | Bid | Close | _Finalize) -> str:
        """Send one action through the market service (pre-checked, signed locally)."""
        if isinstance(action, _Finalize):
            result = self.market.finalize(account, action.lot_id)
        elif isinstance(action, Sell):
            energy = str(Decimal(action.energy_wh) / 1000)
            result = self.market.sell(account, energy, str(action.start_price_wei_per_kwh),
                                      "wei", str(action.duration_s), "seconds")
        elif isinstance(action, Bid):
            result = self.market.bid(account, action.lot_id, str(action.price_wei_per_kwh),
                                     "wei")
        else:
            result = self.market.close(account, action.trade_id)
        return result["tx_hash"]

    # -- the log --------------------------------------------------------------------------------

    def _note_run(self, agent: _Agent, entries: list[tuple[str, str]],
                  always: bool = False) -> None:
        """Log a run's entries unless they repeat the previous run's word for word."""
        key = tuple(f"{kind}:{text}" for kind, text in entries)
        if not always and key == agent.last_run:
            return
        agent.last_run = key
        for kind, text in entries:
            self._log(agent.account.address, kind, [text])

    def _log(self, address: str, kind: str, texts: list[str]) -> None:
        with self._lock:
            made = self._log_locked(address, kind, texts)
        for entry in made:
            try:
                self.emit(address, entry)
            except Exception:  # noqa: BLE001 - the log is kept even if the push fails
                log.exception("agents: log push failed")

    def _log_locked(self, address: str, kind: str, texts: list[str]) -> list[dict[str, Any]]:
        book = self._books.setdefault(address.lower(), _Book())
        agent = self._agents.get(address.lower())
        made = []
        for text in texts:
            stamp = self._clock()
            book.seq += 1
            entry = {"seq": book.seq, "time": stamp, "time_text": format_time(int(stamp)),
                     "kind": kind, "text": text, "on": agent is not None,
                     "household": agent.seen if agent else None}
            book.log.append(entry)
            made.append(entry)
        return made


@dataclass(frozen=True)
class _Finalize:
    """End an auction of the agent's (as seller or leading bidder) whose deadline passed."""

    lot_id: int


def _kind(action: Sell | Bid | Close | _Finalize) -> str:
    """The action's kind as the pending list and notices name it."""
    if isinstance(action, _Finalize):
        return "finalize"
    if isinstance(action, Sell):
        return "listing"
    return "bid" if isinstance(action, Bid) else "close connection"


def _what(action: Sell | Bid | Close | _Finalize) -> str:
    """The action in a few words, for a failure in the log."""
    if isinstance(action, _Finalize):
        return f"finalize listing {action.lot_id}"
    if isinstance(action, Sell):
        return f"offer {action.energy_wh / 1000:.3f} kWh"
    if isinstance(action, Bid):
        return f"bid on lot {action.lot_id}"
    return f"close trade {action.trade_id}"
