"""`microgrid meter offer|accept|decline|deactivate` on the in-process chain, as the people run it.

The operator and two households keep their keys in one data directory's keystore; the meters'
keys are held by the test (`SigningMeter`), as a meter holds its own. Nothing a meter signs
counts until its owner accepted it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dapp.chain.client import ChainClient
from dapp.chain.deploy import deploy
from dapp.chain.inprocess import close_shared_chains, shared_chain
from dapp.cli import build_parser, main
from dapp.errors import ContractReverted
from dapp.wallet.keystore import Keystore
from tests.support import SigningMeter

PASSPHRASE = "correct horse battery staple"  # noqa: S105 - a test keystore's passphrase
ETHER = 10**18


@dataclass
class Grid:
    """A chain with the contracts, a keystore of people, and the CLI run as any of them."""

    url: str
    data_dir: Path
    passphrase_file: Path
    client: ChainClient
    keystore: Keystore
    who: dict[str, str]
    market: str

    def run(self, command: str, sender: str, *args: str) -> int:
        """`microgrid meter COMMAND --from SENDER ARGS` against this chain; the exit code."""
        return main(["--data-dir", str(self.data_dir), "meter", command, "--rpc", self.url,
                     "--market", self.market, "--from", self.who.get(sender, sender),
                     "--passphrase-file", str(self.passphrase_file), *args])

    def offer(self, meter: SigningMeter, owner: str, sender: str = "operator") -> int:
        """The operator's `meter offer` for `meter` to `owner`."""
        return self.run("offer", sender, "--meter", meter.address, "--owner", self.who[owner],
                        "--kind", meter.kind, "--rated-power", str(meter.rated_power_w))

    def status(self, meter: SigningMeter) -> str | None:
        """The meter's status on chain (None: never offered)."""
        info = self.client.meter(meter.address)
        return None if info is None else info.status


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    """The contracts deployed by a keystore operator; a producer, a consumer and a stranger."""
    name = f"meter-cli-{uuid.uuid4().hex[:8]}"
    chain = shared_chain(name)
    chain.empty_blocks = False
    chain.start_mining(0.1)
    root = tmp_path_factory.mktemp("meter-cli")
    data_dir = root / "data"
    keystore = Keystore(data_dir / "keystore", scrypt_n=16)
    who = {role: keystore.create(PASSPHRASE, label=role)
           for role in ("operator", "producer", "consumer", "stranger")}
    client = ChainClient(f"inprocess://{name}", root / "test-client")
    for address in who.values():
        client.wait(client.send_ether(chain.accounts[0], address, 10 * ETHER))
    with chain.lock:  # deploy's legacy transactions are mined at once (see tests/web/conftest)
        chain.tester.enable_auto_mine_transactions()
        try:
            deployment = deploy(chain.w3, keystore.unlock(who["operator"], PASSPHRASE))
        finally:
            chain.tester.disable_auto_mine_transactions()
    client.use_deployment(deployment)
    passphrase_file = root / "passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n", encoding="utf-8")
    yield Grid(f"inprocess://{name}", data_dir, passphrase_file, client, keystore, who,
               deployment.market)
    close_shared_chains(name)


def test_offer_then_accept_and_only_then_its_readings_mint(grid, capsys):
    meter = SigningMeter("supply")
    assert grid.offer(meter, "producer") == 0
    out = capsys.readouterr().out
    assert f"offered {meter.address} to {grid.who['producer']}" in out
    assert f"microgrid meter accept --from {grid.who['producer']} --meter {meter.address}" in out
    info = grid.client.meter(meter.address)
    assert (info.owner, info.kind, info.rated_power_w, info.status) == (
        grid.who["producer"], "supply", 65535, "offered")
    assert grid.offer(meter, "producer") == 0  # the same again: nothing changes, it says so
    assert "waiting for the answer of" in capsys.readouterr().out
    assert grid.offer(meter, "consumer") == 1  # but not to someone else
    assert "was already offered" in capsys.readouterr().err
    carrier = grid.keystore.unlock(grid.who["stranger"], PASSPHRASE)
    with pytest.raises(ContractReverted) as refused:
        meter.report(grid.client, carrier, 100)
    assert refused.value.name == "MeterNotAccepted"

    assert grid.run("accept", "producer", "--meter", meter.address) == 0
    assert "accepted" in capsys.readouterr().out
    assert grid.status(meter) == "active"
    assert grid.run("accept", "producer", "--meter", meter.address) == 1
    assert (f"Meter {meter.address} has already been accepted; there is no offer to answer."
            in capsys.readouterr().err)
    tokens = grid.client.token_balance(grid.who["producer"])
    assert meter.report(grid.client, carrier, 1_000).accepted  # the baseline
    time.sleep(1.5)  # chain time passes: 65,535 W x 1 s allows 18 Wh
    assert meter.report(grid.client, carrier, 1_010).accepted
    assert grid.client.token_balance(grid.who["producer"]) == tokens + 10


