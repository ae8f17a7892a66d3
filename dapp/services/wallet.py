"""Accounts (create, import, unlock), balances, pending transactions, mining and sending Ether."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from dapp.chain.client import ChainClient, Meter
from dapp.chain.contracts import load_artifact
from dapp.errors import ChainError, ChainUnavailable, WalletError
from dapp.services import messages
from dapp.services.amounts import parse_address, parse_ether
from dapp.services.errors import ActionRefused, ChainDown, InvalidInput
from dapp.services.messages import (
    as_user_error,
    chain_error_sentence,
    deployment_unknown,
    sentenced,
    unavailable_detail,
)
from dapp.services.meters import MeterBoard
from dapp.services.units import format_ether, format_kwh, short_address
from dapp.wallet.keystore import MAX_KEYFILE_BYTES, MAX_LABEL_LENGTH, Keystore
from hardware.protocol import LOAD

log = logging.getLogger(__name__)

MIN_PASSPHRASE = 8
MAX_PASSPHRASE = 1024
PLAIN_TRANSFER_GAS = 21_000
# The deployment's roles and the contract (artifact) each one is.
CONTRACTS = {"token": "EnergyToken", "registry": "MeterRegistry", "market": "EnergyMarket"}


def check_passphrase(passphrase: object, what: str = "the passphrase") -> str:
    """A passphrase as given; InvalidInput if it is missing or absurdly long."""
    if not isinstance(passphrase, str) or passphrase == "":
        raise InvalidInput(messages.enter(what))
    if len(passphrase) > MAX_PASSPHRASE:
        raise InvalidInput(messages.passphrase_too_long(what))
    return passphrase


def _label(label: object) -> str | None:
    """An optional account label: None when blank; InvalidInput when unusable."""
    if label is None:
        return None
    if not isinstance(label, str):
        raise InvalidInput(messages.LABEL_NOT_TEXT)
    text = label.strip()
    if not text:
        return None
    if len(text) > MAX_LABEL_LENGTH or not text.isprintable():
        raise InvalidInput(messages.label_unusable(MAX_LABEL_LENGTH))
    return text


def meter_view(meter: Meter) -> dict[str, Any]:
    """A meter as the wallet shows it (an offer, or one of the account's meters)."""
    return {"address": meter.address, "kind": meter.kind, "status": meter.status,
            "rated_power_w": meter.rated_power_w}


def answerable_offer(client: ChainClient, owner: str, meter: object, *,
                     accepting: bool) -> Meter:
    """The meter at `meter`, offered to `owner` and still open; a sentence for anything else.

    The checks the registry makes on acceptMeter/declineMeter, made first so that nothing is sent
    that would fail: the address was offered, to `owner`, is still an offer, and (accepting a
    load meter) `owner` has no other active load meter.
    """
    address = parse_address(meter, "the meter")
    try:
        info = client.meter(address)
        current = (client.load_meter_of(owner)
                   if accepting and info is not None and info.kind == LOAD else None)
    except ChainError as exc:
        raise as_user_error(exc) from None
    if info is None:
        raise ActionRefused(messages.meter_never_offered(address))
    if info.owner != owner:
        raise ActionRefused(messages.meter_not_yours(address))
    if info.status != "offered":
        raise ActionRefused(messages.meter_not_pending(address, info.status))
    if current is not None:
        raise ActionRefused(messages.second_load_meter(current))
    return info


class WalletService:
    """Everything the wallet page and the wallet API do, without Flask."""

    def __init__(
        self,
        client: ChainClient,
        keystore: Keystore,
        meters: MeterBoard,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.keystore = keystore
        self.meters = meters
        self._clock = clock
        self._labels: tuple[float, dict[str, str | None]] | None = None
        self._labels_lock = threading.Lock()

    # -- accounts -------------------------------------------------------------------------------

    def accounts(self) -> list[dict[str, Any]]:
        """The accounts one can log in with: address, label and a display name."""
        try:
            entries = self.keystore.list()
        except WalletError as exc:
            log.error("keystore: %s", exc)
            return []
        return [
            {"address": e.address, "label": e.label, "name": e.label or short_address(e.address)}
            for e in entries
        ]

    def label_of(self, address: str | None) -> str | None:
        """The keystore label of `address` (cached a few seconds), or None."""
        if not address:
            return None
        with self._labels_lock:
            now = self._clock()
            if self._labels is None or now - self._labels[0] > 5.0:
                self._labels = (now, {a["address"]: a["label"] for a in self.accounts()})
            return self._labels[1].get(address)

    def _forget_labels(self) -> None:
        with self._labels_lock:
            self._labels = None

    def create_account(self, passphrase: object, confirm: object, label: object = None) -> str:
        """Make a new keystore account; returns its address."""
        passphrase = check_passphrase(passphrase, "a passphrase for the new account")
        if len(passphrase) < MIN_PASSPHRASE:
            raise InvalidInput(messages.passphrase_too_short(MIN_PASSPHRASE))
        if confirm != passphrase:
            raise InvalidInput(messages.PASSPHRASES_DIFFER)
        try:
            address = self.keystore.create(passphrase, label=_label(label))
        except WalletError as exc:
            raise as_user_error(exc) from None
        self._forget_labels()
        log.info("created account %s", address)
        return address

    def import_account(self, content: bytes, passphrase: object, label: object = None) -> str:
        """Import a geth/V3 keystore file's bytes; returns its address."""
        passphrase = check_passphrase(passphrase, "the passphrase of the key file")
        if not content:
            raise InvalidInput(messages.KEYFILE_MISSING)
        if len(content) > MAX_KEYFILE_BYTES:
            raise InvalidInput(messages.KEYFILE_TOO_LARGE)
        try:
            json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise InvalidInput(messages.KEYFILE_NOT_JSON) from None
        label = _label(label)
        # The keystore imports from a path; a private temporary file keeps the bytes off the
        # keystore directory until they are checked, decrypted and accepted.
        with tempfile.TemporaryDirectory(prefix="microgrid-import-") as tmp:
            path = Path(tmp) / "upload.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            try:
                address = self.keystore.import_file(path, passphrase, label=label)
            except WalletError as exc:
                raise as_user_error(exc) from None
        self._forget_labels()
        log.info("imported account %s", address)
        return address

    def unlock(self, address: object, passphrase: object) -> LocalAccount:
        """Decrypt the key of `address` (the heavy step of logging in)."""
        address = parse_address(address, "the account")
        passphrase = check_passphrase(passphrase)
        try:
            if not self.keystore.has(address):
                raise InvalidInput(messages.no_such_account(address))
            return self.keystore.unlock(address, passphrase)
        except WalletError as exc:
            raise as_user_error(exc) from None

    # -- reads ----------------------------------------------------------------------------------

    def chain_status(self) -> dict[str, Any]:
        """Whether the chain answers, its latest block, and the mining state."""
        try:
            block = self.client.block_number()
            stamp = self.client.latest_timestamp()
        except ChainError as exc:
            return {"available": False, "message": unavailable_detail(exc), "block": None,
                    "timestamp": None, "server_time": time.time(), "mining": None}
        return {
            "available": True,
            "message": "",
            "block": block,
            "timestamp": stamp,
            "server_time": time.time(),
            "mining": self.mining_status(),
        }

    def network(self) -> dict[str, Any]:
        """chain_status plus the chain id and the deployment (None while unknown); never raises.

        What a DApp developer needs to find the contracts without logging in. `deployment` is
        None (with `deployment_message` saying why) when the chain has no Microgrid contracts
        or cannot be read.
        """
        status = self.chain_status()
        chain_id: int | None = None
        deployment: dict[str, Any] | None = None
        why = status["message"]
        if status["available"]:
            try:
                chain_id = self.client.info.chain_id
                dep = self.client.deployment
                deployment = {role: getattr(dep, role) for role in CONTRACTS}
                deployment.update(operator=dep.operator, block=dep.block)
                why = ""
            except ChainError as exc:
                why = deployment_unknown(exc)
        return {**status, "chain_id": chain_id, "deployment": deployment,
                "deployment_message": why, "contracts": dict(CONTRACTS)}

    @staticmethod
    def abi(name: str) -> list[dict[str, Any]] | None:
        """The ABI of contract `name` from the committed artifacts; None for another name."""
        if name not in CONTRACTS.values():
            return None
        return load_artifact(name).abi

    def mining_status(self) -> dict[str, Any]:
        """{"mining", "available", "detail"} (never raises)."""
        try:
            status = self.client.mining_status()
        except ChainError as exc:
            return {"mining": False, "available": False, "detail": chain_error_sentence(exc)}
        return {"mining": status.mining, "available": status.available, "detail": status.detail,
                "block_time": status.block_time}

    def pending(self, address: str) -> list[dict[str, Any]]:
        """Unmined transactions of `address` and its meters."""
        meters = self.meters.meter_addresses(address)
        return [
            {
                "hash": tx.hash,
                "kind": tx.kind,
                "nonce": tx.nonce,
                "value": format_ether(tx.value),
                "age_seconds": round(tx.age_seconds, 1),
            }
            for tx in self.client.pending_transactions(address, meters)
        ]

    def summary(self, address: str) -> dict[str, Any]:
        """Balances, credit, pending transactions, generation and its chart for `address`."""
        base: dict[str, Any] = {
            "address": address,
            "label": self.label_of(address),
            "generation": self.meters.generation(address),
            "history": self.meters.history(address),
        }
        try:
            tokens = self.client.token_balance(address)
            ether = self.client.ether_balance(address)
            credit = self.client.credit_of(address)
            pending = self.pending(address)
        except ChainError as exc:
            return {**base, "available": False, "message": chain_error_sentence(exc)}
        return {
            **base,
            "available": True,
            "message": "",
            "tokens_wh": str(tokens),
            "tokens_kwh": format_kwh(tokens),
            "ether_wei": str(ether),
            "ether": format_ether(ether),
            "credit_wei": str(credit),
            "credit": format_ether(credit),
            "pending": pending,
        }

    def meter_offers(self, address: str) -> list[dict[str, Any]]:
        """Meters the operator offered to `address` that it has not answered yet."""
        try:
            offers = self.client.meter_offers(address)
        except ChainError as exc:
            log.warning("meter offers of %s: %s", address, exc)
            return []
        return [meter_view(m) for m in offers]

    # -- actions --------------------------------------------------------------------------------

    def accept_meter(self, account: LocalAccount, meter: object) -> dict[str, str]:
        """Accept a meter offered to the account: its signed readings count for it."""
        info = answerable_offer(self.client, account.address, meter, accepting=True)
        tx_hash = sentenced(lambda: self.client.accept_meter(account, info.address))
        return {"tx_hash": tx_hash, "message": messages.meter_accept_sent(info.address,
                                                                          info.kind)}

    def decline_meter(self, account: LocalAccount, meter: object) -> dict[str, str]:
        """Decline a meter offered to the account: it never counts for it."""
        info = answerable_offer(self.client, account.address, meter, accepting=False)
        tx_hash = sentenced(lambda: self.client.decline_meter(account, info.address))
        return {"tx_hash": tx_hash, "message": messages.meter_decline_sent(info.address)}

    def preview_send(self, sender: str, to: object, amount: object) -> dict[str, Any]:
        """Validate a Send Ether form: recipient, amount, and that the sender can afford it."""
        recipient = parse_address(to)
        wei = parse_ether(amount)
        try:
            balance = self.client.ether_balance(sender)
            fee = PLAIN_TRANSFER_GAS * self.client.gas_price()
        except ChainError as exc:
            raise as_user_error(exc) from None
        if wei > balance:
            raise ActionRefused(messages.cannot_send_more_than(balance, wei))
        if wei + fee > balance:
            raise ActionRefused(messages.nothing_left_for_fee(wei, fee))
        return {"to": recipient, "amount_wei": str(wei), "amount": format_ether(wei),
                "to_label": self.label_of(recipient)}

    def send_ether(self, account: LocalAccount, to: object, amount: object) -> dict[str, str]:
        """Send Ether after the same checks as the preview; returns the transaction hash."""
        preview = self.preview_send(account.address, to, amount)
        tx_hash = sentenced(
            lambda: self.client.send_ether(account, preview["to"], int(preview["amount_wei"]))
        )
        return {"tx_hash": tx_hash,
                "message": messages.ether_sent(preview["amount"], preview["to"])}

    def withdraw(self, account: LocalAccount) -> dict[str, str]:
        """Withdraw all market credit."""
        try:
            credit = self.client.credit_of(account.address)
        except ChainError as exc:
            raise as_user_error(exc) from None
        if credit == 0:
            raise ActionRefused(messages.NO_CREDIT)
        tx_hash = sentenced(lambda: self.client.withdraw(account))
        return {"tx_hash": tx_hash, "message": messages.withdraw_sent(credit)}

    def start_mining(self) -> dict[str, Any]:
        """Start making blocks (where the node allows it)."""
        return self._mining(start=True)

    def stop_mining(self) -> dict[str, Any]:
        """Stop making blocks (where the node allows it)."""
        return self._mining(start=False)

    def _mining(self, start: bool) -> dict[str, Any]:
        status = self.mining_status()
        if not status["available"]:
            raise ActionRefused(messages.mining_unavailable(status["detail"]))
        try:
            self.client.start_mining() if start else self.client.stop_mining()
        except ChainUnavailable as exc:
            raise ChainDown(chain_error_sentence(exc)) from None
        except ChainError as exc:
            raise ActionRefused(messages.node_refused(exc)) from None
        return self.mining_status()

