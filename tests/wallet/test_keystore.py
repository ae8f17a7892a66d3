"""The keystore: geth-compatible files, imports from other tools, refusals, unlocking, sessions."""

from __future__ import annotations

import json
import re
import stat
import threading
import time
from pathlib import Path

import pytest
from eth_account import Account

from dapp.errors import WalletError
from dapp.wallet.keystore import (
    GETH_SCRYPT_N,
    WRONG_PASSPHRASE,
    Keystore,
    UnlockedKeys,
    read_passphrase,
)

FAST_N = 2**10  # cheap scrypt for tests; the geth-standard cost is exercised once below
PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def keystore(tmp_path: Path) -> Keystore:
    """An empty keystore with cheap scrypt."""
    return Keystore(tmp_path / "data" / "keystore", scrypt_n=FAST_N)


def foreign_file(tmp_path: Path, data: dict, name: str = "foreign.json") -> Path:
    """A key file written outside the keystore, as another tool would leave it."""
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def encrypted(account, passphrase: str = PASSPHRASE, kdf: str = "scrypt", iterations: int = FAST_N):
    """A V3 dict of `account` as eth-account writes it."""
    return Account.encrypt(account.key, passphrase, kdf=kdf, iterations=iterations)


# --- creating and listing ------------------------------------------------------------------------


