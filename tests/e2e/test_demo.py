"""`make run`'s command, `microgrid demo`, as a user runs it: start, serve, stop, resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.support import free_port, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
RULE = "=" * 72
STOPS = ["stopping the web app ... stopped", "stopping the meter bridge (relays open) ... stopped",
         "stopping the emulated meters ... stopped",
         "stopping the chain node (saving the chain) ... saved at block "]


def _run_demo(data_dir: Path, log: Path) -> tuple[subprocess.Popen, int]:
    web, node = free_port(), free_port()
    env = {**os.environ, "MICROGRID_DATA_DIR": str(data_dir)}
    process = subprocess.Popen(
        [sys.executable, "-m", "dapp.cli", "demo", "--port", str(web), "--node-port", str(node)],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )

    def up() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return requests.get(f"http://127.0.0.1:{web}/", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=90, step=0.5)
    return process, web


def _stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGINT)  # Ctrl-C
    try:
        return process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()


def _banner_is_last(log: Path) -> None:
    """The terminal ends with the banner: no request, reading or INFO line after it."""
    text = log.read_text()
    assert text.endswith(RULE + "\n"), text[-2000:]
    banner = text[text.rindex(RULE, 0, len(text) - len(RULE) - 1):]
    assert "Microgrid Energy Exchange is running: open http://localhost:" in banner
    assert " INFO " not in text and "werkzeug" not in text and '"GET /' not in text


def _stopped_in_order(log: Path) -> int:
    """Ctrl-C's lines, one per stop, in order; the chain's saved block (the last line)."""
    text = log.read_text()
    at = [text.index(line) for line in STOPS]
    assert at == sorted(at), text[-2000:]
    saved = re.fullmatch(r"(?s).*saved at block (\d+)\n", text)
    assert saved, text[-2000:]
    return int(saved.group(1))


def test_demo_starts_everything_and_a_second_run_resumes(tmp_path):
    data = tmp_path / "data"
    process, web = _run_demo(data, tmp_path / "first.log")
    try:
        accounts = requests.get(f"http://127.0.0.1:{web}/api/v1/accounts", timeout=5).json()
        labels = {a["label"] for a in accounts["accounts"]}
        assert {"producer", "consumer"} <= labels
        chain = requests.get(f"http://127.0.0.1:{web}/api/v1/chain", timeout=5).json()
        assert chain["available"] is True and chain["deployment"]["market"]
        time.sleep(5)  # meter readings, live pushes and requests: none of them on the terminal
        _banner_is_last(tmp_path / "first.log")
    finally:
        assert _stop(process) in (0, 130)
    first = (tmp_path / "first.log").read_text()
    for step in range(1, 9):
        assert f"[{step}/8]" in first
    assert "passphrase:" in first and "deployed: market" in first
    assert (data / "chain" / "anvil-state.json").is_file()
    assert oct((data / "demo" / "user-passphrases").stat().st_mode & 0o777) == "0o600"
    # The meters' keys are theirs (their EEPROM): beside the data directory, never in it.
    keys = sorted(p.name for p in (tmp_path / "data-meters").iterdir())
    assert keys and all(oct(p.stat().st_mode & 0o777) == "0o600"
                        for p in (tmp_path / "data-meters").glob("*.key"))
    assert not list(data.rglob("*.key")) and not (data / "meters").exists()
    saved = _stopped_in_order(tmp_path / "first.log")
    passphrases = re.findall(r"passphrase: (\S+)", first)
    assert len(passphrases) == 2

    process, web = _run_demo(data, tmp_path / "second.log")
    try:
        again = requests.get(f"http://127.0.0.1:{web}/api/v1/accounts", timeout=5).json()
        assert again == accounts  # the same accounts, no new ones
        chain = requests.get(f"http://127.0.0.1:{web}/api/v1/chain", timeout=5).json()
        assert chain["block"] >= saved  # the saved chain, resumed
        status = subprocess.run(
            [sys.executable, "-m", "dapp.cli", "demo", "--status", "--port", str(web)],
            cwd=ROOT, env={**os.environ, "MICROGRID_DATA_DIR": str(data)},
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        assert "is running: open http://localhost:" in status
        assert all(secret in status for secret in passphrases)  # the banner, shown again
    finally:
        _stop(process)
    second = (tmp_path / "second.log").read_text()
    assert "found the market" in second and "deployed: market" not in second
    assert sorted(p.name for p in (tmp_path / "data-meters").iterdir()) == keys  # same meters
    assert "passphrase:" not in second  # printed once, on the first run only
    _stopped_in_order(tmp_path / "second.log")


def test_the_demo_stays_alive_tokens_still_grow_after_hours_of_emulated_sun(tmp_path):
    # 80x: a minute of the test is 80 emulated minutes of the producer's day from noon. With the
    # old plant (a small battery and no household behind the meter) the battery was full and
    # the supply counter stood still after about 90 s at 60x.
    data = tmp_path / "data"
    web, node = free_port(), free_port()
    env = {**os.environ, "MICROGRID_DATA_DIR": str(data)}
    log = tmp_path / "alive.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "dapp.cli", "demo", "--port", str(web), "--node-port", str(node),
         "--acceleration", "80"], cwd=ROOT, env=env, stdout=log.open("w"),
        stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _serving(process, web, log), timeout=90, step=0.5)
        state = json.loads((data / "demo" / "demo.json").read_text())
        from dapp.chain.client import ChainClient

        chain = ChainClient(f"http://127.0.0.1:{node}", tmp_path / "reader")
        tokens = lambda: chain.token_balance(state["producer"])  # noqa: E731
        samples = []
        for _ in range(3):  # a minute of the test, 80 emulated minutes of afternoon sun
            time.sleep(20)
            samples.append(tokens())
        assert samples == sorted(samples) and len(set(samples)) == len(samples), samples
        # Still growing at the end: well over 100 Wh in the last 27 emulated minutes (the old
        # plant's battery was full, and its counter still, about 75 s after the start at 80x).
        assert samples[-1] - samples[-2] > 100, samples
    finally:
        _stop(process)


def _serving(process: subprocess.Popen, web: int, log: Path) -> bool:
    assert process.poll() is None, log.read_text()
    try:
        return requests.get(f"http://127.0.0.1:{web}/", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False
