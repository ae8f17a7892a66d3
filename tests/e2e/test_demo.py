"""`make run`'s command, `microgrid demo`, as a user runs it: start, serve, stop, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support import free_port, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


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


def test_demo_starts_everything_and_a_second_run_resumes(tmp_path):
    data = tmp_path / "data"
    process, web = _run_demo(data, tmp_path / "first.log")
    try:
        accounts = requests.get(f"http://127.0.0.1:{web}/api/v1/accounts", timeout=5).json()
        labels = {a["label"] for a in accounts["accounts"]}
        assert {"producer", "consumer"} <= labels
        chain = requests.get(f"http://127.0.0.1:{web}/api/v1/chain", timeout=5).json()
        assert chain["available"] is True
    finally:
        assert _stop(process) in (0, 130)
    first = (tmp_path / "first.log").read_text()
    for step in range(1, 9):
        assert f"[{step}/8]" in first
    assert "passphrase:" in first and "deployed: market" in first
    assert (data / "chain" / "anvil-state.json").is_file()
    assert oct((data / "demo" / "user-passphrases").stat().st_mode & 0o777) == "0o600"

    process, web = _run_demo(data, tmp_path / "second.log")
    try:
        again = requests.get(f"http://127.0.0.1:{web}/api/v1/accounts", timeout=5).json()
        assert again == accounts  # the same accounts, no new ones
    finally:
        _stop(process)
    second = (tmp_path / "second.log").read_text()
    assert "found the market" in second and "deployed: market" not in second
    assert "passphrase:" not in second  # printed once, on the first run only
