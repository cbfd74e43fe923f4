"""Optimizer-step counting and accumulation boundaries, right under every strategy.

* Plain Trainer / DDP: ``trainer.global_step`` counts optimizer steps, and Lightning calls
  ``on_before_optimizer_step`` only at accumulation boundaries.
* DeepSpeed: Lightning hands accumulation to the engine and every micro-batch runs
  ``on_before_optimizer_step``; the boundary is ``engine.is_gradient_accumulation_boundary()``.
  ``trainer.global_step`` still counts real optimizer steps (measured with Lightning 2.6.6 /
  DeepSpeed 0.19.8, 2 CPU ranks, ``accumulate_grad_batches=2``: 8 micro-batches -> global_step 4,
  equal to the engine's ``global_steps``), and it is what a checkpoint restores.
"""

from __future__ import annotations

from typing import Any


def deepspeed_engine(trainer: Any) -> Any | None:
    """The DeepSpeed engine driving ``trainer`` (None under any other strategy)."""
    model = getattr(trainer, "model", None)
    if model is None:
        return None
    try:
        from deepspeed import DeepSpeedEngine
    except Exception:  # deepspeed missing or broken: certainly no engine
        return None
    return model if isinstance(model, DeepSpeedEngine) else None


def optimizer_step_count(trainer: Any) -> int:
    """Optimizer steps done so far (``trainer.global_step``, see module docstring)."""
    return int(trainer.global_step)


def is_accumulation_boundary(trainer: Any) -> bool:
    """True when the current backward ends an accumulation window (the optimizer will step)."""
    engine = deepspeed_engine(trainer)
    if engine is not None:
        return bool(engine.is_gradient_accumulation_boundary())
    return True


def total_optimizer_steps(trainer: Any) -> int | None:
    """Optimizer steps this fit will run, when known (``trainer.estimated_stepping_batches``)."""
    try:
        total = trainer.estimated_stepping_batches
    except Exception:
        return None
    if total is None or total == float("inf"):
        return None
    return int(total)
