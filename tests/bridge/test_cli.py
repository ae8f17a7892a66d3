"""`microgrid bridge` argument handling."""

from __future__ import annotations

import pytest
from eth_account import Account

from dapp.bridge import BridgeMeter, parse_meter_spec
from dapp.cli import build_parser, main


def test_bridge_settings_come_from_flags_or_environment(monkeypatch, tmp_path):
    address = Account.create().address
    monkeypatch.setenv("MICROGRID_BRIDGE_POLL_INTERVAL", "0.25")
    monkeypatch.setenv("MICROGRID_BRIDGE_SUBMIT_INTERVAL", "30")
    args = build_parser().parse_args(
        ["bridge", "--meter", f"socket://127.0.0.1:7001:{address.lower()}",
         "--meter", "/dev/ttyUSB0", "--submit-interval", "5"])
    assert args.meter == [BridgeMeter("socket://127.0.0.1:7001", address),
                          BridgeMeter("/dev/ttyUSB0")]
    assert (args.poll_interval, args.submit_interval, args.read_timeout) == (0.25, 5.0, 1.0)
    assert args.submitter is None  # no account: readings are shown, not forwarded


def test_bridge_refuses_to_start_without_meters_or_with_a_bad_one(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("MICROGRID_METERS", raising=False)
    assert main(["--data-dir", str(tmp_path), "bridge"]) == 1
    assert "no meters" in capsys.readouterr().err
    monkeypatch.setenv("MICROGRID_METERS", "socket://127.0.0.1:7001:0x1234")
    assert main(["--data-dir", str(tmp_path), "bridge"]) == 1
    assert "MICROGRID_METERS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bridge", "--meter", "/dev/ttyUSB0:0xnot-an-address"])


def test_meter_specs_are_a_url_with_an_optional_address_after_the_last_colon():
    address = Account.create().address
    assert parse_meter_spec(f"socket://127.0.0.1:7001:{address}") == \
        BridgeMeter("socket://127.0.0.1:7001", address)
    assert parse_meter_spec(f"/dev/pts/3:{address.lower()}") == BridgeMeter("/dev/pts/3", address)
    assert parse_meter_spec("socket://127.0.0.1:7001") == BridgeMeter("socket://127.0.0.1:7001")
    for bad in ("", f":{address}", "/dev/ttyUSB0:0x1234"):
        with pytest.raises(ValueError):
            parse_meter_spec(bad)