def test_create_writes_a_geth_named_private_v3_file(keystore):
    address = keystore.create(PASSPHRASE)

    [path] = [p for p in keystore.directory.iterdir()]
    assert re.fullmatch(
        r"UTC--\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d+Z--" + address[2:].lower(), path.name
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keystore.directory.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert data["version"] == 3
    assert data["address"] == address[2:].lower()
    assert data["crypto"]["kdf"] == "scrypt"
    assert data["crypto"]["kdfparams"] | {"salt": None} == {
        "n": FAST_N, "r": 8, "p": 1, "dklen": 32, "salt": None
    }
    # Any other V3 reader (here eth-account itself) decrypts it to the same address.
    assert Account.from_key(Account.decrypt(data, PASSPHRASE)).address == address
    assert keystore.path_for(address) == path and keystore.has(address)


def test_unlock_returns_the_signing_key_of_the_account(keystore):
    address = keystore.create(PASSPHRASE)

    account = keystore.unlock(address.lower(), PASSPHRASE)

    assert account.address == address
    signed = account.sign_transaction(
        {"to": address, "value": 1, "gas": 21000, "gasPrice": 1, "nonce": 0, "chainId": 1}
    )
    assert Account.recover_transaction(signed.raw_transaction) == address


def test_list_shows_accounts_in_creation_order_with_labels(keystore):
    first = keystore.create(PASSPHRASE, label="producer")
    second = keystore.create("another one")

    entries = keystore.list()

    assert [(e.address, e.label) for e in entries] == [(first, "producer"), (second, None)]
    assert all(e.path.parent == keystore.directory for e in entries)
    assert keystore.label_of(first) == "producer"
    # Labels live beside the key files, not inside them, so the files stay geth's format.
    labels = json.loads((keystore.directory / "labels.json").read_text())
    assert labels == {first: "producer"}
    assert "producer" not in keystore.path_for(first).read_text()
    assert stat.S_IMODE((keystore.directory / "labels.json").stat().st_mode) == 0o600


def test_list_of_a_missing_directory_is_empty_and_creates_nothing(keystore):
    assert keystore.list() == []
    assert not keystore.directory.exists()
    assert not keystore.has(Account.create().address)


def test_list_reads_key_files_with_other_names_like_geth_does(keystore, tmp_path):
    keystore.create(PASSPHRASE)
    other = Account.create()
    (keystore.directory / "copied-by-hand.json").write_text(json.dumps(encrypted(other)))
    (keystore.directory / ".hidden").write_text(json.dumps(encrypted(Account.create())))
    (keystore.directory / "notes.txt").write_text("not a key")

    assert other.address in [e.address for e in keystore.list()]
    assert len(keystore.list()) == 2
    assert keystore.unlock(other.address, PASSPHRASE).address == other.address


@pytest.mark.parametrize("label", ["", "   ", "a\nb", "x" * 65])
def test_bad_labels_are_refused_before_anything_is_written(keystore, label):
    with pytest.raises(WalletError, match="label"):
        keystore.create(PASSPHRASE, label=label)
    assert keystore.list() == []


def test_empty_passphrase_is_refused_for_a_new_account(keystore):
    with pytest.raises(WalletError, match="must not be empty"):
        keystore.create("")


@pytest.mark.parametrize("n", [3, 1, 2**19])
def test_scrypt_cost_outside_geth_range_is_refused(tmp_path, n):
    with pytest.raises(WalletError, match="scrypt N"):
        Keystore(tmp_path, scrypt_n=n)


def test_default_cost_is_geths_standard(tmp_path):
    assert Keystore(tmp_path).scrypt_n == GETH_SCRYPT_N == 2**18


# --- unlocking failures --------------------------------------------------------------------------


def tamper(path: Path, field: str) -> None:
    """Flip the last hex digit of a crypto field in a key file."""
    data = json.loads(path.read_text())
    value = data["crypto"][field]
    data["crypto"][field] = value[:-1] + ("0" if value[-1] != "0" else "1")
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("damage", ["wrong passphrase", "mac", "ciphertext"])
def test_wrong_passphrase_and_tampering_give_one_generic_error(keystore, damage):
    address = keystore.create(PASSPHRASE)
    passphrase = PASSPHRASE
    if damage == "wrong passphrase":
        passphrase = PASSPHRASE + "x"
    else:
        tamper(keystore.path_for(address), damage)

    with pytest.raises(WalletError) as excinfo:
        keystore.unlock(address, passphrase)
    assert str(excinfo.value) == WRONG_PASSPHRASE


def test_unlock_unknown_or_malformed_address(keystore):
    keystore.create(PASSPHRASE)
    stranger = Account.create().address
    with pytest.raises(WalletError, match=f"no key for {stranger}"):
        keystore.unlock(stranger, PASSPHRASE)
    with pytest.raises(WalletError, match="not an Ethereum address"):
        keystore.unlock("0x1234", PASSPHRASE)
    # A mixed-case address with a wrong checksum is a typo, not an address.
    bad_checksum = stranger[:2] + stranger[2:].swapcase()
    with pytest.raises(WalletError, match="not an Ethereum address"):
        keystore.unlock(bad_checksum, PASSPHRASE)


def test_unlock_refuses_a_file_holding_another_accounts_key(keystore):
    address = keystore.create(PASSPHRASE)
    intruder = encrypted(Account.create())
    intruder["address"] = address[2:].lower()
    keystore.path_for(address).write_text(json.dumps(intruder))

    with pytest.raises(WalletError, match="holds the key of"):
        keystore.unlock(address, PASSPHRASE)


# --- importing -----------------------------------------------------------------------------------


def test_geth_standard_file_imports_and_unlocks_in_a_few_seconds(keystore, tmp_path):
    account = Account.create()
    data = Account.encrypt(account.key, PASSPHRASE, kdf="scrypt", iterations=2**18)
    data["address"] = account.address[2:].lower()  # geth writes the address in lowercase
    source = foreign_file(tmp_path, data, "UTC--2024-05-01T10-00-00.000000000Z--" + data["address"])

    started = time.monotonic()
    address = keystore.import_file(source, PASSPHRASE, label="household 3")
    unlocked = keystore.unlock(address, PASSPHRASE)
    elapsed = time.monotonic() - started

    assert address == unlocked.address == account.address
    assert elapsed < 8, f"import + unlock at geth's cost took {elapsed:.1f} s"
    stored = json.loads(keystore.path_for(address).read_text())
    assert stored["crypto"] == data["crypto"]  # copied as written, still geth's parameters
    assert stored["crypto"]["kdfparams"]["n"] == 2**18
    assert source.exists()  # copied, not moved
    assert keystore.label_of(address) == "household 3"


def test_pbkdf2_file_imports_and_unlocks(keystore, tmp_path):
    account = Account.create()
    source = foreign_file(tmp_path, encrypted(account, kdf="pbkdf2", iterations=4096))

    address = keystore.import_file(source, PASSPHRASE)

    assert address == account.address
    assert keystore.unlock(address, PASSPHRASE).key == account.key


def test_import_of_a_file_without_address_field_adds_it_for_geth(keystore, tmp_path):
    account = Account.create()
    data = encrypted(account)
    del data["address"]
    data["Crypto"] = data.pop("crypto")  # old geth files capitalise this key

    address = keystore.import_file(foreign_file(tmp_path, data), PASSPHRASE)

    assert address == account.address
    assert json.loads(keystore.path_for(address).read_text())["address"] == address[2:].lower()
    assert keystore.unlock(address, PASSPHRASE).address == address


@pytest.mark.parametrize("passphrase_or_damage", ["wrong passphrase", "mac"])
def test_import_with_wrong_passphrase_or_tampered_mac_imports_nothing(
    keystore, tmp_path, passphrase_or_damage
):
    source = foreign_file(tmp_path, encrypted(Account.create()))
    passphrase = PASSPHRASE
    if passphrase_or_damage == "wrong passphrase":
        passphrase = "not it"
    else:
        tamper(source, "mac")

    with pytest.raises(WalletError) as excinfo:
        keystore.import_file(source, passphrase)
    assert str(excinfo.value) == WRONG_PASSPHRASE
    assert keystore.list() == []


def test_import_refuses_a_file_claiming_another_address(keystore, tmp_path):
    account, other = Account.create(), Account.create()
    data = encrypted(account)
    data["address"] = other.address[2:]

    with pytest.raises(WalletError, match=f"claims address {other.address} but holds the key of "
                       f"{account.address}"):
        keystore.import_file(foreign_file(tmp_path, data), PASSPHRASE)
    assert keystore.list() == []


def test_import_refuses_an_address_already_present(keystore, tmp_path):
    address = keystore.create(PASSPHRASE, label="producer")
    copy = tmp_path / "copy.json"
    copy.write_text(keystore.path_for(address).read_text())

    with pytest.raises(WalletError, match=f"{address} is already in the keystore"):
        keystore.import_file(copy, PASSPHRASE, label="other")

    # Also when the file does not say its address: found after decrypting.
    data = json.loads(copy.read_text())
    del data["address"]
    copy.write_text(json.dumps(data))
    with pytest.raises(WalletError, match="already in the keystore"):
        keystore.import_file(copy, PASSPHRASE)
    assert [(e.address, e.label) for e in keystore.list()] == [(address, "producer")]


def scrypt_file(**params) -> dict:
    """A syntactically valid V3 scrypt file (random key) with some kdfparams replaced."""
    data = encrypted(Account.create(), iterations=16)
    data["crypto"]["kdfparams"].update(params)
    return data


@pytest.mark.parametrize(
    ("kdfparams", "message"),
    [
        ({"n": 2**30}, "more work than geth's standard"),
        ({"n": 2**19, "r": 1}, "more work than geth's standard"),
        ({"n": 2**18, "r": 1024}, "more work than geth's standard"),
        ({"n": 2**18, "p": 64}, "more work than geth's standard"),
        ({"n": 1000}, "not a power of two"),
        ({"r": 0}, "kdfparams.r must be a positive integer"),
        ({"p": "1"}, "kdfparams.p must be a positive integer"),
        ({"dklen": 2**20}, "dklen must be 32"),
        ({"salt": "zz"}, "salt' is not hex"),
    ],
)
def test_costly_or_malformed_scrypt_is_refused_before_any_derivation(
    keystore, tmp_path, kdfparams, message
):
    source = foreign_file(tmp_path, scrypt_file(**kdfparams))

    started = time.monotonic()
    with pytest.raises(WalletError, match=re.escape(message)):
        keystore.import_file(source, PASSPHRASE)
    # Deriving N=2^30 would take minutes and 128 GiB; refusing takes microseconds.
    assert time.monotonic() - started < 0.2
    assert keystore.list() == []


def test_absurd_pbkdf2_iterations_are_refused_before_any_derivation(keystore, tmp_path):
    data = encrypted(Account.create(), kdf="pbkdf2", iterations=16)
    data["crypto"]["kdfparams"]["c"] = 10**10

    started = time.monotonic()
    with pytest.raises(WalletError, match="PBKDF2 iterations"):
        keystore.import_file(foreign_file(tmp_path, data), PASSPHRASE)
    assert time.monotonic() - started < 0.2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json at all", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"version": 4, "crypto": {}}', "not a V3 keystore"),
        ('{"version": 3}', "no 'crypto' section"),
    ],
)
def test_files_that_are_not_v3_keystores_are_refused(keystore, tmp_path, content, message):
    source = tmp_path / "bad.json"
    source.write_text(content)
    with pytest.raises(WalletError, match=re.escape(message)):
        keystore.import_file(source, PASSPHRASE)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kdf": "argon2"}, "unsupported key derivation function"),
        ({"cipher": "aes-256-gcm"}, "unsupported keystore cipher"),
        ({"mac": "abcd"}, "'mac' must be 32 bytes"),
        ({"ciphertext": "00" * 64}, "'ciphertext' must be 32 bytes"),
    ],
)
def test_unsupported_crypto_sections_are_refused(keystore, tmp_path, change, message):
    data = encrypted(Account.create())
    data["crypto"].update(change)
    with pytest.raises(WalletError, match=re.escape(message)):
        keystore.import_file(foreign_file(tmp_path, data), PASSPHRASE)


