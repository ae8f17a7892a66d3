"""The bridge's pure counter and cadence rules (dapp/bridge/rules.py)."""

import pytest

from dapp.bridge.rules import ABSURD_SLACK_WH, REBOOT_LOSS_WH, Cadence, due, judge

CADENCE = Cadence(interval=10.0, step_wh=5, heartbeat=60.0)


def test_a_growing_counter_within_the_rating_is_sane():
    verdict = judge(110, previous=(100, 0.0), chain_wh=100, rated_w=3600, now=10.0,
                    hold_below=None)
    assert verdict.ok and verdict.message is None


def test_a_counter_faster_than_the_rating_is_withheld():
    # 3600 W for 10 s is 10 Wh; x1.5 + slack is the most jitter explains.
    limit = int(1.5 * 10 + ABSURD_SLACK_WH)
    assert judge(100 + limit, previous=(100, 0.0), chain_wh=100, rated_w=3600, now=10.0,
                 hold_below=None).ok
    verdict = judge(100 + limit + 1, previous=(100, 0.0), chain_wh=100, rated_w=3600, now=10.0,
                    hold_below=None)
    assert not verdict.ok and verdict.problem == "jump" and "withheld" in verdict.message


def test_a_reboot_loss_is_tolerated_but_a_reset_holds_until_the_chain_counter_passes():
    small = judge(500 - REBOOT_LOSS_WH, previous=None, chain_wh=500, rated_w=1000, now=0.0,
                  hold_below=None)
    assert not small.ok and small.problem == "back" and small.hold_below is None
    reset = judge(3, previous=None, chain_wh=500, rated_w=1000, now=0.0, hold_below=None)
    assert not reset.ok and reset.hold_below == 500
    still = judge(499, previous=(3, 0.0), chain_wh=500, rated_w=10**6, now=100.0, hold_below=500)
    assert not still.ok and still.problem == "hold"
    passed = judge(501, previous=(499, 100.0), chain_wh=500, rated_w=10**6, now=101.0,
                   hold_below=500)
    assert passed.ok and passed.hold_below is None


def test_the_first_reading_of_a_meter_goes_at_once():
    assert due(CADENCE, counter=0, sequence=1, chain_wh=None, chain_sequence=None,
               forwarded=None, now=0.0)


@pytest.mark.parametrize(("counter", "since", "expected"), [
    (104, 100.0, True),   # below the step: a heartbeat, once the heartbeat time passed
    (104, 59.0, False),   # below the step, heartbeat not yet due
    (105, 10.0, True),    # the step reached and the interval passed
    (105, 9.0, False),    # the step reached, the interval not yet
])
def test_cadence(counter, since, expected):
    assert due(CADENCE, counter=counter, sequence=8, chain_wh=100, chain_sequence=7,
               forwarded=(100, 7, 1000.0), now=1000.0 + since) is expected


def test_a_reading_the_chain_has_or_that_is_on_its_way_is_never_sent_again():
    assert not due(CADENCE, counter=500, sequence=7, chain_wh=100, chain_sequence=7,
                   forwarded=None, now=10**6)
    assert not due(CADENCE, counter=500, sequence=9, chain_wh=100, chain_sequence=7,
                   forwarded=(400, 9, 0.0), now=10**6)


@pytest.mark.parametrize("bad", [dict(interval=-1), dict(step_wh=0), dict(heartbeat=0)])
def test_bad_cadence_settings_are_refused(bad):
    with pytest.raises(ValueError):
        Cadence(**bad)


def test_an_awaited_reading_goes_after_the_interval_even_if_the_counter_stood_still():
    # The buyer asked to close: its next reading settles the tail, so it is not kept back
    # until the heartbeat.
    args = dict(counter=100, sequence=8, chain_wh=100, chain_sequence=7,
                forwarded=(100, 7, 1000.0), now=1011.0)
    assert not due(CADENCE, **args)
    assert due(CADENCE, **args, prompt=True)
