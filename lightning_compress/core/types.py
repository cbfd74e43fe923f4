"""The option names every compression signature shares, spelled once (``Literal`` so LightningCLI
validates them).

* :data:`MethodName`: the built-in pruning criteria (:mod:`lightning_compress.core.criteria`); every
  ``method`` argument also accepts a :class:`~lightning_compress.core.criteria.Criterion` object (or
  class) and, from Python, the name of any criterion registered with ``register_criterion``.
* :data:`StructuredMethodName`: the criteria structured pruning (rows, heads, channels) accepts.
* :data:`ScheduleName`: sparsity schedules (:mod:`lightning_compress.core.schedule`); ``"constant"``
  = the final sparsity at every event (masks recomputed at that ratio each event, DeepSpeed's topk).
* :data:`Scope`: ``"global"`` = one ranking over all targeted layers of a group, ``"local"`` = per layer.
"""

from __future__ import annotations

from typing import Literal

MethodName = Literal["l1", "magnitude", "topk", "snip", "snip_momentum"]
StructuredMethodName = Literal["l1", "magnitude", "topk"]
ScheduleName = Literal["exp", "cos", "linear", "cubic", "constant"]
Scope = Literal["global", "local"]
#: how a local pruned-unit count ``sparsity * n`` becomes an integer: ``"nearest"`` (round) or
#: ``"floor"`` (so ``ceil((1 - sparsity) * n)`` units stay: DeepSpeed's TopKBinarizer)
Rounding = Literal["nearest", "floor"]

__all__ = ["MethodName", "Rounding", "ScheduleName", "Scope", "StructuredMethodName"]
