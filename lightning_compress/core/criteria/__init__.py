"""Pruning criteria: scores that rank weights (higher = more important = kept longer).

Every score is an fp32 tensor of the weight's shape, updated once per optimizer step (at the
gradient-accumulation boundary, with the reduced gradient), never per micro-batch.

* ``l1`` / ``magnitude`` (:mod:`.magnitude`): ``|W * mask|`` at the prune event.
* ``snip``, ``snip_momentum`` (:mod:`.snip`): ``|W * dL/dW|``; ``S <- 0.9 S + |W * dL/dW|``.
* ``topk`` (:mod:`.topk`): learned movement scores with a straight-through estimator.

:class:`~.base.Criterion` is the extension point; :data:`~.base.CRITERIA` maps names to classes and
:func:`~.base.resolve_criterion` turns a ``method`` argument (name, object or class) into an object.
Every module of this package is imported here, so a new file with a ``@register_criterion`` class is
picked up without editing anything else.
"""

from __future__ import annotations

import importlib
import pkgutil

from lightning_compress.core.criteria.base import CRITERIA, Criterion, ScoreState, register_criterion, resolve_criterion
from lightning_compress.core.criteria.magnitude import Magnitude
from lightning_compress.core.criteria.snip import MOMENTUM, Snip, SnipMomentum
from lightning_compress.core.criteria.topk import TopK, TopKMaskSTE

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
    "CRITERIA", "MOMENTUM", "Criterion", "Magnitude", "ScoreState", "Snip", "SnipMomentum", "TopK", "TopKMaskSTE",
    "register_criterion", "resolve_criterion",
]
