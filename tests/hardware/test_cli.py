"""`microgrid meter-emulator` as a real process, reached by the driver over TCP and a pty."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from dapp.cli import build_parser
from hardware.driver import MeterClient
from tests.hardware.conftest import VECTOR_BLOCK, VECTOR_DOMAIN

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def emulator():
    """Factory: start `microgrid meter-emulator ARGS`; return (process, URL). Stopped after."""
    procs: list[subprocess.Popen] = []

    def start(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MICROGRID_")}
        proc = subprocess.Popen([sys.executable, "-m", "dapp.cli", "meter-emulator", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**clean, **(env or {})})
        procs.append(proc)
        first = proc.stdout.readline()
        match = re.search(r" on (\S+) \(", first)
        assert match, first + proc.stderr.read()
        proc.banner = first  # type: ignore[attr-defined] - the line the operator reads
        return proc, match.group(1)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.slow
def test_tcp_emulator_from_flags_answers_and_stops_cleanly_on_ctrl_c(emulator):
    proc, url = emulator("--kind", "load", "--tcp", "0", "--meter-id", "house-7",
                         "--acceleration", "60", "--load-profile", "0:100,18:450",
                         "--watchdog", "5")
    assert url.startswith("socket://127.0.0.1:")
    with MeterClient(url, timeout=1.0) as meter:
        identity = meter.identify()
        assert (identity.meter_id, identity.kind, identity.watchdog_s) == ("house-7", "load", 5)
        assert identity.rated_power_w == 450 * 60  # the profile's peak x acceleration
        assert meter.set_relay(True) is True
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0


@pytest.mark.slow
def test_pty_emulator_from_environment(emulator):
    _, path = emulator(env={"MICROGRID_METER_KIND": "supply", "MICROGRID_METER_PTY": "1",
                            "MICROGRID_PV_PEAK_POWER": "1200", "MICROGRID_START_HOUR": "12"})
    assert path.startswith("/dev/")
    with MeterClient(path, timeout=1.0) as meter:
        identity = meter.identify()
        assert identity.rated_power_w == 1200
        meter.provision(VECTOR_DOMAIN)  # a meter signs nothing before it is installed
        reading = meter.read(VECTOR_BLOCK)
        assert 1100 < reading.power_w <= 1200
        assert reading.verify(VECTOR_DOMAIN, identity.address)


@pytest.mark.slow
def test_registry_overflow_is_warned_about(emulator):
    proc, _ = emulator("--kind", "supply", "--tcp", "0", "--acceleration", "3600")
    # The warning follows the first stdout line: wait for it before interrupting (no race).
    lines = iter(proc.stderr.readline, "")
    assert any("exceeds the registry's 65535 W" in line for line in lines)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0


def test_bad_settings_are_reported_not_raised(capsys):
    args = build_parser().parse_args(["meter-emulator", "--kind", "load", "--tcp", "0",
                                      "--load-profile", "7:lots"])
    assert args.func(args) == 2
    assert "bad load profile" in capsys.readouterr().err


@pytest.mark.slow
def test_the_key_file_is_the_meters_eeprom_across_restarts(emulator, tmp_path):
    key_file = tmp_path / "meters" / "house-7.key"
    key_file.parent.mkdir()
    proc, url = emulator("--kind", "supply", "--tcp", "0", "--key-file", str(key_file))
    with MeterClient(url, timeout=1.0) as meter:
        identity = meter.identify()
        meter.provision(VECTOR_DOMAIN)
        first = meter.read(VECTOR_BLOCK)
        assert first.verify(VECTOR_DOMAIN, identity.address)
    assert identity.address in proc.banner  # printed for the operator's `meter offer`
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = json.loads(key_file.read_text())["private_key"]
    assert key.lower().removeprefix("0x") not in (proc.banner + proc.stderr.read()).lower()

    # The same file after a restart: the same meter, still installed, its sequence still growing.
    proc, url = emulator("--kind", "supply", "--tcp", "0", "--key-file", str(key_file))
    with MeterClient(url, timeout=1.0) as meter:
        again = meter.identify()
        assert (again.address, again.domain) == (identity.address, VECTOR_DOMAIN)
        later = meter.read(VECTOR_BLOCK)
        assert later.sequence > first.sequence and later.energy_wh >= first.energy_wh
        assert later.verify(VECTOR_DOMAIN, identity.address)


def test_an_unreadable_key_file_is_reported_not_raised(tmp_path, capsys):
    key_file = tmp_path / "meter.key"
    key_file.write_text("{}")
    key_file.chmod(0o644)  # readable by others: no meter keeps its key like that
    args = build_parser().parse_args(["meter-emulator", "--kind", "supply", "--tcp", "0",
                                      "--key-file", str(key_file)])
    assert args.func(args) == 2
    assert "must not be readable by others" in capsys.readouterr().err
