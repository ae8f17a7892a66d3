"""The CLI's option helper: one variable per option, shown in the help with its default."""

from __future__ import annotations

import pytest

from dapp.cli import build_parser, main


def _help(capsys, *command: str) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_help_names_each_variable_and_its_default(capsys):
    text = _help(capsys, "node")
    assert "(MICROGRID_NODE_PORT; default 8545)" in text
    assert "(MICROGRID_BLOCK_TIME; default 1)" in text
    text = _help(capsys, "meter", "offer")
    assert "(MICROGRID_OFFER_KIND)" in text  # required, no default


def test_a_variable_sets_the_default_and_a_flag_wins(monkeypatch):
    monkeypatch.setenv("MICROGRID_NODE_PORT", "9545")
    assert build_parser().parse_args(["node"]).port == 9545
    assert build_parser().parse_args(["node", "--port", "7545"]).port == 7545


def test_a_variable_makes_a_required_option_optional(monkeypatch):
    monkeypatch.setenv("MICROGRID_METER_KIND", "supply")
    assert build_parser().parse_args(["meter-emulator"]).kind == "supply"
    monkeypatch.delenv("MICROGRID_METER_KIND")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["meter-emulator"])


def test_a_malformed_variable_is_a_usage_error_of_its_command_only(monkeypatch, capsys):
    monkeypatch.setenv("MICROGRID_NODE_PORT", "lots")
    assert build_parser().parse_args(["account", "list"]).command == "account"
    with pytest.raises(SystemExit) as info:
        main(["node"])
    assert info.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_a_switch_variable_reads_as_a_truth_value(monkeypatch):
    monkeypatch.setenv("MICROGRID_METER_KIND", "supply")
    for text, expected in (("1", True), ("yes", True), ("0", False), ("off", False)):
        monkeypatch.setenv("MICROGRID_METER_PTY", text)
        assert build_parser().parse_args(["meter-emulator"]).pty is expected
    monkeypatch.setenv("MICROGRID_METER_PTY", "0")
    assert build_parser().parse_args(["meter-emulator", "--pty"]).pty is True


def test_options_the_web_app_reads_name_their_variable_without_reading_it(monkeypatch, capsys):
    monkeypatch.setenv("MICROGRID_TRUSTED_PROXIES", "2")
    assert build_parser().parse_args(["serve"]).trusted_proxies is None  # the app's config reads it
    text = _help(capsys, "serve")
    assert "(MICROGRID_TRUSTED_PROXIES; default 0)" in text
    assert "(MICROGRID_BEHIND_TLS)" in text
