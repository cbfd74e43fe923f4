"""Shared base of RowPruning, HeadPruning and ChannelPruning (structured units on top of BasePruning).

A target here is one :class:`~lightning_compress.core.surgery.UnitGroup` (an FFN projection's
rows, a residual stage's channels, an attention's heads); its mask is a 1-D bool vector over units.
Scores per unit:

* ``"l1"``: mean ``|W|`` over the unit's producer weight slices (weight rows, q/k/v rows), times the
  current unit mask (pruned units score 0, so masks only grow);
* ``"topk"``: movement scores (Sanh et al. 2020) ``S <- S - sum(W * dL/dW)`` over the same slices, once
  per optimizer step with the reduced full gradient; magnitude before the first scored step.

Ranking reuses :func:`lightning_compress.core.patterns.select_pruned_units` with one "layer" per unit
group (``scope="local"``: each group by its own ranking; ``"global"``: one threshold), every group
capped so that at least one unit stays.  Masks are computed from full fp32 tensors on every rank and
broadcast from rank 0 (identical across ranks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from typing_extensions import override

from lightning_compress.callbacks._pruning import BasePruning, PruneGroup, PruneTarget
from lightning_compress.callbacks._steps import is_accumulation_boundary
from lightning_compress.core.criteria import ScoreState
from lightning_compress.core.dist import broadcast_, full_grad, full_param
from lightning_compress.core.patterns import LayerScores, select_pruned_units
from lightning_compress.core.select import apply_exclude
from lightning_compress.core.surgery import UnitGroup, attach_group, expand, sync_group


@dataclass
class UnitTarget(PruneTarget):
    """A PruneTarget whose mask is the unit mask of ``unit_group``."""

    unit_group: UnitGroup | None = None

    @property
    def param(self) -> nn.Parameter:  # the first producer weight (for device / dtype only)
        g = self.unit_group
        assert g is not None
        m = next(m for m in g.members if m.role == "out")
        return m.module._parameters[m.params[0]]  # type: ignore[return-value]

    @property
    def full_shape(self) -> tuple[int, ...]:
        assert self.unit_group is not None
        return (self.unit_group.num_units,)


class StructuredPruning(BasePruning):
    """Base for structured pruners: subclasses implement :meth:`find_groups`."""

    unit_word = "unit"

    def __init__(self, sparsity: float | None = 0.5, method: str = "l1", **kwargs: Any) -> None:
        if method not in ("l1", "magnitude", "topk"):
            raise ValueError(f"{type(self).__name__}: `method`={method!r} must be 'l1' or 'topk' for structured pruning.")
        super().__init__(sparsity=sparsity, method=method, pattern="unstructured", **kwargs)

    # ------------------------------------------------------------------ subclass point
    def find_groups(self, model: nn.Module, group: PruneGroup) -> list[UnitGroup]:
        raise NotImplementedError

    # ------------------------------------------------------------------ BasePruning hooks
    @override
    def build_targets(self, model: nn.Module, group: PruneGroup) -> list[PruneTarget]:
        if group.exclude:  # same check as BasePruning: an exclude regex must match some module
            apply_exclude(model, {}, group.exclude, type(self).__name__)
        ugroups = self.find_groups(model, group)
        self._check_reachable(group, ugroups)
        targets: list[PruneTarget] = []
        for ug in ugroups:
            targets.append(
                UnitTarget(
                    name=ug.name,
                    module=ug.holder,
                    group=group.name,
                    pattern=group.pattern,
                    max_sparsity=self._cap(ug),
                    score=ScoreState("l1", torch.Size([ug.num_units])),
                    mask_buffer=ug.unit_buffer,
                    unit_group=ug,
                )
            )
        return targets

    def _cap(self, ug: UnitGroup) -> float:
        return min(self.max_sparsity_per_layer, (ug.num_units - 1) / ug.num_units)

    def _check_reachable(self, group: PruneGroup, ugroups: list[UnitGroup]) -> None:
        name = type(self).__name__
        s = group.sparsity
        if self.scope == "local":
            for ug in ugroups:
                k = int(round(s * ug.num_units))
                if k >= ug.num_units:
                    raise ValueError(
                        f"{name}: `sparsity`={s} would remove all {ug.num_units} {self.unit_word}s of {ug.name!r} "
                        f"(at least 1 must stay); use sparsity <= {(ug.num_units - 1) / ug.num_units:.3g}."
                    )
        else:
            total = sum(ug.num_units * ug.params_per_unit() for ug in ugroups)
            reach = sum(math.floor(self._cap(ug) * ug.num_units + 1e-9) * ug.params_per_unit() for ug in ugroups)
            if total and s > reach / total + 1e-9:
                small = min(ugroups, key=lambda u: u.num_units)
                raise ValueError(
                    f"{name}: `sparsity`={s} would remove every {self.unit_word} of some layers (at least 1 stays "
                    f"per layer, e.g. {small.name!r} has {small.num_units}); the most reachable is {reach / total:.3g}."
                )

    @override
    def attach(self, target: PruneTarget) -> None:
        assert isinstance(target, UnitTarget) and target.unit_group is not None
        attach_group(target.unit_group, self._owner)

    def _unit_slices(self, ug: UnitGroup, tensor_of) -> torch.Tensor:
        """Sum over producer weight slices of ``tensor_of(param)`` reduced to units; and element counts."""
        total = torch.zeros(ug.num_units, dtype=torch.float64)
        count = 0
        for m in ug.members:
            if m.role != "out" or isinstance(m.module, nn.modules.batchnorm._BatchNorm):
                continue
            p = m.module._parameters.get(m.params[0])
            if p is None:
                continue
            t = tensor_of(p)
            if t is None:
                continue
            t = t.double().cpu()
            per_row = t.reshape(t.shape[0], -1).sum(dim=1) if m.dim == 0 else t.transpose(0, m.dim).reshape(t.shape[m.dim], -1).sum(1)
            per_unit = per_row.reshape(m.tiles, ug.num_units, m.width).sum(dim=(0, 2))
            total += per_unit
            count += t.numel() // ug.num_units
        return total / max(count, 1)

    @override
    def scores_for(self, target: PruneTarget) -> torch.Tensor:
        assert isinstance(target, UnitTarget) and target.unit_group is not None
        ug = target.unit_group
        units = ug.mask.detach().cpu().double()
        with torch.no_grad():
            if self.method == "topk" and target.score.score is not None and target.score.steps > 0:
                return (target.score.score.double().cpu() * units).float()
            mag = self._unit_slices(ug, lambda p: full_param(p, self._in_engine).abs())
        return (mag * units).float()

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if self.method != "topk" or not is_accumulation_boundary(trainer):
            return
        for t in self.targets:
            assert isinstance(t, UnitTarget) and t.unit_group is not None

            def movement(p: torch.Tensor) -> torch.Tensor | None:
                g = full_grad(p, self._in_engine)
                return None if g is None else full_param(p, self._in_engine) * g

            m = self._unit_slices(t.unit_group, movement)
            if not torch.isfinite(m).all():
                continue
            if t.score.score is None:
                t.score.score = torch.zeros(t.unit_group.num_units, dtype=torch.float64)
            t.score.score = t.score.score.double() - m
            t.score.steps += 1

    @override
    @torch.no_grad()
    def prune_group(self, group: PruneGroup, sparsity: float) -> None:
        layers, scores = [], []
        for t in group.targets:
            assert isinstance(t, UnitTarget) and t.unit_group is not None
            s = self.scores_for(t)
            scores.append(s)
            per = max(t.unit_group.params_per_unit(), 1)
            layers.append(LayerScores(costs=s, unit_elems=per, total_elems=per * t.unit_group.num_units, max_sparsity=t.max_sparsity))
        pruned = select_pruned_units(layers, sparsity, self.scope)
        for t, pu in zip(group.targets, pruned):
            assert isinstance(t, UnitTarget) and t.unit_group is not None
            keep = (~pu).to(t.mask.device)
            if not keep.any():  # never empty a layer
                keep[int(torch.argmax(scores[group.targets.index(t)]))] = True
            broadcast_(keep, 0)
            t.mask.copy_(keep)
            sync_group(t.unit_group)

    @override
    def sparsity_stats(self) -> dict[str, float]:
        """Fraction of units removed, weighted by parameters per unit; per group too."""
        stats: dict[str, float] = {}
        total = gone = 0.0
        for group in self.groups:
            g_total = g_gone = 0.0
            for t in group.targets:
                assert isinstance(t, UnitTarget) and t.unit_group is not None
                per = t.unit_group.params_per_unit()
                g_total += per * t.unit_group.num_units
                g_gone += per * int((~t.mask).sum())
            total += g_total
            gone += g_gone
            if len(self.groups) > 1:
                stats[f"sparsity/{group.name}"] = g_gone / max(g_total, 1)
        stats["sparsity"] = gone / max(total, 1)
        return stats

    @override
    def _apply_state(self, state: dict[str, Any]) -> None:
        super()._apply_state(state)
        for t in self.targets:
            assert isinstance(t, UnitTarget) and t.unit_group is not None
            sync_group(t.unit_group)

    def unit_masks(self) -> dict[str, torch.Tensor]:
        """``{group name: bool keep vector over units}``."""
        return self.masks()


def check_selected(owner: str, requested: list[str] | None, found: dict[str, Any], what: str) -> None:
    import re

    for rx in requested or []:
        if not any(re.search(rx, n) for n in found):
            raise ValueError(f"{owner}: `modules` regex {rx!r} matches no {what}; candidates: {sorted(found)[:6]}.")


__all__ = ["StructuredPruning", "UnitTarget", "check_selected", "expand"]
