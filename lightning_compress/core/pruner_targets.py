"""What a :class:`~lightning_compress.core.pruner.Pruner` prunes: groups of targets, each target one
mask with the same small interface, so the pruner never asks which kind it holds.

* :class:`WeightTarget` (alias ``PruneTarget``): one weight, a bool mask of the weight's full shape
  (a non-persistent buffer), units from its :class:`~lightning_compress.core.patterns.Pattern`, scores
  from the criterion per weight.  The forward transform is the criterion's (``weight * mask``, or
  ``topk``'s straight-through accumulator).
* :class:`UnitTarget`: one :class:`~lightning_compress.core.surgery.UnitGroup` (an FFN projection's rows,
  a residual stage's channels, an attention's heads); its mask is the 1-D bool unit vector; per-weight
  scores and signals are reduced to units by :func:`lightning_compress.core.units.unit_reduce`; a unit
  zeroes ``params_per_unit`` parameters; at least one unit always stays.

Interface (all full fp32 tensors, identical on every rank; masks broadcast from rank 0):
``attach(owner, kind)``, ``detach(owner)``, ``touched()``, ``update(grad_fn, in_engine)`` (one optimizer
step), ``layer_scores(in_engine, costs_out=None)`` (-> :class:`~lightning_compress.core.ranking.LayerScores`,
aux; ``costs_out``: a flat fp32 slice of the prune event's reusable cost buffer to write the unit costs
into), ``apply_pruned(pruned_units, aux)`` (writes the mask buffer in place), ``load_mask(mask)``,
``numel()``, ``pruned()`` and ``pruned_count()`` (the same as a 0-dim int64 tensor, no host sync).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from lightning_compress.core import masking
from lightning_compress.core.criteria import Criterion, ScoreState
from lightning_compress.core.dist import broadcast_, full_param
from lightning_compress.core.patterns import Pattern, as_2d
from lightning_compress.core.ranking import LayerScores
from lightning_compress.core.surgery import UnitGroup, attach_group, detach_group, sync_group
from lightning_compress.core.units import unit_reduce

GradFn = Callable[[nn.Parameter], "torch.Tensor | None"]


@dataclass
class WeightTarget:
    """One pruned weight.  ``mask_buffer`` is a non-persistent bool buffer of the weight's shape."""

    name: str
    module: nn.Module
    group: str
    pattern: Pattern
    max_sparsity: float
    score: ScoreState
    param_name: str = "weight"
    mask_buffer: str = masking.private_name("mask")
    #: the weight is stored ``[in, out]`` (Hugging Face ``Conv1D``): scores, pattern units and masks
    #: are laid out on its ``[out, in]`` transpose, as for a Linear
    transposed: bool = False

    @property
    def criterion(self) -> Criterion:
        return self.score.criterion

    @property
    def param(self) -> nn.Parameter:
        return self.module._parameters[self.param_name]  # type: ignore[return-value]

    @property
    def full_shape(self) -> tuple[int, ...]:
        p = self.param
        return tuple(getattr(p, "ds_shape", p.shape))

    @property
    def pattern_shape(self) -> tuple[int, ...]:
        """The weight's shape as the pattern sees it (``[out, in]``; a ``Conv1D``'s transposed)."""
        shape = self.full_shape
        return (shape[1], shape[0]) if self.transposed else shape

    @property
    def mask(self) -> torch.Tensor:
        return getattr(self.module, self.mask_buffer)

    # ------------------------------------------------------------------ machinery
    def attach(self, owner: str, kind: str) -> None:
        """Register the all-ones mask buffer and the criterion's forward transform."""
        module = self.module
        if getattr(module, self.mask_buffer, None) is None:
            module.register_buffer(
                self.mask_buffer, torch.ones(self.full_shape, dtype=torch.bool, device=self.param.device), persistent=False
            )
        masking.add_param_transform(
            module, self.param_name, owner, self.criterion.forward_transform(self.score, self.mask_buffer),
            kind=kind, priority=masking.MASK_PRIORITY, module_name=self.name,
        )

    def detach(self, owner: str) -> None:
        masking.remove_owner(self.module, owner)
        self.module._buffers.pop(self.mask_buffer, None)

    def touched(self) -> dict[str, nn.Module]:
        return {self.name: self.module}

    # ------------------------------------------------------------------ scores
    def update(self, grad_fn: GradFn, in_engine: bool) -> None:
        crit = self.criterion
        if crit.needs_grad:
            grad = grad_fn(self.param)
            weight = full_param(self.param)
            crit.update(self.score, weight, grad)
        else:
            crit.update(self.score, None, None)

    @torch.no_grad()
    def layer_scores(self, in_engine: bool, costs_out: torch.Tensor | None = None) -> tuple[LayerScores, torch.Tensor]:
        def effective() -> torch.Tensor:
            weight = full_param(self.param)
            return masking.apply_mask(weight, self.mask.to(weight.device))

        score = self.criterion.score(self.score, effective)
        s2d = as_2d(score.t() if self.transposed else score)
        costs = self.pattern.unit_costs(s2d) if costs_out is None else self.pattern.unit_costs_into(s2d, costs_out)
        layer = LayerScores(costs, self.pattern.unit_elems(self.pattern_shape), s2d.numel(), self.max_sparsity)
        return layer, s2d

    @torch.no_grad()
    def apply_pruned(self, pruned_units: torch.Tensor, aux: torch.Tensor) -> None:
        """Write the keep-mask of ``pruned_units`` into the mask buffer (in place; a ``Conv1D``'s
        through its transposed view), then broadcast it from rank 0."""
        self.pattern.mask_into(pruned_units, self.pattern_shape, aux, self.mask.t() if self.transposed else self.mask)
        broadcast_(self.mask, 0)

    @torch.no_grad()
    def load_mask(self, mask: torch.Tensor) -> None:
        self.mask.copy_(mask.to(self.mask.device))

    def numel(self) -> float:
        return self.mask.numel()

    def pruned_count(self) -> torch.Tensor:
        """Zeroed weights (0-dim int64 tensor on the mask's device)."""
        return self.mask.numel() - torch.count_nonzero(self.mask)

    def pruned(self) -> float:
        return int(self.pruned_count())


