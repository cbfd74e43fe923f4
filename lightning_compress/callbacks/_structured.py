"""``StructuredPruning``: the base of RowPruning, HeadPruning and ChannelPruning.

A target is one :class:`~lightning_compress.core.surgery.UnitGroup` (an FFN projection's rows, a
residual stage's channels, an attention's heads) wrapped in a
:class:`~lightning_compress.core.pruner_targets.UnitTarget`; its mask is a 1-D bool vector over units.
Subclasses implement :meth:`StructuredPruning.find_groups`; everything else is the same
:class:`~lightning_compress.core.pruner.Pruner` as for weight sparsity, given ``find_groups``.

Scores per unit come from the criteria through one reducer
(:func:`lightning_compress.core.units.unit_reduce`: mean over the unit's producer weight slices):

* ``"l1"``: mean ``|W|`` times the current unit mask (pruned units score 0, so masks only grow);
* ``"topk"``: movement ``S <- S - mean(W * dL/dW)``, once per optimizer step with the reduced full
  gradient; magnitude before the first scored step.

Ranking: one "layer" per unit group (``scope="local"``: each by its own ranking; ``"global"``: one
threshold), every group capped so that at least one unit stays.  Masks are computed from full fp32
tensors on every rank and broadcast from rank 0.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_compress.callbacks._pruning import BasePruning
from lightning_compress.core.criteria import Criterion
from lightning_compress.core.pruner_targets import PruneGroup, UnitTarget
from lightning_compress.core.surgery import UnitGroup
from lightning_compress.core.types import Rounding, StructuredMethodName


class StructuredPruning(BasePruning):
    """Base for structured pruners: subclasses implement :meth:`find_groups` (and set ``unit_word``)."""

    unit_word = "unit"

    def __init__(
        self,
        sparsity: float | None = 0.5,
        method: StructuredMethodName | Criterion = "l1",
        rounding: Rounding = "nearest",
        **kwargs: Any,
    ) -> None:
        #: how each unit group's pruned count is rounded (``"floor"``: ``ceil((1 - sparsity) * n)`` stay)
        self.rounding = rounding
        super().__init__(sparsity=sparsity, method=method, pattern="unstructured", **kwargs)

    def pruner_options(self) -> dict[str, Any]:
        return {"find_groups": self.find_groups, "unit_word": self.unit_word, "rounding": self.rounding}

    # ------------------------------------------------------------------ subclass point
    def find_groups(self, model: nn.Module, group: PruneGroup) -> list[UnitGroup]:
        """The unit groups of ``model`` selected by ``group.modules`` / ``group.exclude``."""
        raise NotImplementedError


__all__ = ["StructuredPruning", "UnitTarget"]
