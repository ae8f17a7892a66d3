"""`microgrid account new|list|import` through the real CLI entry point."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest
from eth_account import Account

from dapp.cli import main

PASSPHRASE = "demo passphrase"


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch):
    """New accounts with cheap scrypt, the way a demo sets MICROGRID_KDF_N."""
    monkeypatch.setenv("MICROGRID_KDF_N", "1024")
    for name in ("MICROGRID_PASSPHRASE_FILE", "MICROGRID_ACCOUNT_LABEL", "MICROGRID_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def pw_file(tmp_path: Path) -> Path:
    """A passphrase file as a demo script writes it."""
    path = tmp_path / "pw.txt"
    path.write_text(PASSPHRASE + "\n")
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI; return exit code, stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_account_new_writes_a_key_file_and_prints_the_address(tmp_path, pw_file, capsys):
    data_dir = tmp_path / "data"
    code, out, err = run(capsys, "--data-dir", str(data_dir), "account", "new",
                         "--label", "producer", "--passphrase-file", str(pw_file))

    assert code == 0
    address = out.strip()
    assert re.fullmatch(r"0x[0-9a-fA-F]{40}", address)
    [key_file] = (data_dir / "keystore").glob("UTC--*")
    assert key_file.name.endswith("--" + address[2:].lower())
    assert str(key_file) in err
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    data = json.loads(key_file.read_text())
    assert data["crypto"]["kdfparams"]["n"] == 1024  # from MICROGRID_KDF_N
    assert Account.from_key(Account.decrypt(data, PASSPHRASE)).address == address


def test_account_list_shows_address_label_and_file(tmp_path, pw_file, capsys):
    data_dir = str(tmp_path / "data")
    _, producer, _ = run(capsys, "account", "new", "--data-dir", data_dir,
                         "--label", "producer", "--passphrase-file", str(pw_file))
    _, plain, _ = run(capsys, "account", "new", "--data-dir", data_dir,
                      "--passphrase-file", str(pw_file), "--kdf-n", "2048")

    code, out, _ = run(capsys, "--data-dir", data_dir, "account", "list")

    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    first, second = (line.split() for line in lines)
    assert first[:2] == [producer.strip(), "producer"]
    assert first[2].startswith("UTC--") and first[2].endswith(producer.strip()[2:].lower())
    assert second[:2] == [plain.strip(), "-"]
    key_file = Path(data_dir) / "keystore" / second[2]
    assert json.loads(key_file.read_text())["crypto"]["kdfparams"]["n"] == 2048


def test_account_list_of_an_empty_data_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MICROGRID_DATA_DIR", str(tmp_path / "fresh"))
    code, out, err = run(capsys, "account", "list")
    assert code == 0 and out == ""
    assert "no accounts in" in err and "fresh" in err


def test_account_import_copies_a_foreign_key_file(tmp_path, pw_file, capsys):
    account = Account.create()
    source = tmp_path / "from-metamask.json"
    source.write_text(json.dumps(Account.encrypt(account.key, PASSPHRASE, iterations=1024)))
    data_dir = str(tmp_path / "data")

    code, out, _ = run(capsys, "--data-dir", data_dir, "account", "import", str(source),
                       "--label", "consumer", "--passphrase-file", str(pw_file))

    assert code == 0 and out.strip() == account.address
    assert source.exists()
    _, listing, _ = run(capsys, "--data-dir", data_dir, "account", "list")
    assert listing.split()[:2] == [account.address, "consumer"]

    # The same file again is refused, with the reason, and nothing changes.
    code, out, err = run(capsys, "--data-dir", data_dir, "account", "import", str(source),
                         "--passphrase-file", str(pw_file))
    assert code == 1 and out == ""
    assert f"microgrid: {account.address} is already in the keystore" in err


def test_account_import_with_wrong_passphrase(tmp_path, capsys, monkeypatch):
    source = tmp_path / "key.json"
    source.write_text(json.dumps(Account.encrypt(Account.create().key, "right", iterations=1024)))
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("wrong\n")
    monkeypatch.setenv("MICROGRID_PASSPHRASE_FILE", str(wrong))  # the variable works too

    code, out, err = run(capsys, "--data-dir", str(tmp_path / "data"), "account", "import",
                         str(source))

    assert code == 1 and out == ""
    assert err.strip() == "microgrid: wrong passphrase or damaged keystore"
    assert not (tmp_path / "data" / "keystore").exists()


def test_account_new_with_a_missing_passphrase_file(tmp_path, capsys):
    code, _, err = run(capsys, "--data-dir", str(tmp_path), "account", "new",
                       "--passphrase-file", str(tmp_path / "absent"))
    assert code == 1
    assert "microgrid: cannot read passphrase file" in err
    assert not (tmp_path / "keystore").exists()


@pytest.mark.parametrize("value", ["1000", "524288", "lots"])
def test_bad_kdf_n_is_a_usage_error(tmp_path, pw_file, capsys, monkeypatch, value):
    monkeypatch.setenv("MICROGRID_KDF_N", value)
    with pytest.raises(SystemExit) as excinfo:
        main(["--data-dir", str(tmp_path), "account", "new", "--passphrase-file", str(pw_file)])
    assert excinfo.value.code == 2
    assert "--kdf-n" in capsys.readouterr().err
    assert not (tmp_path / "keystore").exists()
