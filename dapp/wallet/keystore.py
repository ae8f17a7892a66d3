"""Geth-compatible V3 keystore files: create, list, import and unlock accounts.

Files live in `<data-dir>/keystore`, named like geth names them
(`UTC--2025-01-31T12-00-00.000000Z--<lowercase address>`), mode 0600 in a 0700 directory, so the
directory can be handed to geth (`--keystore`) and geth's files can be copied in. Labels
("producer", "household 3") are kept apart in `labels.json` so the key files stay exactly geth's
format.

New accounts use geth's standard scrypt cost (N=2^18, r=8, p=1): about 0.5 s and 256 MiB per
encrypt or decrypt. Tests and demos may pass a lower `scrypt_n` (the CLI reads `--kdf-n` or
MICROGRID_KDF_N); imported files are refused before any derivation if they ask for more work than
geth's standard, so a hostile file cannot make the server spend minutes or gigabytes on it.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import is_checksum_address, is_hex_address, to_checksum_address

from dapp import atomic
from dapp.errors import WalletError

GETH_SCRYPT_N = 2**18
GETH_SCRYPT_R = 8
GETH_SCRYPT_P = 1
# scrypt costs time ~ N*r*p and memory ~ 128*N*r bytes; geth's standard is the most we accept.
MAX_SCRYPT_WORK = GETH_SCRYPT_N * GETH_SCRYPT_R * GETH_SCRYPT_P
# About one second of PBKDF2-HMAC-SHA256 on a small machine (eth-account's own default is 10^6).
MAX_PBKDF2_ITERATIONS = 2**22
# A V3 file is ~500 bytes; anything much larger is not a key file.
MAX_KEYFILE_BYTES = 64 * 1024
LABELS_FILE = "labels.json"
MAX_LABEL_LENGTH = 64
WRONG_PASSPHRASE = "wrong passphrase or damaged keystore"  # noqa: S105 (a message)

_GETH_NAME = re.compile(r"^UTC--.+--([0-9a-fA-F]{40})$")
_HEX = re.compile(r"^(?:0x)?([0-9a-fA-F]*)$")


@dataclass(frozen=True)
class KeystoreEntry:
    """One account in the keystore: checksummed address, its file, and its label if any."""

    address: str
    path: Path
    label: str | None = None


def check_scrypt_n(n: int) -> int:
    """`n` if it is a valid scrypt cost for new keys (power of two, 2 to 2^18); else WalletError."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n & (n - 1):
        raise WalletError(f"scrypt N must be a power of two of at least 2, not {n!r}")
    if n > GETH_SCRYPT_N:
        raise WalletError(f"scrypt N {n} is above geth's standard {GETH_SCRYPT_N} (2^18)")
    return n


def checksum_address(address: str) -> str:
    """The checksummed form of `address` (with or without 0x), or WalletError if it is not one."""
    text = address.strip() if isinstance(address, str) else ""
    if text and not text.lower().startswith("0x"):
        text = "0x" + text
    digits = text[2:]
    # Mixed case is an EIP-55 checksum and must be right: a wrong one means a mistyped address.
    mixed_case = digits != digits.lower() and digits != digits.upper()
    if not is_hex_address(text) or (mixed_case and not is_checksum_address(text)):
        raise WalletError(f"not an Ethereum address: {address!r}")
    return to_checksum_address(text)


def keystore_file_name(address: str, when: datetime | None = None) -> str:
    """Geth's file name for a key: `UTC--<ISO time with - for :>Z--<lowercase hex address>`."""
    when = (when or datetime.now(UTC)).astimezone(UTC)
    stamp = when.strftime("%Y-%m-%dT%H-%M-%S.%f") + "Z"
    return f"UTC--{stamp}--{checksum_address(address)[2:].lower()}"


