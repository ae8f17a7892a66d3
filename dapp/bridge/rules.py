"""The bridge's counter and cadence rules: pure functions, no I/O, no clocks of their own.

The bridge cannot change a reading (the meter signed it); these rules decide only whether a
reading is *forwarded* now, withheld for later, or means the meter is not to be trusted (its
relay is held open). Every function takes the times it needs as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

# PROTOCOL.md: the firmware saves its counter every 10 Wh, so a reboot may lose up to that much.
REBOOT_LOSS_WH = 10
# A counter may run ahead of rated power x time by this factor (+ ABSURD_SLACK_WH for the
# truncation of whole Wh) before the bridge calls it absurd: timing jitter, not physics.
ABSURD_FACTOR = 1.5
ABSURD_SLACK_WH = 2


@dataclass(frozen=True)
class Cadence:
    """How often one meter's readings go to the chain.

    A reading is forwarded once the counter grew by `step_wh` and `interval` seconds passed
    since the last one forwarded; an unchanged counter still goes every `heartbeat` seconds,
    so the chain sees a live meter (a heartbeat mints and settles nothing).
    """

    interval: float = 10.0
    step_wh: int = 1
    heartbeat: float = 60.0

    def __post_init__(self) -> None:
        if self.interval < 0 or self.step_wh < 1 or self.heartbeat <= 0:
            raise ValueError("interval must be >= 0, step_wh >= 1 and heartbeat > 0")


@dataclass(frozen=True)
class Verdict:
    """What a READ means: `ok` (may be forwarded) or the reason it may not (relay held open).

    `hold_below` carries a large backward jump forward: readings stay untrusted until the
    counter passes that value again.
    """

    ok: bool
    problem: str | None = None  # a short key, to log each problem once
    message: str | None = None
    hold_below: int | None = None


def judge(counter: int, *, previous: tuple[int, float] | None, chain_wh: int | None,
          rated_w: int | None, now: float, hold_below: int | None) -> Verdict:
    """Judge a counter against the last sane one (`previous` = (counter, when)) and the chain's.

    Backwards by more than a reboot's loss below what the chain holds, or faster than the
    rating allows: the meter is not trusted until it passes those values again.
    """
    reference = previous[0] if previous is not None else (chain_wh or 0)
    if counter < reference:
        hold = hold_below
        if chain_wh is not None and counter < chain_wh and chain_wh - counter > REBOOT_LOSS_WH:
            hold = chain_wh
        return Verdict(False, "back", f"counter went back from {reference} to {counter} Wh; "
                       f"nothing is sent until it passes {max(reference, chain_wh or 0)} Wh",
                       hold)
    if previous is not None and rated_w is not None:
        limit = ABSURD_FACTOR * rated_w * max(0.0, now - previous[1]) / 3600 + ABSURD_SLACK_WH
        if counter - previous[0] > limit:
            return Verdict(False, "jump", f"counter jumped from {previous[0]} to {counter} Wh "
                           f"in {now - previous[1]:.1f} s, more than the rating of {rated_w} W "
                           "allows; reading withheld", hold_below)
    if hold_below is not None:
        if counter <= hold_below:
            return Verdict(False, "hold", f"counter {counter} Wh is more than {REBOOT_LOSS_WH} "
                           f"Wh below the {hold_below} Wh on chain (meter reset or replaced?); "
                           "relay held open until it passes it", hold_below)
        return Verdict(True, hold_below=None)
    return Verdict(True)


def due(cadence: Cadence, *, counter: int, sequence: int, chain_wh: int | None,
        chain_sequence: int | None, forwarded: tuple[int, int, float] | None,
        now: float, prompt: bool = False) -> bool:
    """Whether a sane reading should be forwarded now.

    `forwarded` is the last reading sent (counter, sequence, when); `chain_*` what the
    registry holds (None: the meter has no reading on chain yet, so the first one goes at once).
    `prompt`: a reading is awaited (the buyer asked to close: the next one settles the tail),
    so an unchanged counter goes after `interval`, not `heartbeat`.
    """
    if chain_sequence is not None and sequence <= chain_sequence:
        return False  # the chain has this reading or a newer one
    if forwarded is not None and sequence <= forwarded[1]:
        return False  # already on its way
    if chain_sequence is None and forwarded is None:
        return True
    base = max(chain_wh or 0, forwarded[0] if forwarded is not None else 0)
    since = now - forwarded[2] if forwarded is not None else float("inf")
    if counter - base >= cadence.step_wh or prompt:
        return since >= cadence.interval
    return since >= cadence.heartbeat
