"""Sparsity (and bit) schedules over optimizer steps.

Steps are optimizer steps (``trainer.global_step`` under a plain Trainer; real DeepSpeed optimizer
steps under DeepSpeed, see :mod:`lightning_compress.callbacks._steps`).  Prune events happen at steps
``start_step, start_step + frequency, ...`` and always at ``end_step``; with ``start_step == end_step``
there is one event (one-shot).  Event ``k`` (1-based, ``k = 1..T``) sets the target sparsity

* ``exp``:    1 - (1 - s0) * ((1 - s_f) / (1 - s0)) ** (k / T)
* ``cos``:    s0 + (s_f - s0) * (1 - cos(pi * k / (2 T)))
* ``linear``: s0 + (s_f - s0) * k / T
* ``cubic``:  s_f + (s0 - s_f) * (1 - k / T) ** 3     (Zhu & Gupta, fast start)
* ``constant``: s_f at every event (the masks are recomputed at the final ratio at each event:
  DeepSpeed's ``topk``, whose mask is the top-k of the scores at every step after the offset)

so the last event reaches ``s_f`` exactly.  An event "at step t" runs once ``t`` optimizer steps are
done, before the ``t+1``-th step's forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

from lightning_compress.core.types import ScheduleName

SCHEDULES: tuple[str, ...] = get_args(ScheduleName)


def sparsity_at_event(kind: str, k: int, total: int, final: float, initial: float = 0.0) -> float:
    """Target sparsity after event ``k`` of ``total`` (``k`` in ``0..total``; 0 gives ``initial``)."""
    if total <= 0:
        return final
    r = min(max(k / total, 0.0), 1.0)
    if kind == "exp":
        if initial >= 1.0:
            return initial
        return 1.0 - (1.0 - initial) * ((1.0 - final) / (1.0 - initial)) ** r
    if kind == "cos":
        return initial + (final - initial) * (1.0 - math.cos(math.pi * r / 2.0))
    if kind == "linear":
        return initial + (final - initial) * r
    if kind == "cubic":
        return final + (initial - final) * (1.0 - r) ** 3
    if kind == "constant":
        return final if k > 0 else initial
    raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")


@dataclass(frozen=True)
class SparsitySchedule:
    """Target sparsity as a function of the optimizer step.

    Args:
        final: sparsity reached at ``end_step`` (fraction of weights zeroed, in [0, 1)).
        kind: ``exp`` | ``cos`` | ``linear`` | ``cubic`` (formulas in the module docstring).
        start_step: optimizer step of the first event.
        end_step: optimizer step of the last event (>= ``start_step``).
        frequency: optimizer steps between events (>= 1).
        initial: sparsity before the first event (``s0``).
    """

    final: float
    kind: str = "exp"
    start_step: int = 0
    end_step: int = 0
    frequency: int = 1
    initial: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"`schedule`={self.kind!r} is unknown; choose one of {SCHEDULES}.")
        if not 0.0 <= self.final < 1.0:
            raise ValueError(f"`sparsity`={self.final} must be in [0, 1) (the fraction of weights zeroed).")
        if self.start_step < 0:
            raise ValueError(f"`start_step`={self.start_step} must be >= 0.")
        if self.end_step < self.start_step:
            raise ValueError(
                f"`end_step`={self.end_step} is before `start_step`={self.start_step}; "
                f"set end_step >= start_step (or leave it None for the end of training)."
            )
        if self.frequency < 1:
            raise ValueError(f"`frequency`={self.frequency} must be >= 1 optimizer step.")

    @property
    def num_events(self) -> int:
        return self.events_due(self.end_step)

    @property
    def event_steps(self) -> list[int]:
        steps = list(range(self.start_step, self.end_step + 1, self.frequency))
        if steps[-1] != self.end_step:
            steps.append(self.end_step)
        return steps

    def target(self, event_index: int) -> float:
        """Sparsity after event ``event_index`` (1-based)."""
        return sparsity_at_event(self.kind, event_index, self.num_events, self.final, self.initial)

    def events_due(self, step: int) -> int:
        """How many events are due once ``step`` optimizer steps are done (O(1))."""
        if step < self.start_step:
            return 0
        on_grid = (min(step, self.end_step) - self.start_step) // self.frequency + 1
        off_grid_end = (self.end_step - self.start_step) % self.frequency != 0
        return on_grid + (1 if off_grid_end and step >= self.end_step else 0)