def check_keyfile(data: object) -> dict[str, Any]:
    """Check that `data` is a V3 keystore within geth's cost limits; return it with lowercase keys.

    Runs before any key derivation: a file that asks for more scrypt/PBKDF2 work than geth's
    standard is refused here, cheaply, with a WalletError saying why.
    """
    if not isinstance(data, dict):
        raise WalletError("not a keystore file: expected a JSON object")
    keyfile = _lower_keys(data)
    if keyfile.get("version") != 3 or isinstance(keyfile.get("version"), bool):
        raise WalletError(f"not a V3 keystore file (version {keyfile.get('version')!r})")
    crypto = keyfile.get("crypto")
    if not isinstance(crypto, dict):
        raise WalletError("not a keystore file: no 'crypto' section")
    if crypto.get("cipher") != "aes-128-ctr":
        raise WalletError(
            f"unsupported keystore cipher {crypto.get('cipher')!r} (need aes-128-ctr)"
        )
    params = crypto.get("cipherparams")
    _hex_field(params.get("iv") if isinstance(params, dict) else None, "cipherparams.iv", 16)
    _hex_field(crypto.get("ciphertext"), "ciphertext", 32)
    _hex_field(crypto.get("mac"), "mac", 32)
    kdfparams = crypto.get("kdfparams")
    if not isinstance(kdfparams, dict):
        raise WalletError("not a keystore file: no 'kdfparams'")
    kdf = crypto.get("kdf")
    if kdf == "scrypt":
        _check_scrypt_params(kdfparams)
    elif kdf == "pbkdf2":
        _check_pbkdf2_params(kdfparams)
    else:
        raise WalletError(f"unsupported key derivation function {kdf!r} (need scrypt or pbkdf2)")
    if keyfile.get("address") is not None:
        _claimed_address(keyfile)
    return keyfile


