"""The terminal of `microgrid serve` / `microgrid demo`: one line per trade event, nothing else."""

from __future__ import annotations

import logging

from dapp.commands.common import TRADES_LOGGER, log_trade_events
from tests.support import wait_for

GWEI = 10**9


def test_each_trade_event_prints_one_line_and_earlier_ones_none(make_app, world, caplog):
    caplog.set_level(logging.INFO, logger=TRADES_LOGGER)
    producer, consumer = world.account("producer"), world.account("consumer")
    client = world.client
    world.mine(client.sell(producer, 100, 10**6 * GWEI, 600))  # before the server started
    app = make_app()
    ext = app.extensions["microgrid"]
    log_trade_events(ext)
    world.mine(client.sell(producer, 1_500, 10**6 * GWEI, 600))
    lot = client.lot_count()
    world.mine(client.bid(consumer, lot, 2 * 10**6 * GWEI))
    world.advance(601)
    world.mine(client.finalize(consumer, lot))
    world.mine(client.close_connection(consumer, lot))  # a request: the relays open ...
    # ... and the consumer's next load reading (a heartbeat here) settles the tail and closes it.
    assert world.load_meter(world.address["consumer"]).report(client, world.bank).accepted
    ext.start_background()

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == TRADES_LOGGER]

    wait_for(lambda: len(lines()) >= 4, timeout=30)
    assert lines() == [
        f"listed: #{lot} 1.5 kWh by producer, from 0.001 ETH per kWh",
        f"bid: #{lot} 0.002 ETH per kWh by consumer",
        f"won: #{lot} by consumer at 0.002 ETH per kWh; the trade is open",
        f"closed: trade #{lot} after 0 kWh delivered",
    ]
