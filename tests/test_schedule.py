from __future__ import annotations

import math

import pytest

from lightning_compress.core.schedule import SparsitySchedule, sparsity_at_event


@pytest.mark.parametrize("kind", ["exp", "cos", "linear", "cubic"])
def test_schedule_reaches_final_and_is_monotone(kind):
    sched = SparsitySchedule(final=0.9, kind=kind, start_step=10, end_step=100, frequency=10)
    targets = [sched.target(k) for k in range(1, sched.num_events + 1)]
    assert targets[-1] == pytest.approx(0.9)
    assert all(b >= a - 1e-12 for a, b in zip(targets, targets[1:]))
    assert 0 < targets[0] < 0.9


def test_formulas_match_design():
    s0, sf, k, T = 0.1, 0.9, 3, 10
    assert sparsity_at_event("exp", k, T, sf, s0) == pytest.approx(1 - (1 - s0) * ((1 - sf) / (1 - s0)) ** (k / T))
    assert sparsity_at_event("cos", k, T, sf, s0) == pytest.approx(s0 + (sf - s0) * (1 - math.cos(math.pi * k / (2 * T))))
    assert sparsity_at_event("linear", k, T, sf, s0) == pytest.approx(s0 + (sf - s0) * k / T)
    assert sparsity_at_event("cubic", k, T, sf, s0) == pytest.approx(sf + (s0 - sf) * (1 - k / T) ** 3)


@pytest.mark.parametrize("start,end,freq", [(0, 0, 1), (0, 9, 1), (5, 17, 4), (3, 30, 3), (2, 2, 5)])
def test_events_due_matches_event_list(start, end, freq):
    sched = SparsitySchedule(final=0.5, start_step=start, end_step=end, frequency=freq)
    steps = sched.event_steps
    assert steps[0] == start and steps[-1] == end
    for step in range(0, end + 5):
        assert sched.events_due(step) == sum(1 for s in steps if s <= step)
    assert sched.num_events == len(steps)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(final=1.0), r"`sparsity`=1.0 must be in \[0, 1\)"),
        (dict(final=0.5, start_step=10, end_step=5), r"`end_step`=5 is before `start_step`=10"),
        (dict(final=0.5, kind="quadratic"), r"`schedule`='quadratic' is unknown"),
        (dict(final=0.5, frequency=0), r"`frequency`=0 must be >= 1"),
    ],
)
def test_schedule_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparsitySchedule(**kwargs)