class Keystore:
    """A directory of geth-compatible V3 key files plus `labels.json`.

    Decrypting (and encrypting) a key at geth's cost takes ~0.5 s and ~256 MiB, so at most
    `max_concurrent_decrypts` run at once per Keystore; share one instance per process.
    """

    def __init__(
        self,
        directory: Path,
        *,
        scrypt_n: int = GETH_SCRYPT_N,
        max_concurrent_decrypts: int = 2,
    ) -> None:
        """Use `directory` (created on first write); new keys get scrypt N=`scrypt_n`."""
        if isinstance(max_concurrent_decrypts, bool) or max_concurrent_decrypts < 1:
            raise WalletError("max_concurrent_decrypts must be at least 1")
        self.directory = Path(directory)
        self.scrypt_n = check_scrypt_n(scrypt_n)
        self.max_concurrent_decrypts = max_concurrent_decrypts
        self._kdf_slots = threading.BoundedSemaphore(max_concurrent_decrypts)
        # Serialises "is this address new?" + write, and labels.json read-modify-write.
        self._write_lock = threading.Lock()

    def __repr__(self) -> str:
        """Directory and cost settings only."""
        return f"Keystore({str(self.directory)!r}, scrypt_n={self.scrypt_n})"

    def list(self) -> list[KeystoreEntry]:
        """Every account in the directory, oldest first (geth's file names sort by creation)."""
        if not self.directory.is_dir():
            return []
        labels = self._read_labels()
        entries = []
        for path in sorted(self.directory.iterdir()):
            address = _address_of_file(path)
            if address is not None:
                entries.append(KeystoreEntry(address, path, labels.get(address)))
        return entries

    def has(self, address: str) -> bool:
        """Whether a key file for `address` is in the keystore."""
        wanted = checksum_address(address)
        return any(entry.address == wanted for entry in self.list())

    def path_for(self, address: str) -> Path:
        """The key file of `address`; WalletError if the keystore has none."""
        wanted = checksum_address(address)
        for entry in self.list():
            if entry.address == wanted:
                return entry.path
        raise WalletError(f"no key for {wanted} in {self.directory}")

    def label_of(self, address: str) -> str | None:
        """The label of `address`, or None."""
        return self._read_labels().get(checksum_address(address))

    def create(self, passphrase: str, label: str | None = None) -> str:
        """Make a new account encrypted with `passphrase`; return its checksummed address."""
        if not passphrase:
            raise WalletError("the passphrase of a new account must not be empty")
        label = _check_label(label)
        account = Account.create()
        with self._kdf_slots:
            keyfile = Account.encrypt(
                account.key, passphrase, kdf="scrypt", iterations=self.scrypt_n
            )
        keyfile["address"] = account.address[2:].lower()  # geth writes it lowercase
        with self._write_lock:
            self._write_keyfile(account.address, keyfile)
            if label is not None:
                self._set_label(account.address, label)
        return account.address

    def import_file(self, path: Path, passphrase: str, label: str | None = None) -> str:
        """Copy a V3 key file (geth, MetaMask, eth-account) into the keystore; return its address.

        The file is checked against geth's cost limits before any derivation, must decrypt with
        `passphrase`, must hold the key of the address it claims, and must not already be here.
        """
        label = _check_label(label)
        original = _load_json(Path(path))
        keyfile = check_keyfile(original)
        claimed = _claimed_address(keyfile)
        if claimed is not None and self.has(claimed):
            raise WalletError(f"{claimed} is already in the keystore")
        key = self._decrypt_bounded(keyfile, passphrase)
        address = Account.from_key(key).address
        if claimed is not None and claimed != address:
            raise WalletError(
                f"keystore file claims address {claimed} but holds the key of {address}"
            )
        # Keep the file as the other tool wrote it; geth indexes by the address field, so set it.
        stored = {k: v for k, v in original.items() if k.lower() != "address"}
        stored["address"] = address[2:].lower()
        with self._write_lock:
            if self.has(address):
                raise WalletError(f"{address} is already in the keystore")
            self._write_keyfile(address, stored)
            if label is not None:
                self._set_label(address, label)
        return address

    def unlock(self, address: str, passphrase: str) -> LocalAccount:
        """Decrypt the key of `address`; WalletError on a wrong passphrase or a damaged file."""
        wanted = checksum_address(address)
        path = self.path_for(wanted)
        keyfile = check_keyfile(_load_json(path))
        account = Account.from_key(self._decrypt_bounded(keyfile, passphrase))
        if account.address != wanted:
            raise WalletError(
                f"key file {path.name} holds the key of {account.address}, not {wanted}"
            )
        return account

    def _decrypt(self, keyfile: dict[str, Any], passphrase: str) -> bytes:
        """Derive and decrypt the raw private key (the heavy step; subclasses may observe it)."""
        return bytes(Account.decrypt(keyfile, passphrase))

    def _decrypt_bounded(self, keyfile: dict[str, Any], passphrase: str) -> bytes:
        """`_decrypt` under the concurrency bound, with every failure reported the same way."""
        with self._kdf_slots:
            try:
                return self._decrypt(keyfile, passphrase)
            except (ValueError, TypeError, KeyError):
                # One message for wrong passphrase and tampered MAC/ciphertext: both look the same.
                raise WalletError(WRONG_PASSPHRASE) from None

    def _ensure_directory(self) -> None:
        """Create the keystore directory private to the user."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)

    def _write_keyfile(self, address: str, keyfile: dict[str, Any]) -> Path:
        """Write a key file under geth's name, never replacing an existing file."""
        self._ensure_directory()
        target = self.directory / keystore_file_name(address)
        try:  # a key file is never overwritten
            atomic.write_json(target, keyfile, mode=0o600, exclusive=True)
        except FileExistsError:
            raise WalletError(f"{target.name} already exists") from None
        return target

    def _read_labels(self) -> dict[str, str]:
        """Address → label from labels.json (empty if there is none)."""
        path = self.directory / LABELS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise WalletError(f"cannot read {path}: {exc}") from None
        if not isinstance(data, dict):
            raise WalletError(f"cannot read {path}: expected a JSON object")
        return {str(k): str(v) for k, v in data.items()}

    def _set_label(self, address: str, label: str) -> None:
        """Record `label` for `address` in labels.json (atomically replaced)."""
        labels = self._read_labels()
        labels[address] = label
        self._ensure_directory()
        text = json.dumps(labels, indent=2, sort_keys=True) + "\n"
        atomic.write_text(self.directory / LABELS_FILE, text, mode=0o600)


