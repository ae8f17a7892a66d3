"""The app over real HTTP: Socket.IO origin and login rules, and the `microgrid serve` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import socketio

from tests.web.conftest import PASSPHRASE, LiveServer, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(make_app) -> Iterator[LiveServer]:
    """The app served on a free 127.0.0.1 port (background tasks on)."""
    app = make_app(START_BACKGROUND=True)
    live = LiveServer(app).start()
    yield live
    live.stop()


def logged_in_session(server: LiveServer, address: str) -> requests.Session:
    """A requests session logged in through the JSON API."""
    http = requests.Session()
    token = http.get(f"{server.url}/api/v1/session", timeout=5).json()["csrf_token"]
    response = http.post(f"{server.url}/api/v1/session", timeout=5,
                         json={"address": address, "passphrase": PASSPHRASE},
                         headers={"X-CSRF-Token": token})
    assert response.status_code == 200
    return http


def cookie_header(http: requests.Session) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in http.cookies)


def test_socketio_connects_only_same_origin_and_logged_in(server, world):
    http = logged_in_session(server, world.address["consumer"])
    polling = f"{server.url}/socket.io/?EIO=4&transport=polling"
    foreign = http.get(polling, headers={"Origin": "http://evil.example"}, timeout=5)
    assert foreign.status_code == 400 and "Not an accepted origin" in foreign.text
    same = http.get(polling, headers={"Origin": server.url}, timeout=5)
    assert same.status_code == 200

    client = socketio.Client(reconnection=False)
    received: list[dict] = []
    client.on("wallet", received.append)
    client.connect(server.url, transports=["polling"], wait_timeout=5,
                   headers={"Cookie": cookie_header(http), "Origin": server.url})
    try:
        wait_for(lambda: received)
        assert received[0]["address"] == world.address["consumer"]
    finally:
        client.disconnect()

    stranger = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        stranger.connect(server.url, transports=["polling"], wait_timeout=5,
                         headers={"Origin": server.url})
    evil = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        evil.connect(server.url, transports=["polling"], wait_timeout=5,
                     headers={"Cookie": cookie_header(http), "Origin": "http://evil.example"})


def test_vendor_files_come_from_node_modules(server):
    for name, marker in (("socket.io.min.js", "io"), ("chart.umd.min.js", "Chart")):
        response = requests.get(f"{server.url}/vendor/{name}", timeout=5)
        assert response.status_code == 200 and marker in response.text
    assert requests.get(f"{server.url}/vendor/..%2Fpackage.json", timeout=5).status_code == 404
    assert requests.get(f"{server.url}/vendor/other.js", timeout=5).status_code == 404


@pytest.mark.slow
def test_microgrid_serve_runs_until_sigterm(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MICROGRID_SECRET_KEY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "dapp.cli", "--data-dir", str(tmp_path / "data"), "serve",
         "--rpc", "inprocess://serve-test", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        first = process.stdout.readline()
        deadline = time.monotonic() + 30
        while "serving on" not in first and time.monotonic() < deadline:
            first = process.stdout.readline()
        assert f"serving on http://127.0.0.1:{port}" in first
        assert "auto-finalize off" in first
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "Log in" in page.text
        assert (tmp_path / "data" / "secret_key").is_file()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(("variable", "value", "flag"),
                         [("MICROGRID_KDF_N", "lots", "--kdf-n"),
                          ("MICROGRID_KDF_N", "1000", "--kdf-n"),
                          ("MICROGRID_WEB_PORT", "web", "--port")])
def test_bad_serve_settings_are_usage_errors(monkeypatch, capsys, variable, value, flag):
    from dapp.cli import main

    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve"])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err