PruneTarget = WeightTarget


@dataclass
class UnitTarget:
    """One unit group; ``mask`` is its bool keep vector over units (see the module docstring)."""

    name: str
    unit_group: UnitGroup
    group: str
    max_sparsity: float
    score: ScoreState

    @property
    def criterion(self) -> Criterion:
        return self.score.criterion

    @property
    def module(self) -> nn.Module:
        return self.unit_group.holder

    @property
    def mask_buffer(self) -> str:
        return self.unit_group.unit_buffer

    @property
    def param(self) -> nn.Parameter:
        """The first producer weight (for device / dtype only)."""
        m = next(m for m in self.unit_group.members if m.role == "out")
        return m.module._parameters[m.params[0]]  # type: ignore[return-value]

    @property
    def full_shape(self) -> tuple[int, ...]:
        return (self.unit_group.num_units,)

    @property
    def mask(self) -> torch.Tensor:
        return self.unit_group.mask

    # ------------------------------------------------------------------ machinery
    def attach(self, owner: str, kind: str) -> None:
        attach_group(self.unit_group, owner)

    def detach(self, owner: str) -> None:
        detach_group(self.unit_group, owner)

    def touched(self) -> dict[str, nn.Module]:
        return {m.name: m.module for m in self.unit_group.members if m.masked}

    # ------------------------------------------------------------------ scores
    def update(self, grad_fn: GradFn, in_engine: bool) -> None:
        """One optimizer step: the criterion's per-weight signal, reduced to units, folded in."""
        crit = self.criterion
        if not crit.learns:
            return

        def signal(p: nn.Parameter) -> torch.Tensor | None:
            g = grad_fn(p)
            return None if g is None else crit.signal(full_param(p, in_engine), g)

        reduced = unit_reduce(self.unit_group, signal)
        if not torch.isfinite(reduced).all():
            return
        crit.accumulate(self.score, reduced)

    @torch.no_grad()
    def layer_scores(self, in_engine: bool, costs_out: torch.Tensor | None = None) -> tuple[LayerScores, torch.Tensor]:
        """Unit scores times the unit mask (pruned units score 0, so masks only grow)."""
        ug = self.unit_group
        units = ug.mask.detach().cpu().double()
        crit = self.criterion
        if crit.has_score(self.score) and self.score.steps > 0:
            assert self.score.score is not None
            s = (self.score.score.double().cpu() * units).float()
        else:
            s = (unit_reduce(ug, lambda p: crit.weight_score(full_param(p, in_engine))) * units).float()
        per = max(ug.params_per_unit(), 1)
        costs = s if costs_out is None else costs_out.copy_(s)
        return LayerScores(costs=costs, unit_elems=per, total_elems=per * ug.num_units, max_sparsity=self.max_sparsity), s

    @torch.no_grad()
    def apply_pruned(self, pruned_units: torch.Tensor, aux: torch.Tensor) -> None:
        keep = (~pruned_units).to(self.mask.device)
        if not keep.any():  # never empty a layer
            keep[int(torch.argmax(aux))] = True
        broadcast_(keep, 0)
        self.mask.copy_(keep)
        sync_group(self.unit_group)

    @torch.no_grad()
    def load_mask(self, mask: torch.Tensor) -> None:
        self.mask.copy_(mask.to(self.mask.device))
        sync_group(self.unit_group)

    def numel(self) -> float:
        return float(self.unit_group.params_per_unit() * self.unit_group.num_units)

    def pruned_count(self) -> torch.Tensor:
        """Parameters of removed units (0-dim int64 tensor on the mask's device)."""
        return (self.mask.numel() - torch.count_nonzero(self.mask)) * self.unit_group.params_per_unit()

    def pruned(self) -> float:
        return float(self.unit_group.params_per_unit() * int((~self.mask).sum()))


Target = WeightTarget | UnitTarget


def pruned_counts(targets: "list[Target]") -> list[int]:
    """Each target's pruned parameter count (``pruned_count``), read with one host sync."""
    if not targets:
        return []
    counts = [t.pruned_count() for t in targets]
    device = counts[0].device
    return [int(c) for c in torch.stack([c.to(device) for c in counts]).tolist()]


@dataclass
class PruneGroup:
    """Targets ranked and scheduled together.

    Args:
        name: group name (``"default"`` without ``groups``).
        sparsity: final fraction pruned (weights; for unit groups, parameters of removed units).
        modules / exclude: regexes selecting the targets (``None`` modules = the pruner's default).
        pattern: pattern of the group's weight targets.
    """

    name: str
    sparsity: float
    modules: list[str] | None
    exclude: list[str] | None
    pattern: Pattern
    schedule: Any = None
    targets: list[Any] = field(default_factory=list)
    events_done: int = 0
    #: the prune events' reusable cost / result buffers (:class:`~lightning_compress.core.ranking.RankBuffers`)
    #: while more events are due; None otherwise
    buffers: Any = None


__all__ = ["PruneGroup", "PruneTarget", "Target", "UnitTarget", "WeightTarget", "pruned_counts"]
