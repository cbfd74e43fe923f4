"""``BasePruning``: what every pruning callback shares (arguments, schedule, steps, state, logging).

Subclasses (SparsePruning, RowPruning, HeadPruning, ChannelPruning) differ in which modules they
target by default, the pattern that turns scores into masks, and which tensors a mask zeroes.

Timeline (steps = optimizer steps, see :mod:`lightning_compress.callbacks._steps`):

* ``setup(stage="fit")``: resolve targets, check patterns, wrap modules with all-ones masks
  (before ``deepspeed.initialize``).
* ``on_train_start``: resolve ``end_step=None`` to the last optimizer step of the fit.
* ``on_before_optimizer_step`` at an accumulation boundary: update gradient-based scores with the
  reduced, full gradient.
* ``on_train_batch_start``: if a prune event is due (``schedule.events_due(step)`` grew), compute the
  new masks for the latest due event, broadcast them from rank 0, log the sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from typing_extensions import override

from lightning_compress.callbacks._steps import (
    deepspeed_engine,
    is_accumulation_boundary,
    optimizer_step_count,
    total_optimizer_steps,
)
from lightning_compress.core import masking
from lightning_compress.core.criteria import ScoreState, TopKMaskSTE, check_method
from lightning_compress.core.dist import all_reduce_mean_, broadcast_, full_grad, full_param
from lightning_compress.core.patterns import LayerScores, Pattern, as_2d, parse_pattern, select_pruned_units
from lightning_compress.core.schedule import SCHEDULES, SparsitySchedule
from lightning_compress.core.select import apply_exclude, select_modules

Scope = Literal["global", "local"]
ScheduleName = Literal["exp", "cos", "linear", "cubic"]


@dataclass
class PruneTarget:
    """One pruned weight.  ``mask_buffer`` is a non-persistent bool buffer of the weight's shape."""

    name: str
    module: nn.Module
    group: str
    pattern: Pattern
    max_sparsity: float
    score: ScoreState
    param_name: str = "weight"
    mask_buffer: str = "_lc_mask"

    @property
    def param(self) -> nn.Parameter:
        return self.module._parameters[self.param_name]  # type: ignore[return-value]

    @property
    def full_shape(self) -> tuple[int, ...]:
        p = self.param
        return tuple(getattr(p, "ds_shape", p.shape))

    @property
    def mask(self) -> torch.Tensor:
        return getattr(self.module, self.mask_buffer)


@dataclass
class PruneGroup:
    name: str
    sparsity: float
    modules: list[str] | None
    exclude: list[str] | None
    pattern: Pattern
    schedule: SparsitySchedule | None = None
    targets: list[PruneTarget] = field(default_factory=list)
    events_done: int = 0