def test_oversized_and_missing_files_are_refused(keystore, tmp_path):
    big = tmp_path / "big.json"
    big.write_text(" " * 100_000 + "{}")
    with pytest.raises(WalletError, match="too large"):
        keystore.import_file(big, PASSPHRASE)
    with pytest.raises(WalletError, match="cannot read"):
        keystore.import_file(tmp_path / "absent.json", PASSPHRASE)


# --- concurrency ---------------------------------------------------------------------------------


class TimedKeystore(Keystore):
    """Records when each real decrypt runs; a short pause makes overlaps easy to see."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spans: list[tuple[float, float]] = []

    def _decrypt(self, keyfile, passphrase):
        start = time.monotonic()
        try:
            time.sleep(0.2)
            return super()._decrypt(keyfile, passphrase)
        finally:
            self.spans.append((start, time.monotonic()))


def unlock_concurrently(keystore: TimedKeystore, address: str) -> list:
    """Two threads unlock `address` at the same moment; returns their accounts."""
    barrier = threading.Barrier(2)
    results: list = []

    def worker() -> None:
        barrier.wait()
        results.append(keystore.unlock(address, PASSPHRASE))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    return results


def overlap(spans: list[tuple[float, float]]) -> bool:
    """Whether two time spans intersect."""
    (a_start, a_end), (b_start, b_end) = spans
    return a_start < b_end and b_start < a_end


def test_decrypts_are_serialised_with_one_slot(tmp_path):
    keystore = TimedKeystore(tmp_path, scrypt_n=FAST_N, max_concurrent_decrypts=1)
    address = keystore.create(PASSPHRASE)

    results = unlock_concurrently(keystore, address)

    assert [a.address for a in results] == [address, address]
    assert not overlap(keystore.spans)


def test_decrypts_run_in_parallel_with_two_slots(tmp_path):
    keystore = TimedKeystore(tmp_path, scrypt_n=FAST_N, max_concurrent_decrypts=2)
    address = keystore.create(PASSPHRASE)

    unlock_concurrently(keystore, address)

    assert overlap(keystore.spans)


# --- unlocked keys -------------------------------------------------------------------------------


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_unlocked_key_expires_after_idle_timeout_and_use_refreshes_it():
    clock = FakeClock()
    keys = UnlockedKeys(idle_timeout=60, clock=clock)
    account = Account.create()
    keys.put("session-a", account)

    clock.now += 50
    assert keys.get("session-a") is account  # used: idle timer restarts
    clock.now += 50
    assert keys.get("session-a") is account
    clock.now += 61
    assert "session-a" not in keys
    with pytest.raises(WalletError, match="session expired"):
        keys.get("session-a")
    with pytest.raises(WalletError, match="not logged in"):
        keys.get("session-a")  # and it is gone for good


def test_drop_and_purge_forget_keys():
    clock = FakeClock()
    keys = UnlockedKeys(idle_timeout=60, clock=clock)
    keys.put("old", Account.create())
    clock.now += 30
    keys.put("new", Account.create())
    keys.put("leaving", Account.create())

    keys.drop("leaving")
    keys.drop("never-there")
    clock.now += 45

    assert keys.purge_expired() == 1
    assert len(keys) == 1 and "new" in keys and "old" not in keys
    with pytest.raises(WalletError, match="not logged in"):
        keys.get("leaving")


def test_nothing_shows_a_key_in_repr_or_str(keystore):
    address = keystore.create(PASSPHRASE, label="producer")
    account = keystore.unlock(address, PASSPHRASE)
    keys = UnlockedKeys(idle_timeout=60)
    keys.put("secret-session-id", account)

    key_hex = account.key.hex()
    for obj in (keys, keystore, keystore.list()[0], account):
        for text in (repr(obj), str(obj)):
            assert key_hex not in text and key_hex.upper() not in text
            assert "secret-session-id" not in text
    assert "1 sessions" in repr(keys)


# --- passphrases ---------------------------------------------------------------------------------


def test_passphrase_file_gives_its_first_line_without_the_line_break(tmp_path):
    path = tmp_path / "pw"
    path.write_text("  spaced pass phrase \r\nsecond line\n")
    assert read_passphrase(str(path), prompt="unused") == "  spaced pass phrase "
    path.write_text("no newline")
    assert read_passphrase(path, prompt="unused") == "no newline"


def test_missing_passphrase_file_is_a_clear_error(tmp_path):
    with pytest.raises(WalletError, match="cannot read passphrase file .*absent"):
        read_passphrase(str(tmp_path / "absent"), prompt="unused")


def test_terminal_passphrase_must_be_typed_the_same_twice(monkeypatch):
    # No terminal in tests: the two answers a user would type.
    answers = iter(["first try", "first tyr"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    with pytest.raises(WalletError, match="do not match"):
        read_passphrase(None, prompt="Passphrase: ", confirm=True)

    answers = iter(["same", "same"])
    assert read_passphrase(None, prompt="Passphrase: ", confirm=True) == "same"
