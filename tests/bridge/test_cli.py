"""`microgrid meter register` and `microgrid bridge` argument handling, on the in-process chain."""

from __future__ import annotations

import pytest
from eth_account import Account

from dapp.cli import build_parser, main
from dapp.wallet.keystore import Keystore
from hardware.bridge import parse_meter_spec
from tests.bridge.conftest import CHAIN_NAME, ETHER, PASSPHRASE


@pytest.fixture
def operator_cli(world, operator_keystore, tmp_path):
    """Run `microgrid meter register` as the keystore operator; returns a runner."""
    data_dir, operator = operator_keystore
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n", encoding="utf-8")

    def run(*args: str, sender: str = operator) -> int:
        return main(["--data-dir", str(data_dir), "meter", "register",
                     "--rpc", f"inprocess://{CHAIN_NAME}", "--market", world.deployment.market,
                     "--from", sender, "--passphrase-file", str(passphrase_file), *args])

    return run


def test_operator_registers_and_funds_a_meter_once(world, operator_cli, capsys):
    owner, meter = Account.create().address, Account.create().address
    args = ("--meter", meter, "--owner", owner, "--kind", "load", "--rated-power", "43200")

    assert operator_cli(*args, "--fund", str(ETHER // 10)) == 0
    registered = world.client.meter(meter)
    assert (registered.owner, registered.kind, registered.rated_power_w, registered.active) == \
        (owner, "load", 43200, True)
    assert world.client.ether_balance(meter) == ETHER // 10
    assert "registered" in capsys.readouterr().out

    assert operator_cli(*args) == 0  # the same again: nothing changes, and it says so
    assert "already registered" in capsys.readouterr().out
    assert operator_cli("--meter", meter, "--owner", owner, "--kind", "supply",
                        "--rated-power", "43200") == 1
    assert "already registered" in capsys.readouterr().err
    assert world.client.meter(meter).kind == "load"


def test_only_an_operator_can_register(world, operator_keystore, operator_cli, capsys):
    data_dir, _ = operator_keystore
    stranger = Keystore(data_dir / "keystore", scrypt_n=2).create(PASSPHRASE)
    meter = Account.create().address
    assert operator_cli("--meter", meter, "--owner", stranger, "--kind", "supply",
                        "--rated-power", "800", sender=stranger) == 1
    assert "not a grid operator" in capsys.readouterr().err
    assert world.client.meter(meter) is None


@pytest.mark.parametrize("rated", ["0", "65536", "12.5", "lots"])
def test_ratings_the_registry_cannot_store_are_refused(rated, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["meter", "register", "--from", "0x" + "1" * 40,
                                   "--meter", "0x" + "2" * 40, "--owner", "0x" + "3" * 40,
                                   "--kind", "load", "--rated-power", rated])
    assert info.value.code == 2
    assert "rated-power" in capsys.readouterr().err


def test_bridge_settings_come_from_flags_or_environment(monkeypatch, tmp_path):
    address = Account.create().address
    monkeypatch.setenv("MICROGRID_BRIDGE_POLL_INTERVAL", "0.25")
    monkeypatch.setenv("MICROGRID_BRIDGE_SUBMIT_INTERVAL", "30")
    args = build_parser().parse_args(
        ["bridge", "--meter", f"socket://127.0.0.1:7001:{address.lower()}",
         "--meter", f"/dev/ttyUSB0:{address}", "--submit-interval", "5"])
    assert args.meter == [("socket://127.0.0.1:7001", address), ("/dev/ttyUSB0", address)]
    assert (args.poll_interval, args.submit_interval, args.read_timeout) == (0.25, 5.0, 1.0)


def test_bridge_refuses_to_start_without_meters_or_with_a_bad_one(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("MICROGRID_METERS", raising=False)
    assert main(["--data-dir", str(tmp_path), "bridge", "--passphrase-file",
                 str(tmp_path / "none")]) == 1
    assert "no meters" in capsys.readouterr().err
    monkeypatch.setenv("MICROGRID_METERS", "socket://127.0.0.1:7001")
    assert main(["--data-dir", str(tmp_path), "bridge"]) == 1
    assert "MICROGRID_METERS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bridge", "--meter", "/dev/ttyUSB0:not-an-address"])


def test_meter_specs_split_at_the_last_colon():
    address = Account.create().address
    assert parse_meter_spec(f"socket://127.0.0.1:7001:{address}") == \
        ("socket://127.0.0.1:7001", address)
    assert parse_meter_spec(f"/dev/pts/3:{address.lower()}") == ("/dev/pts/3", address)
    for bad in ("socket://127.0.0.1:7001", f":{address}", "/dev/ttyUSB0:0x1234"):
        with pytest.raises(ValueError):
            parse_meter_spec(bad)
