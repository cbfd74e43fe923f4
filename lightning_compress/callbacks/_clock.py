"""``ScheduleClock``: a callback's schedule position, in optimizer steps counted across fits of one model.

Within one ``fit`` (resumed or not) the position is ``trainer.global_step``.  A second ``fit`` of the
same model (a new Trainer starts again at ``global_step`` 0) continues where the first one stopped:
the position is ``offset + trainer.global_step`` with ``offset`` = the steps done before this fit.
So a schedule that finished stays finished and one that did not goes on from where it was; it never
goes back (re-running prune events at lower sparsity, or quantizing at an earlier width).

* :meth:`now` maps ``trainer.global_step`` to the position and records it in ``seen``; the callbacks
  call it at every batch start and end (after the optimizer step), so ``seen`` is the optimizer steps
  done on the model whenever a checkpoint is written.
* :meth:`start` at ``on_train_start`` (after a checkpoint was restored): ``offset = max(0, seen -
  global_step)``: 0 for a first fit or a second ``fit`` of the same Trainer (``global_step`` goes on),
  the checkpoint's offset for a resumed fit (``global_step`` and ``seen`` both restored), the steps
  done before for a new Trainer.
* :meth:`reset` when the callback is re-targeted to another model; :meth:`state_dict` /
  :meth:`load_state_dict` carry ``seen`` through checkpoints.
"""

from __future__ import annotations

from typing import Any


class ScheduleClock:
    """Maps ``trainer.global_step`` to optimizer steps done on the model across fits (see module docstring)."""

    def __init__(self) -> None:
        self.offset = 0
        #: the largest position seen so far (optimizer steps done on the model)
        self.seen = 0

    def start(self, global_step: int) -> int:
        """Fix ``offset`` for the fit that starts at ``global_step``; returns it."""
        self.offset = max(0, self.seen - int(global_step))
        return self.offset

    def now(self, global_step: int) -> int:
        """The position when ``global_step`` optimizer steps of this fit are done."""
        pos = self.offset + int(global_step)
        self.seen = max(self.seen, pos)
        return pos

    def reset(self) -> None:
        self.offset, self.seen = 0, 0

    def state_dict(self) -> dict[str, int]:
        return {"offset": self.offset, "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore ``seen`` (``offset`` is recomputed by :meth:`start` from the restored global step)."""
        if state:
            self.seen = int(state.get("seen", 0))


__all__ = ["ScheduleClock"]
