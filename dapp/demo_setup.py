"""Everything `make run` starts, from a fresh clone to a working micro-grid on one machine.

`DemoSetup.prepare()` starts the managed anvil (its chain in the data directory), deploys the
contracts if the chain has none, creates the operator, a producer and a consumer (keystores; the
two users' passphrases are printed once), funds them, starts the emulated meters (one shared
micro-grid: the producer's PV charges a lead-acid battery, the consumer's programmable load draws
from it while the trade's relays are closed), has the operator offer each meter to its owner and
the owner accept it. Each emulated meter keeps its own key in `<data-dir>-meters/`, beside the
data directory and not in it (its EEPROM; never in the keystore, never given to the bridge). The
web server and the meter bridge are then run by `microgrid serve`'s code, the operator
forwarding the meters' signed readings (and paying their gas). A second run finds the same
chain, accounts and meters and only starts things again.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dapp import atomic
from dapp.chain.anvil import ManagedAnvil
from dapp.chain.client import ChainClient
from dapp.chain.deploy import MarketParameters
from dapp.chain.discovery import AmbiguousDeployment
from dapp.errors import ChainError, MicrogridError
from dapp.wallet.keystore import Keystore, read_passphrase
from hardware.emulator import EmulatedMeter, MeterMemory, MeterServer, Microgrid
from hardware.models import LeadAcidBattery, LoadProfile, Plant, SolarArray
from hardware.protocol import LOAD, MAX_RATED_POWER_W, SUPPLY

ETHER = 10**18
# What the demo's users start with (anvil_setBalance: the managed node is a development chain).
USER_FUNDS = 100 * ETHER
OPERATOR_FUNDS = 1_000 * ETHER
METER_NAMES = {SUPPLY: "producer-supply", LOAD: "consumer-load"}  # key files in the meter dir


def meter_dir_beside(data_dir: Path) -> Path:
    """Where the demo's emulated meters keep their keys: `<data_dir>-meters`, beside it."""
    resolved = Path(data_dir).resolve()
    return resolved.parent / f"{resolved.name or 'microgrid'}-meters"


@dataclass
class DemoSettings:
    """The knobs of the demo (each has a flag and a MICROGRID_* variable in the CLI)."""

    data_dir: Path
    node_host: str = "127.0.0.1"
    node_port: int = 8545
    block_time: float = 1.0
    acceleration: float = 60.0
    pv_peak_w: float = 800.0
    load_profile: str = "0:150,7:400,12:300,19:600,23:150"
    # The producer's own household (about 2.8 kWh a day, against some 5 kWh its 800 W of PV
    # stores on a sunny day) and a battery large enough that it is rarely full: the supply
    # counter, and so the producer's tokens, grow whenever the sun shines.
    producer_load_profile: str = "0:60,7:200,9:100,17:250,22:80"
    battery_wh: float = 6000.0
    battery_soc: float = 0.4
    min_duration: int = 60
    stall_timeout: int = 180  # the bridge sends a heartbeat at least every third of it
    meter_dir: Path | None = None  # the meters' key files; None: <data_dir>-meters beside it


@dataclass
class DemoState:
    """What a run created (persisted in <data-dir>/demo/demo.json, no secrets)."""

    operator: str = ""
    producer: str = ""
    consumer: str = ""
    producer_meter: str = ""  # the emulated meters' addresses (their keys stay in their files)
    consumer_meter: str = ""
    meter_urls: dict[str, str] = field(default_factory=dict)


