"""CoDel (mt6d_mp.core.aqm): the drop decision for bulk messages, driven by a made-up clock."""

from __future__ import annotations

import itertools
import math

import pytest

from mt6d_mp.core.aqm import CoDel

TARGET, INTERVAL = 0.005, 0.1
STEP = 0.001  # a message every millisecond


def run(codel: CoDel, waits: list[float], start: float = 0.0) -> list[float]:
    """Feed one message per STEP with the given waits; the times of those dropped."""
    dropped = []
    for i, wait in enumerate(waits):
        now = start + i * STEP
        if not codel.admit(wait, now):
            dropped.append(now)
    return dropped


def test_a_queue_within_target_or_above_it_briefly_loses_nothing() -> None:
    codel = CoDel(TARGET, INTERVAL)
    assert run(codel, [0.004] * 1000) == []
    # Above target for just under an interval, then below: a burst, not a standing queue.
    assert run(codel, [0.050] * 99 + [0.001] + [0.050] * 99, start=1.0) == []
    assert codel.dropped == 0


def test_a_standing_queue_is_dropped_from_ever_more_often_until_it_goes() -> None:
    codel = CoDel(TARGET, INTERVAL)
    dropped = run(codel, [0.020] * 1000)  # one second above target
    # The first drop an interval after the wait first exceeded the target...
    assert dropped[0] == pytest.approx(INTERVAL, abs=STEP / 2)
    # ...then the n-th interval / sqrt(n) after the one before, to the message's resolution.
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(dropped)]
    for n, gap in enumerate(gaps, start=1):
        assert gap == pytest.approx(INTERVAL / math.sqrt(n), abs=STEP)
    assert gaps == sorted(gaps, reverse=True)
    assert codel.dropped == len(dropped) and codel.dropping
    # The wait falls below the target: the dropping state ends at once, nothing more is lost.
    assert run(codel, [0.002] * 500, start=1.0) == []
    assert not codel.dropping


def test_a_queue_back_soon_resumes_at_the_rate_that_worked() -> None:
    """RFC 8289 section 5.5: a dropping state entered again within 16 intervals starts from
    the count the last one reached (less the last state's start), not from one drop."""
    fresh, again = CoDel(TARGET, INTERVAL), CoDel(TARGET, INTERVAL)
    first = run(again, [0.020] * 1000)
    run(again, [0.002] * 50, start=1.0)  # a short lull
    resumed = run(again, [0.020] * 400, start=1.05)
    from_scratch = run(fresh, [0.020] * 400, start=1.05)
    assert len(first) > 5
    assert len(resumed) > len(from_scratch)
    # Long after, it starts from scratch again.
    late = CoDel(TARGET, INTERVAL)
    run(late, [0.020] * 1000)
    run(late, [0.002] * 10, start=1.0)
    assert len(run(late, [0.020] * 400, start=10.0)) == len(from_scratch)


@pytest.mark.parametrize(("target", "interval"), [(0, 0.1), (-0.001, 0.1), (0.1, 0.1), (0.2, 0.1)])
def test_nonsense_parameters_are_refused(target: float, interval: float) -> None:
    with pytest.raises(ValueError, match="target < interval"):
        CoDel(target, interval)
