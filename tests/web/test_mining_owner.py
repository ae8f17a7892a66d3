"""Mining start/stop is offered only where the node is this server's own.

The same chain is reached once through its own (in-process) URL and once as if it were another
machine's node (a ChainClient named by a documentation address, RFC 5737, over the same Web3):
the wallet page says why it cannot mine there, the API refuses with that sentence, and the node
keeps mining.
"""

from __future__ import annotations

import pytest

from dapp.chain.client import ChainClient
from dapp.chain.mining import foreign_node_reason, is_local_host, node_host
from tests.web.conftest import PASSPHRASE, Browser

FOREIGN = "http://192.0.2.10:8545"  # TEST-NET-1: an address that is never this machine


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("inprocess://demo", True),
        ("/var/lib/microgrid/geth.ipc", True),
        ("file:///tmp/geth.ipc", True),
        ("http://127.0.0.1:8545", True),
        ("ws://127.0.0.2:8546", True),
        ("http://[::1]:8545", True),
        ("http://localhost:8545", True),
        (FOREIGN, False),
        ("ws://node.example:8546", False),
    ],
)
def test_only_a_node_on_this_machine_is_our_own(url, local):
    assert is_local_host(node_host(url)) is local
    assert (foreign_node_reason(url) is None) is local


@pytest.fixture
def foreign(app, world, tmp_path) -> Browser:
    """The producer, on an app whose chain client names the node by another machine's address."""
    ext = app.extensions["microgrid"]
    ext.wallet.client = ChainClient(FOREIGN, tmp_path / "foreign",
                                    market=world.deployment.market, w3=world.w3)
    person = Browser(app.test_client(), world)
    response = person.api("POST", "/api/v1/session", {"address": world.address["producer"],
                                                      "passphrase": PASSPHRASE})
    assert response.status_code == 200
    return person


def test_a_foreign_node_is_not_mined_from_here(foreign, world):
    status = foreign.client.get("/api/v1/mining").get_json()
    assert status["available"] is False
    assert "the node at 192.0.2.10 is not on this machine" in status["detail"]
    html = foreign.text("/wallet/")
    assert "Not available on this node" in html and "is not on this machine" in html
    assert 'id="mining-stop"\n              disabled' in html or "disabled>Stop" in html
    refused = foreign.api("POST", "/api/v1/mining", {"action": "stop"})
    assert refused.status_code == 409
    assert refused.get_json()["error"] == (
        "Mining cannot be started or stopped on this node: " + status["detail"])
    assert world.chain.mining  # nothing was stopped
