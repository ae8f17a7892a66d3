"""The client's packed `reportBatch` on the in-process chain: each item judged on its own."""

from __future__ import annotations

from dataclasses import replace

from tests.support import SigningMeter


def test_a_packed_batch_records_good_readings_and_skips_bad_ones(world):
    client = world.client
    owner = world.account()
    meters = [SigningMeter() for _ in range(3)]
    for meter in meters:
        meter.offer_to(client, world.operator, owner)
    domain = client.reading_domain()
    baselines = [meter.sign(domain, 1_000 * (i + 1)) for i, meter in enumerate(meters)]
    outcomes = client.reading_outcomes(client.submit_readings(world.operator, baselines))
    assert [outcomes[(r.meter, r.sequence)].accepted for r in baselines] == [True] * 3

    good, forged, short = (meter.sign(domain) for meter in meters)  # heartbeats
    forged = replace(forged, signature=good.signature)  # another meter's signature
    short = replace(short, signature=short.signature[:64])  # its v lost
    batch = [good, forged, short]
    outcomes = client.reading_outcomes(client.submit_readings(world.operator, batch))
    assert [(o.accepted, o.reason) for o in (outcomes[(r.meter, r.sequence)] for r in batch)] == [
        (True, None), (False, "MeterSignatureInvalid"), (False, "MeterSignatureInvalid"),
    ]
    assert [client.meter(m.address).sequence for m in meters] == [2, 1, 1]