class UnlockedKeys:
    """Keys unlocked at login, held in memory per session id, forgotten after `idle_timeout` s."""

    def __init__(self, idle_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        """Expire a session after `idle_timeout` seconds without `get`; `clock` is for tests."""
        if idle_timeout <= 0:
            raise WalletError("idle_timeout must be positive")
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[LocalAccount, float]] = {}

    def __repr__(self) -> str:
        """The number of sessions only; never a key or a session id."""
        return f"UnlockedKeys({len(self)} sessions, idle_timeout={self.idle_timeout})"

    def __len__(self) -> int:
        """Number of sessions holding a key (expired ones included until purged)."""
        with self._lock:
            return len(self._keys)

    def __contains__(self, session_id: object) -> bool:
        """Whether `session_id` holds a key that has not expired."""
        if not isinstance(session_id, str):
            return False
        with self._lock:
            held = self._keys.get(session_id)
            return held is not None and not self._expired(held[1])

    def put(self, session_id: str, account: LocalAccount) -> None:
        """Hold `account` for `session_id` (replacing any key it had)."""
        with self._lock:
            self._keys[session_id] = (account, self._clock())

    def get(self, session_id: str) -> LocalAccount:
        """The account of `session_id`, refreshing its idle timer; WalletError if none/expired."""
        with self._lock:
            held = self._keys.get(session_id)
            if held is None:
                raise WalletError("not logged in")
            account, last_used = held
            if self._expired(last_used):
                del self._keys[session_id]
                raise WalletError("session expired")
            self._keys[session_id] = (account, self._clock())
            return account

    def drop(self, session_id: str) -> None:
        """Forget the key of `session_id` (logout); no error if there is none."""
        with self._lock:
            self._keys.pop(session_id, None)

    def purge_expired(self) -> int:
        """Forget every expired key; return how many were forgotten."""
        with self._lock:
            expired = [sid for sid, (_, used) in self._keys.items() if self._expired(used)]
            for sid in expired:
                del self._keys[sid]
            return len(expired)

    def _expired(self, last_used: float) -> bool:
        """Whether a key last used at `last_used` has been idle too long."""
        return self._clock() - last_used > self.idle_timeout


def read_passphrase(file: str | Path | None, prompt: str, confirm: bool = False) -> str:
    """The first line of `file`, or the passphrase asked on the terminal (twice if `confirm`)."""
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise WalletError(f"cannot read passphrase file {file}: {reason}") from None
        # Only the line break goes: spaces are part of the passphrase.
        return text.split("\n", 1)[0].removesuffix("\r")
    try:
        passphrase = getpass.getpass(prompt)
        if confirm and getpass.getpass("Repeat the passphrase: ") != passphrase:
            raise WalletError("the passphrases do not match")
    except EOFError:
        raise WalletError("no passphrase given (use --passphrase-file)") from None
    return passphrase