def test_only_an_operator_can_offer(grid, capsys):
    meter = SigningMeter("supply", 800)
    assert grid.offer(meter, "producer", sender="stranger") == 1
    assert "is not a grid operator" in capsys.readouterr().err
    assert grid.status(meter) is None


def test_only_its_owner_answers_and_a_declined_meter_may_be_offered_again(grid, capsys):
    meter = SigningMeter("load", 1200)
    assert grid.offer(meter, "consumer") == 0
    capsys.readouterr()
    assert grid.run("accept", "stranger", "--meter", meter.address) == 1
    assert (f"microgrid: Meter {meter.address} was not offered to you; only the account it was "
            "offered to can accept or decline it.") in capsys.readouterr().err
    assert grid.status(meter) == "offered"

    assert grid.run("decline", "consumer", "--meter", meter.address) == 0
    assert "declined" in capsys.readouterr().out
    assert grid.status(meter) == "declined"
    assert grid.run("accept", "consumer", "--meter", meter.address) == 1
    assert "was declined; there is no offer to answer" in capsys.readouterr().err
    assert grid.offer(meter, "consumer") == 0  # the operator may offer a declined meter again
    assert grid.status(meter) == "offered"
    never = SigningMeter("supply")
    assert grid.run("decline", "consumer", "--meter", never.address) == 1
    assert f"No meter {never.address} was ever offered" in capsys.readouterr().err


def test_one_active_load_meter_per_owner_until_the_operator_deactivates_it(grid, capsys):
    first, second = SigningMeter("load", 1200), SigningMeter("load", 1200)
    for meter in (first, second):
        assert grid.offer(meter, "producer") == 0
    assert grid.run("accept", "producer", "--meter", first.address) == 0
    capsys.readouterr()
    assert grid.run("accept", "producer", "--meter", second.address) == 1
    assert (f"You already have an active load meter ({first.address}); only one load meter "
            "settles your trades.") in capsys.readouterr().err
    assert grid.status(second) == "offered"

    assert grid.run("deactivate", "producer", "--meter", first.address) == 1
    assert "is not a grid operator" in capsys.readouterr().err
    assert grid.run("deactivate", "operator", "--meter", first.address) == 0
    assert "deactivated" in capsys.readouterr().out
    assert grid.status(first) == "deactivated"
    assert grid.run("accept", "producer", "--meter", second.address) == 0
    assert grid.client.load_meter_of(grid.who["producer"]) == second.address
    assert grid.run("deactivate", "operator", "--meter", first.address) == 1
    assert "is deactivated" in capsys.readouterr().err


@pytest.mark.parametrize("rated", ["0", "65536", "12.5", "lots"])
def test_ratings_the_registry_cannot_store_are_refused(rated, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["meter", "offer", "--from", "0x" + "1" * 40,
                                   "--meter", "0x" + "2" * 40, "--owner", "0x" + "3" * 40,
                                   "--kind", "load", "--rated-power", rated])
    assert info.value.code == 2
    assert "rated-power" in capsys.readouterr().err


def test_meters_need_no_fund_option_any_more(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["meter", "register", "--help"])
    assert "invalid choice: 'register'" in capsys.readouterr().err