class DemoSetup:
    """Prepares node, contracts, accounts and emulated meters; stops them again."""

    def __init__(self, settings: DemoSettings, out: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.out = out
        self.data_dir = Path(settings.data_dir)
        self.meter_dir = settings.meter_dir or meter_dir_beside(self.data_dir)
        self.demo_dir = self.data_dir / "demo"
        self.keystore = Keystore(self.data_dir / "keystore")
        self.node = ManagedAnvil(
            self.data_dir, host=settings.node_host, port=settings.node_port,
            block_time=settings.block_time,
        )
        self.state = DemoState()
        self.servers: list[MeterServer] = []
        self.grid: Microgrid | None = None
        self.client: ChainClient | None = None
        self._step = 0
        self.new_passphrases: dict[str, str] = {}

    # ------------------------------------------------------------------ files

    @property
    def service_passphrase_file(self) -> Path:
        """Passphrase of the operator's key (the server unlocks it unattended)."""
        return self.demo_dir / "service-passphrase"

    @property
    def user_passphrase_file(self) -> Path:
        """The demo users' passphrases, readable by this user only (they are printed once)."""
        return self.demo_dir / "user-passphrases"

    def _write_private(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic.write_text(path, text, mode=0o600)

    def _load_state(self) -> None:
        path = self.demo_dir / "demo.json"
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            self.state = DemoState(**{k: v for k, v in data.items() if k != "meter_urls"})

    def _save_state(self) -> None:
        self.demo_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {k: v for k, v in self.state.__dict__.items() if k != "meter_urls"}
        atomic.write_text(self.demo_dir / "demo.json", json.dumps(data, indent=2) + "\n")

    # ------------------------------------------------------------------ steps

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        """Print a progress line for one step, with its duration."""
        self._step += 1
        started = time.monotonic()
        self.out(f"[{self._step}/8] {text} ...")
        yield
        self.out(f"      done in {time.monotonic() - started:.1f} s")

    def prepare(self) -> None:
        """Run every step up to (not including) the web server."""
        self._load_state()
        with self.step(f"starting the chain node (anvil, {self.node.host}:{self.node.port})"):
            self.node.start()
        self.client = ChainClient(self.node.url, self.data_dir)
        with self.step("accounts: operator, producer, consumer"):
            self._accounts()
        with self.step("funding the accounts"):
            self._fund()
        with self.step("contracts"):
            self._contracts()
        with self.step("starting the emulated meters (PV + battery, programmable load)"):
            self._emulators()
        with self.step("meters: offered by the operator, accepted by their owners"):
            self._meters()
        with self.step("starting mining"):
            status = self.client.start_mining(self.settings.block_time)
            self.out(f"      {status.detail}")
        self._save_state()

    def _service_passphrase(self) -> str:
        if self.service_passphrase_file.is_file():
            return read_passphrase(str(self.service_passphrase_file), prompt="")
        passphrase = secrets.token_urlsafe(24)
        self._write_private(self.service_passphrase_file, passphrase + "\n")
        return passphrase

    def _accounts(self) -> None:
        service = self._service_passphrase()
        st = self.state
        if not st.operator or not self.keystore.has(st.operator):
            st.operator = self.keystore.create(service, label="operator")
        for attr, label in (("producer", "producer"), ("consumer", "consumer")):
            if not getattr(st, attr) or not self.keystore.has(getattr(st, attr)):
                passphrase = "-".join(secrets.token_hex(3) for _ in range(4))
                setattr(st, attr, self.keystore.create(passphrase, label=label))
                self.new_passphrases[label] = passphrase
        if self.new_passphrases:
            lines = [f"{label} {getattr(st, label)} {pw}"
                     for label, pw in self.new_passphrases.items()]
            previous = (self.user_passphrase_file.read_text(encoding="utf-8")
                        if self.user_passphrase_file.is_file() else "")
            self._write_private(self.user_passphrase_file, previous + "\n".join(lines) + "\n")
        self._save_state()

    def _fund(self) -> None:
        assert self.client is not None
        st = self.state
        # Meters hold no Ether: the operator forwards their readings and pays the gas.
        wanted = {st.operator: OPERATOR_FUNDS, st.producer: USER_FUNDS, st.consumer: USER_FUNDS}
        for address, amount in wanted.items():
            if self.client.ether_balance(address) < amount // 2:
                self.client.fund_dev_account(address, amount)

    def _unlock(self, address: str):
        return self.keystore.unlock(address, self._service_passphrase())

    def _contracts(self) -> None:
        assert self.client is not None
        try:
            dep = self.client.deployment
            self.out(f"      found the market at {dep.market}")
        except AmbiguousDeployment:
            raise  # several valid deployments: the user chooses, the demo adds no other
        except ChainError:
            params = MarketParameters(min_duration=self.settings.min_duration,
                                      stall_timeout=self.settings.stall_timeout)
            dep = self.client.deploy(self._unlock(self.state.operator), params)
            self.out(f"      deployed: market {dep.market}")

    def _plant(self) -> Plant:
        settings = self.settings
        return Plant(pv=SolarArray(peak_w=settings.pv_peak_w),
                     battery=LeadAcidBattery(capacity_wh=settings.battery_wh,
                                             soc=settings.battery_soc),
                     load=LoadProfile.parse(settings.load_profile),
                     own_load=LoadProfile.parse(settings.producer_load_profile))

    def _user(self, label: str):
        """Unlock a demo user's key (a new passphrase, or the copy in the passphrase file)."""
        address = getattr(self.state, label)
        passphrase = self.new_passphrases.get(label)
        if passphrase is None and self.user_passphrase_file.is_file():
            for line in self.user_passphrase_file.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[0] == label and parts[1] == address:
                    passphrase = parts[2]
        if passphrase is None:
            raise MicrogridError(f"the {label}'s passphrase is not in {self.user_passphrase_file}: "
                                 "the meter offer waits on the wallet page for the owner")
        return self.keystore.unlock(address, passphrase)

    def _meters(self) -> None:
        """Offer each meter to its owner (operator), and accept it (owner), unless done before."""
        assert self.client is not None
        st = self.state
        operator = None
        for meter, owner, kind in ((st.producer_meter, "producer", SUPPLY),
                                   (st.consumer_meter, "consumer", LOAD)):
            info = self.client.meter(meter)
            if info is not None and info.status != "offered":
                continue
            if info is None:
                rated = next(s.meter for s in self.servers if s.meter.kind == kind
                             ).identity.rated_power_w
                if rated > MAX_RATED_POWER_W:
                    raise MicrogridError(
                        f"the {kind} meter would need {rated} W at acceleration "
                        f"{self.settings.acceleration:g}: lower the acceleration or the power"
                    )
                operator = operator or self._unlock(st.operator)
                self.client.wait(self.client.offer_meter(operator, meter, getattr(st, owner),
                                                         kind, rated))
                self.out(f"      offered the {kind} meter {meter} ({rated} W) to the {owner}")
            self.client.wait(self.client.accept_meter(self._user(owner), meter))
            self.out(f"      the {owner} accepted it")

    def _emulators(self) -> None:
        st = self.state
        self.grid = Microgrid(self._plant(), acceleration=self.settings.acceleration)
        earlier = self.data_dir / "meters"  # where an earlier version kept them
        if earlier.is_dir() and not self.meter_dir.exists():
            earlier.rename(self.meter_dir)
            self.out(f"      moved the meters' key files out of the data directory, to "
                     f"{self.meter_dir}")
        for kind in (SUPPLY, LOAD):
            # The meter's EEPROM: its key, last signed counter and sequence, its domain.
            eeprom = MeterMemory.in_directory(self.meter_dir, METER_NAMES[kind])
            plant = self.grid.plant
            peak = plant.pv.peak_w if kind == SUPPLY else plant.load.peak_w
            # Rated a fifth above the peak (within the registry's 16-bit limit at this
            # acceleration): a meter rated exactly at its peak has its midday readings refused
            # as implausible whenever a reading is mined later after its sample than the last.
            rated = max(peak, min(1.2 * peak, MAX_RATED_POWER_W / self.settings.acceleration))
            emulated = EmulatedMeter(kind, self.grid, meter_id=f"demo-{kind}", state=eeprom,
                                     rated_power_w=rated)
            server = MeterServer(emulated, transport="tcp")
            url = server.start()
            self.servers.append(server)
            setattr(st, "producer_meter" if kind == SUPPLY else "consumer_meter", emulated.address)
            st.meter_urls[emulated.address] = url
            self.out(f"      {kind} meter {emulated.address} on {url}")

    def stop(self) -> None:
        """Stop the emulators and the node (the node saves its chain)."""
        for server in self.servers:
            server.stop()
        self.servers.clear()
        self.node.stop()

    def banner(self, web_url: str) -> str:
        """What to open and how to log in."""
        st = self.state
        lines = ["", "=" * 72, f"  Microgrid Energy Exchange is running: open {web_url}", ""]
        for label in ("producer", "consumer"):
            address = getattr(st, label)
            if label in self.new_passphrases:
                lines.append(f"  {label:9s} {address}  passphrase: {self.new_passphrases[label]}")
            else:
                lines.append(f"  {label:9s} {address}")
        if self.new_passphrases:
            lines.append(f"  (a copy readable only by you is in {self.user_passphrase_file}; "
                         "`microgrid demo --status` shows them again)")
        else:
            lines.append("  passphrases: `microgrid demo --status`, or "
                         f"{self.user_passphrase_file}")
        lines += ["  Stop with Ctrl-C (the chain is saved; `make run` resumes it).", "=" * 72]
        return "\n".join(lines)