def _lower_keys(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with every object key lowercased, as eth-keyfile and geth read it ("Crypto")."""
    return {
        (k.lower() if isinstance(k, str) else k): (_lower_keys(v) if isinstance(v, dict) else v)
        for k, v in data.items()
    }


def _check_label(label: str | None) -> str | None:
    """`label` stripped, or None; WalletError unless it is 1-64 printable characters."""
    if label is None:
        return None
    text = label.strip()
    if not text or len(text) > MAX_LABEL_LENGTH or not text.isprintable():
        raise WalletError(f"a label must be 1 to {MAX_LABEL_LENGTH} printable characters")
    return text


def _hex_field(
    value: object, name: str, length: int | None = None, max_length: int = 1024
) -> bytes:
    """The bytes of a hex string field, checking its length; WalletError if malformed."""
    match = _HEX.match(value) if isinstance(value, str) else None
    if match is None or len(match.group(1)) % 2:
        raise WalletError(f"not a keystore file: '{name}' is not hex")
    raw = bytes.fromhex(match.group(1))
    if (length is not None and len(raw) != length) or len(raw) > max_length:
        expected = f"{length} bytes" if length is not None else f"at most {max_length} bytes"
        raise WalletError(f"not a keystore file: '{name}' must be {expected}, not {len(raw)}")
    return raw


def _positive_int(params: dict[str, Any], name: str) -> int:
    """A positive integer KDF parameter; WalletError otherwise."""
    value = params.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WalletError(f"not a keystore file: kdfparams.{name} must be a positive integer")
    return value


def _check_scrypt_params(params: dict[str, Any]) -> None:
    """Refuse scrypt parameters that are malformed or cost more than geth's standard."""
    n, r, p = (_positive_int(params, name) for name in ("n", "r", "p"))
    if n < 2 or n & (n - 1):
        raise WalletError(f"keystore scrypt N={n} is not a power of two")
    if n > GETH_SCRYPT_N or n * r * p > MAX_SCRYPT_WORK:
        raise WalletError(
            f"keystore asks for scrypt N={n}, r={r}, p={p}: more work than geth's standard "
            f"(N=2^18, r=8, p=1); refusing to derive it"
        )
    _check_dklen(params)
    _hex_field(params.get("salt"), "kdfparams.salt")


def _check_pbkdf2_params(params: dict[str, Any]) -> None:
    """Refuse PBKDF2 parameters that are malformed or absurdly costly."""
    c = _positive_int(params, "c")
    if c > MAX_PBKDF2_ITERATIONS:
        raise WalletError(
            f"keystore asks for {c} PBKDF2 iterations (at most {MAX_PBKDF2_ITERATIONS}); "
            f"refusing to derive it"
        )
    if params.get("prf") != "hmac-sha256":
        raise WalletError(f"unsupported PBKDF2 function {params.get('prf')!r} (need hmac-sha256)")
    _check_dklen(params)
    _hex_field(params.get("salt"), "kdfparams.salt")


def _check_dklen(params: dict[str, Any]) -> None:
    """V3 needs exactly 32 derived bytes (16 for AES-128, 16 for the MAC)."""
    if params.get("dklen") != 32 or isinstance(params.get("dklen"), bool):
        raise WalletError(f"keystore kdfparams.dklen must be 32, not {params.get('dklen')!r}")


def _claimed_address(keyfile: dict[str, Any]) -> str | None:
    """The checksummed address a key file says it holds, or None if it says nothing."""
    claimed = keyfile.get("address")
    if claimed is None or claimed == "":
        return None
    if not isinstance(claimed, str) or not re.fullmatch(r"(?:0x)?[0-9a-fA-F]{40}", claimed):
        raise WalletError(f"not a keystore file: bad address field {claimed!r}")
    # Case is not a checksum here: geth writes lowercase, eth-account mixed case.
    return to_checksum_address("0x" + claimed[-40:].lower())


def _load_json(path: Path) -> Any:
    """The JSON content of a (small) key file; WalletError if unreadable or not JSON."""
    try:
        if path.stat().st_size > MAX_KEYFILE_BYTES:
            raise WalletError(f"{path} is too large to be a keystore file")
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WalletError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise WalletError(f"{path} is not a keystore file (not JSON)") from None


def _address_of_file(path: Path) -> str | None:
    """The address of a key file in the directory, or None for anything else.

    Geth's names carry the address; other files count if they are small JSON with an address
    field (geth reads those too). Hidden files, backups and labels.json are skipped as geth does.
    """
    name = path.name
    if name.startswith(".") or name.endswith("~") or name == LABELS_FILE or not path.is_file():
        return None
    match = _GETH_NAME.match(name)
    if match:
        return to_checksum_address("0x" + match.group(1).lower())
    with contextlib.suppress(WalletError):
        data = _load_json(path)
        if isinstance(data, dict):
            return _claimed_address(_lower_keys(data))
    return None