class BasePruning(Callback):
    """Shared machinery; use a subclass.

    Args:
        sparsity: fraction of the targeted weights zeroed at ``end_step`` (in [0, 1)).
        method: score: ``"l1"`` (magnitude), ``"topk"`` (learned movement scores), ``"snip"`` or
            ``"snip_momentum"`` (see :mod:`lightning_compress.core.criteria`).
        pattern: structure of what is pruned at once (see :mod:`lightning_compress.core.patterns`).
        schedule: ``"exp"`` | ``"cos"`` | ``"linear"`` | ``"cubic"`` (see :mod:`lightning_compress.core.schedule`).
        start_step: optimizer step of the first prune event.
        end_step: optimizer step of the last prune event; ``None`` = the last optimizer step of the fit
            (``trainer.estimated_stepping_batches - 1``).
        frequency: optimizer steps between prune events.
        scope: ``"global"`` (one ranking over all targeted layers of a group) or ``"local"`` (per layer).
        max_sparsity_per_layer: cap on any single layer's sparsity under global ranking.
        modules: regexes over qualified module names (``re.search``); ``None`` = the subclass's default.
        exclude: regexes of modules to leave out.
        groups: ``{name: {"modules": [...], "sparsity": s, "exclude": [...], "pattern": p}}``; each group
            is ranked and scheduled on its own (replaces ``modules``/``exclude``/``sparsity``).
    """

    #: kind of the mask transform (one owner per kind per weight)
    mask_kind: str = "mask"
    #: module types targeted
    target_types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)

    def __init__(
        self,
        sparsity: float | None = 0.5,
        method: Literal["l1", "magnitude", "topk", "snip", "snip_momentum"] = "l1",
        pattern: str = "unstructured",
        schedule: ScheduleName = "exp",
        start_step: int = 0,
        end_step: int | None = None,
        frequency: int = 1,
        scope: Scope = "global",
        max_sparsity_per_layer: float = 0.98,
        modules: list[str] | None = None,
        exclude: list[str] | None = None,
        groups: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.method = check_method(method)
        if schedule not in SCHEDULES:
            raise ValueError(f"{name}: `schedule`={schedule!r} is unknown; choose one of {SCHEDULES}.")
        if scope not in ("global", "local"):
            raise ValueError(f"{name}: `scope`={scope!r} must be 'global' or 'local'.")
        if not 0.0 < max_sparsity_per_layer <= 1.0:
            raise ValueError(f"{name}: `max_sparsity_per_layer`={max_sparsity_per_layer} must be in (0, 1].")
        if isinstance(modules, str):
            modules = [modules]
        if isinstance(exclude, str):
            exclude = [exclude]
        self.pattern = self._parse_pattern(pattern)
        self.schedule_kind = schedule
        self.start_step = int(start_step)
        self.end_step = None if end_step is None else int(end_step)
        self.frequency = int(frequency)
        self.scope = scope
        self.max_sparsity_per_layer = float(max_sparsity_per_layer)
        if self.frequency < 1:
            raise ValueError(f"{name}: `frequency`={frequency} must be >= 1 optimizer step.")
        if self.start_step < 0:
            raise ValueError(f"{name}: `start_step`={start_step} must be >= 0.")
        if self.end_step is not None and self.end_step < self.start_step:
            raise ValueError(
                f"{name}: `end_step`={end_step} is before `start_step`={start_step}; set end_step >= start_step, "
                f"or leave end_step=None to end at the last optimizer step of training."
            )
        self.groups: list[PruneGroup] = []
        if groups:
            if modules is not None:
                raise ValueError(f"{name}: pass either `modules` or `groups`, not both (put the regexes in each group).")
            for gname, spec in groups.items():
                unknown = set(spec) - {"modules", "exclude", "sparsity", "pattern"}
                if unknown:
                    raise ValueError(
                        f"{name}: group {gname!r} has unknown keys {sorted(unknown)}; allowed: modules, exclude, sparsity, pattern."
                    )
                gpattern = self._parse_pattern(spec["pattern"]) if "pattern" in spec else self.pattern
                gmods = spec.get("modules")
                if isinstance(gmods, str):
                    gmods = [gmods]
                gexcl = list(exclude or []) + list(spec.get("exclude") or [])
                self.groups.append(
                    PruneGroup(
                        name=gname,
                        sparsity=self._check_sparsity(spec.get("sparsity", sparsity), gpattern, f"groups[{gname!r}].sparsity"),
                        modules=gmods,
                        exclude=gexcl or None,
                        pattern=gpattern,
                    )
                )
        else:
            self.groups.append(
                PruneGroup(
                    name="default",
                    sparsity=self._check_sparsity(sparsity, self.pattern, "sparsity"),
                    modules=modules,
                    exclude=exclude,
                    pattern=self.pattern,
                )
            )
        self._owner = f"{name}#{id(self):x}"
        self._setup_done = False
        self._resolved_end: int | None = self.end_step
        self._pending_state: dict[str, Any] | None = None
        self._in_engine = False
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ argument checks
    def _parse_pattern(self, pattern: str) -> Pattern:
        try:
            return parse_pattern(pattern)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: {err}") from None

    def _check_sparsity(self, sparsity: float | None, pattern: Pattern, argument: str) -> float:
        name = type(self).__name__
        if sparsity is None:
            return pattern.max_sparsity if pattern.max_sparsity < 1.0 else 0.5
        sparsity = float(sparsity)
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(
                f"{name}: `{argument}`={sparsity} must be in [0, 1): it is the fraction of weights zeroed "
                f"(DeepSpeed's dense_ratio r means sparsity 1 - r)."
            )
        if sparsity > pattern.max_sparsity + 1e-9:
            raise ValueError(
                f"{name}: `{argument}`={sparsity} is more than pattern {pattern.name!r} can reach "
                f"({pattern.max_sparsity:g}); lower it or use another pattern."
            )
        return sparsity

    # ------------------------------------------------------------------ subclass points
    def default_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """Targets when a group gives no ``modules``."""
        return select_modules(model, None, None, self.target_types, owner=type(self).__name__, exclude_last=True)

    def build_targets(self, model: nn.Module, group: PruneGroup) -> list[PruneTarget]:
        """Resolve a group's targets, check that the pattern fits each, attach all-ones masks."""
        owner = type(self).__name__
        if group.modules is None:
            chosen = self.default_modules(model)
            if group.exclude:
                chosen = apply_exclude(model, chosen, group.exclude, owner)
        else:
            chosen = select_modules(model, group.modules, group.exclude, self.target_types, owner=owner)
        targets = []
        for mname, module in chosen.items():
            shape = tuple(getattr(module.weight, "ds_shape", module.weight.shape))
            group.pattern.check(shape, f"{owner} group {group.name!r}, module {mname!r}")
            cap = min(self.max_sparsity_per_layer, group.pattern.max_sparsity)
            targets.append(
                PruneTarget(
                    name=mname,
                    module=module,
                    group=group.name,
                    pattern=group.pattern,
                    max_sparsity=cap,
                    score=ScoreState(self.method, torch.Size(shape), device=module.weight.device),
                    mask_buffer=f"_lc_mask_{self.mask_kind}",
                )
            )
        return targets

    def attach(self, target: PruneTarget) -> None:
        """Register the mask buffer and the forward transform on a target."""
        module = target.module
        if not hasattr(module, target.mask_buffer) or getattr(module, target.mask_buffer) is None:
            module.register_buffer(
                target.mask_buffer,
                torch.ones(target.full_shape, dtype=torch.bool, device=target.param.device),
                persistent=False,
            )
        if self.method == "topk":
            score = target.score
            buf = target.mask_buffer

            def fn(mod: nn.Module, w: torch.Tensor) -> torch.Tensor:
                if not torch.is_grad_enabled() or not w.requires_grad:
                    return masking.apply_mask(w, getattr(mod, buf))
                if score.acc is None or score.acc.device != w.device:
                    score.acc = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
                return TopKMaskSTE.apply(w, getattr(mod, buf), score.acc)

        else:
            fn = masking.mask_transform(target.mask_buffer)
        masking.add_param_transform(
            module,
            target.param_name,
            self._owner,
            fn,
            kind=self.mask_kind,
            priority=masking.MASK_PRIORITY,
            module_name=target.name,
        )

    # ------------------------------------------------------------------ hooks
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            pattern=self.pattern.name,
            method=self.method,
            groups=[(g.name, g.modules, g.exclude, g.sparsity) for g in self.groups],
        )

    @property
    def targets(self) -> list[PruneTarget]:
        return [t for g in self.groups for t in g.targets]

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or self._setup_done:
            return
        seen: dict[str, str] = {}
        for group in self.groups:
            group.targets = self.build_targets(pl_module, group)
            for t in group.targets:
                if t.name in seen:
                    raise ValueError(
                        f"{type(self).__name__}: module {t.name!r} is in groups {seen[t.name]!r} and {group.name!r}; "
                        f"a module may belong to one group only: tighten the groups' `modules`/`exclude`."
                    )
                seen[t.name] = group.name
        for t in self.targets:
            self.attach(t)
        self._setup_done = True
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            self._pending_state = None

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._in_engine = deepspeed_engine(trainer) is not None
        end = self.end_step
        if end is None:
            total = total_optimizer_steps(trainer)
            if total is None:
                raise ValueError(
                    f"{type(self).__name__}: `end_step` is None and the number of optimizer steps is unknown "
                    f"(max_steps=-1 with an unsized dataloader); pass `end_step`."
                )
            end = max(self.start_step, total - 1)
        self._resolved_end = end
        for group in self.groups:
            group.schedule = SparsitySchedule(
                final=group.sparsity,
                kind=self.schedule_kind,
                start_step=self.start_step,
                end_step=end,
                frequency=self.frequency,
            )

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if not is_accumulation_boundary(trainer):
            return
        step = optimizer_step_count(trainer)
        if self._resolved_end is not None and step > self._resolved_end and self.method != "topk":
            return  # no more events: stop paying for scores
        for t in self.targets:
            if t.score.method == "topk":
                if t.score.acc is not None:
                    all_reduce_mean_(t.score.acc)
                t.score.update(None, None)
            elif t.score.needs_grad:
                grad = full_grad(t.param, self._in_engine)
                weight = full_param(t.param)
                t.score.update(weight, grad)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.maybe_prune(trainer, pl_module)

    def maybe_prune(self, trainer: Trainer, pl_module: LightningModule | None = None) -> bool:
        """Run the latest due prune event, if any.  Returns True when masks changed."""
        step = optimizer_step_count(trainer)
        changed = False
        for group in self.groups:
            assert group.schedule is not None, "on_train_start resolves the schedule"
            due = group.schedule.events_due(step)
            if due <= group.events_done:
                continue
            if not all(t.score.ready() for t in group.targets):
                continue  # gradient criteria: wait for the first scored optimizer step
            self.prune_group(group, group.schedule.target(due))
            group.events_done = due
            changed = True
        if changed:
            stats = self.sparsity_stats()
            self.history.append({"step": step, **stats})
            if pl_module is not None and trainer.logger is not None:
                prefix = type(self).__name__
                trainer.logger.log_metrics({f"{prefix}/{k}": v for k, v in stats.items()}, step=step)
        return changed

    def scores_for(self, target: PruneTarget) -> torch.Tensor:
        """Full fp32 score tensor (weight's shape) of a target at a prune event."""
        with torch.no_grad():
            if target.score.method != "l1" and target.score.score is not None:
                return target.score.score  # learned / gradient scores: the weight is not needed
            weight = full_param(target.param)
            return target.score.value(masking.apply_mask(weight, target.mask.to(weight.device)))

    @torch.no_grad()
    def prune_group(self, group: PruneGroup, sparsity: float) -> None:
        """Recompute the group's masks to reach ``sparsity`` (identical on every rank)."""
        layers, score2d = [], []
        for t in group.targets:
            s2d = as_2d(self.scores_for(t))
            score2d.append(s2d)
            layers.append(
                LayerScores(
                    costs=t.pattern.unit_costs(s2d),
                    unit_elems=t.pattern.unit_elems(),
                    total_elems=s2d.numel(),
                    max_sparsity=t.max_sparsity,
                )
            )
        pruned = select_pruned_units(layers, sparsity, self.scope)
        for t, pu, s2d in zip(group.targets, pruned, score2d):
            mask = t.pattern.mask_from_pruned(pu, t.full_shape, s2d)
            mask = mask.to(t.mask.device)
            broadcast_(mask, 0)
            t.mask.copy_(mask)

    # ------------------------------------------------------------------ reporting
    def sparsity_stats(self) -> dict[str, float]:
        """Actual sparsity (fraction of zeros in the masks): overall and per group."""
        stats: dict[str, float] = {}
        total = zeros = 0
        for group in self.groups:
            g_total = sum(t.mask.numel() for t in group.targets)
            g_zeros = sum(int((~t.mask).sum()) for t in group.targets)
            total += g_total
            zeros += g_zeros
            if len(self.groups) > 1:
                stats[f"sparsity/{group.name}"] = g_zeros / max(g_total, 1)
        stats["sparsity"] = zeros / max(total, 1)
        return stats

    def masks(self) -> dict[str, torch.Tensor]:
        return {t.name: t.mask.detach().cpu().clone() for t in self.targets}

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "events_done": {g.name: g.events_done for g in self.groups},
            "resolved_end": self._resolved_end,
            "masks": self.masks(),
            "scores": {t.name: t.score.state_dict() for t in self.targets},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._setup_done:
            self._apply_state(state_dict)
        else:
            self._pending_state = state_dict

    def _apply_state(self, state: dict[str, Any]) -> None:
        events = state.get("events_done", {})
        for g in self.groups:
            g.events_done = int(events.get(g.name, 0))
        by_name = {t.name: t for t in self.targets}
        missing = set(state.get("masks", {})) - set(by_name)
        if missing:
            raise ValueError(
                f"{type(self).__name__}: the checkpoint has masks for {sorted(missing)[:5]} which this callback "
                f"does not target; resume with the same `modules`/`exclude`/`groups` as the run that saved it."
            )
        for name, mask in state.get("masks", {}).items():
            by_name[name].mask.copy_(mask.to(by_name[name].mask.device))
        for name, sstate in state.get("scores", {}).items():
            if name in by_name:
                by_name[name].score.load_state_dict(sstate)
