"""The managed node: the pinned anvil binary as a child process with its chain in the data dir.

The chain lives in ``<data_dir>/chain/anvil-state.json``: anvil loads it at start, rewrites it
every `state_interval` seconds and on SIGTERM, so a restart resumes the same chain (block
number, timestamps, balances, contract code, receipts). anvil rewrites that file in place, so
a kill or power cut during a write can leave it truncated; a copy of the last state that loaded
is kept as ``anvil-state.json.bak`` and restored (the damaged file is kept aside) if needed.

Always the real binary from ``node_modules/@foundry-rs/anvil-<platform>/bin/``: the npm
wrapper script (``node_modules/.bin/anvil``) is a Node process, and killing it leaves the
binary running and holding the port.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from dapp.chain.transports import connect
from dapp.errors import ChainUnavailable, MicrogridError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
_PLATFORMS = {
    ("linux", "x86_64"): "linux-amd64",
    ("linux", "amd64"): "linux-amd64",
    ("linux", "aarch64"): "linux-arm64",
    ("linux", "arm64"): "linux-arm64",
    ("darwin", "x86_64"): "darwin-amd64",
    ("darwin", "arm64"): "darwin-arm64",
    ("win32", "amd64"): "win32-amd64",
    ("win32", "x86_64"): "win32-amd64",
}


def platform_package() -> str:
    """The npm platform suffix of anvil for this machine, e.g. "linux-amd64"."""
    key = (sys.platform, platform.machine().lower())
    try:
        return _PLATFORMS[key]
    except KeyError:
        raise MicrogridError(
            f"anvil is not published for {key[0]}/{key[1]}; run another node and pass its URL"
        ) from None


def find_anvil(root: Path = ROOT) -> Path:
    """Path of the real anvil binary that `npm ci` installed (never the .bin wrapper)."""
    package = platform_package()
    name = "anvil.exe" if package.startswith("win32") else "anvil"
    binary = root / "node_modules" / "@foundry-rs" / f"anvil-{package}" / "bin" / name
    if not binary.is_file():
        raise MicrogridError(
            f"anvil is not installed ({binary.relative_to(root)} is missing): run `npm ci` "
            "(or `make install`) in the project directory"
        )
    return binary


def port_in_use(host: str, port: int) -> bool:
    """True if something already listens on host:port."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Same option anvil's listener uses, so a port in TIME_WAIT does not count as busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def is_loopback(host: str) -> bool:
    """True for "localhost" and any loopback IP address (127.x.y.z, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _json_ok(path: Path) -> bool:
    """True if `path` holds complete JSON (anvil refuses to start on a truncated state file)."""
    try:
        with path.open("rb") as fh:
            json.load(fh)
    except (OSError, ValueError):
        return False
    return True


def _pid_alive(pid: int) -> bool:
    """True if a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ManagedAnvil:
    """anvil as a child process, its chain persisted in `data_dir`/chain.

    block_time None: anvil mines each transaction at once (automine); otherwise a block every
    `block_time` seconds. state_interval 0: the state is written on stop only. anvil listens
    on a loopback address only (it serves anvil_*/evm_* to whoever connects: other machines use
    the gateway, dapp/chain/gateway.py) and starts with no development accounts.

    Fees: `base_fee` 0 (the default) starts the chain with a zero EIP-1559 base fee, which
    EIP-1559 keeps at zero however full the blocks are, so a meter reading or a bid never
    becomes unmineable under load (transactions still pay a 1 gwei tip, which orders them).
    None leaves anvil's fee market as it is (the base fee rises ~12.5 % a full block).
    """

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 8545,
        block_time: float | None = 1.0,
        state_interval: int = 5,
        chain_id: int = 31337,
        binary: Path | None = None,
        extra_args: Sequence[str] = (),
        base_fee: int | None = 0,
    ) -> None:
        if block_time is not None and block_time <= 0:
            raise ValueError("block_time must be positive (or None for automine)")
        if state_interval < 0:
            raise ValueError("state_interval must be >= 0")
        if not is_loopback(host):
            raise MicrogridError(
                f"the node listens on loopback only, not on {host}: anvil answers development "
                "methods (anvil_setBalance, evm_*) to anyone who connects. Share the chain with "
                "other machines through the gateway (--gateway-host / MICROGRID_GATEWAY_HOST)"
            )
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.block_time = block_time
        self.state_interval = state_interval
        self.chain_id = chain_id
        self.binary = binary
        self.extra_args = tuple(extra_args)
        self.base_fee = base_fee
        self.restored_from_backup = False
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The node's HTTP JSON-RPC URL (anvil answers WebSocket on the same port)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def chain_dir(self) -> Path:
        """Directory holding the state, backup, log and pid files."""
        return self.data_dir / "chain"

    @property
    def state_file(self) -> Path:
        """anvil's chain state (JSON)."""
        return self.chain_dir / "anvil-state.json"

    @property
    def backup_file(self) -> Path:
        """Copy of the last state file that loaded."""
        return self.chain_dir / "anvil-state.json.bak"

    @property
    def chain_id_file(self) -> Path:
        """The chain id the saved chain was started with."""
        return self.chain_dir / "chain-id"

    @property
    def log_file(self) -> Path:
        """anvil's output, appended across runs."""
        return self.chain_dir / "anvil.log"

    @property
    def pid_file(self) -> Path:
        """The running anvil's pid (removed on a clean stop)."""
        return self.chain_dir / "anvil.pid"

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self._process.pid if self.is_running() and self._process else None

    def command(self, binary: Path) -> list[str]:
        """anvil's command line."""
        cmd = [
            str(binary),
            "--host", self.host,
            "--port", str(self.port),
            "--chain-id", str(self.chain_id),
            "--state", str(self.state_file),
            # No pre-funded, unlocked development accounts: their keys are public.
            "--accounts", "0",
        ]  # fmt: skip
        if self.state_interval:
            cmd += ["--state-interval", str(self.state_interval)]
        if self.block_time is not None:
            cmd += ["--block-time", f"{self.block_time:g}"]
        if self.base_fee is not None:
            cmd += ["--base-fee", str(self.base_fee)]
        return cmd + list(self.extra_args)

    def is_running(self) -> bool:
        """True while the anvil child process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start anvil and wait until it answers web3_clientVersion."""
        if self.is_running():
            return
        binary = self.binary or find_anvil()
        self.chain_dir.mkdir(parents=True, exist_ok=True)
        self._refuse_busy_port()
        self._check_chain_id()
        self._check_state_file()
        self._log = self.log_file.open("ab")
        self._log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting anvil\n".encode())
        self._log.flush()
        # Own session: a Ctrl-C in the terminal reaches only us, and stop() then sends the one
        # SIGTERM that makes anvil save its state (two signals could cut the save short).
        self._process = subprocess.Popen(
            self.command(binary),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid_file.write_text(f"{self._process.pid}\n", encoding="utf-8")
        try:
            self._wait_ready(self._process, timeout)
        except BaseException:
            self.stop()
            raise

    def _refuse_busy_port(self) -> None:
        if not port_in_use(self.host, self.port):
            return
        message = (
            f"port {self.port} on {self.host} is already in use: another node (or program) "
            "listens there. Stop it, or choose another port (--port / MICROGRID_NODE_PORT)"
        )
        old = self._stale_pid()
        if old is not None:
            message += f"; an anvil from an earlier run may still be running (pid {old})"
        raise MicrogridError(message)

    def _stale_pid(self) -> int | None:
        """The pid recorded by a run that did not stop cleanly, if that process still exists."""
        try:
            pid = int(self.pid_file.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def _check_chain_id(self) -> None:
        """Refuse to restart a saved chain under another chain id.

        anvil takes --chain-id from the command line, not from the state file, so a changed
        setting would silently re-label the chain and every signer would need the new id.
        """
        try:
            saved = int(self.chain_id_file.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            saved = None
        if saved is not None and saved != self.chain_id and self.state_file.exists():
            raise MicrogridError(
                f"the chain in {self.chain_dir} has chain id {saved}, not {self.chain_id}: "
                f"start it with --chain-id {saved} (MICROGRID_CHAIN_ID), or use another "
                "data directory for a new chain"
            )
        self.chain_id_file.write_text(f"{self.chain_id}\n", encoding="utf-8")

    def _check_state_file(self) -> None:
        """Keep a backup of a good state file; restore it if the state file is damaged."""
        state, backup = self.state_file, self.backup_file
        self.restored_from_backup = False
        if not state.exists():
            return
        if _json_ok(state):
            shutil.copy2(state, backup)
            return
        if backup.exists() and _json_ok(backup):
            damaged = state.with_name(f"anvil-state.damaged-{int(time.time())}.json")
            state.replace(damaged)
            shutil.copy2(backup, state)
            self.restored_from_backup = True
            log.warning(
                "chain state %s was damaged (kept as %s); restored the copy taken at the "
                "previous start: changes made since then are lost",
                state,
                damaged.name,
            )
            return
        raise MicrogridError(
            f"the chain state {state} is damaged and there is no good backup; move it away "
            "to start a new, empty chain"
        )

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        w3 = connect(self.url, timeout=1.0)
        deadline = time.monotonic() + timeout
        while True:
            code = process.poll()
            if code is not None:
                raise MicrogridError(
                    f"anvil exited at start (code {code}):\n{self.log_tail()}"
                )
            try:
                w3.client_version  # noqa: B018 - the request is the point
                return
            except ChainUnavailable:
                if time.monotonic() > deadline:
                    raise MicrogridError(
                        f"anvil did not answer on {self.url} within {timeout:g} s; see "
                        f"{self.log_file}"
                    ) from None
                time.sleep(0.05)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of anvil's log."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (anvil saves its state), wait; SIGKILL only after `timeout`. Exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "anvil did not stop within %g s; killing it (state may be up to %d s old)",
                    timeout,
                    self.state_interval,
                )
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        self.pid_file.unlink(missing_ok=True)
        self._process = None
        return process.returncode

    def __enter__(self) -> ManagedAnvil:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
