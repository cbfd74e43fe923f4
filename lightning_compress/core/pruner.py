"""``Pruner``: progressive pruning driven from any training loop (pure PyTorch; the Lightning
callbacks are thin adapters over it).

Usage in a plain loop (steps = optimizer steps)::

    pruner = Pruner(model, sparsity=0.8, method="snip_momentum", pattern="4x1", schedule="exp",
                    start_step=0, end_step=100, frequency=10)
    for step, (x, y) in enumerate(loader):
        loss = loss_fn(model(x), y)
        loss.backward()
        pruner.update_scores()          # after backward, before optimizer.step(): reads param.grad
        optimizer.step(); optimizer.zero_grad()
        pruner.step(step + 1)           # optimizer steps done: runs the latest due prune event
    print(pruner.sparsity()); pruner.remove()   # or lightning_compress.clean(model) to bake the zeros

Timeline and semantics:

* construction (or :meth:`attach`): resolve targets, check the pattern fits each weight, put all-ones
  masks on them (they act in ``forward``: effective weight = ``weight * mask``).
* :meth:`update_scores` once per optimizer step, with the full reduced gradient (default getter:
  ``param.grad``, or DeepSpeed's full gradient under ZeRO-3; the Lightning callback passes the engine's).
  Gradient criteria stop updating after ``end_step``; ``topk`` keeps draining its forward accumulator.
* :meth:`step` (``step`` = optimizer steps done): if prune events are due (``schedule.events_due``
  grew), compute the masks of the latest due one and broadcast them from rank 0.  Gradient criteria
  wait for one scored step (an event due at step 0 runs at the first step after a scored one).
* An event at step 0 runs when ``step(0)`` is called (the callback does it before the first batch).

Targets are :class:`~lightning_compress.core.pruner_targets.WeightTarget` (per-weight masks with a
pattern) or, when ``find_groups`` is given, :class:`~lightning_compress.core.pruner_targets.UnitTarget`
(rows / heads / channels of :class:`~lightning_compress.core.surgery.UnitGroup`); the pruner treats
both alike.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, get_args

import torch
from torch import nn

from lightning_compress.core import args, masking
from lightning_compress.core.conv1d import conv1d_types, is_conv1d, out_in_shape
from lightning_compress.core.direct_reads import guard_direct_reads
from lightning_compress.core.criteria import CRITERIA, Criterion, ScoreState, resolve_criterion
from lightning_compress.core.dist import full_grad
from lightning_compress.core.patterns import Pattern, parse_pattern
from lightning_compress.core.pruner_targets import GradFn, PruneGroup, UnitTarget, WeightTarget, pruned_counts
from lightning_compress.core.ranking import RankBuffers, select_pruned_units
from lightning_compress.core.schedule import SCHEDULES, SparsitySchedule
from lightning_compress.core.select import apply_exclude, select_modules
from lightning_compress.core.surgery import UnitGroup
from lightning_compress.core.types import MethodName, Rounding, ScheduleName, Scope

FindGroups = Callable[[nn.Module, PruneGroup], "list[UnitGroup]"]
_COUNTER = itertools.count()


class Pruner:
    """Progressive pruning of a model's weights (or structured units) to a target sparsity.

    Args:
        model: the model to attach to now (``None``: call :meth:`attach` later).
        sparsity: fraction of the targeted weights zeroed at ``end_step``, in [0, 1); ``None``: the
            pattern's maximum if below 1 (``"2:4"``: 0.5), else 0.5.
        method: criterion name (``"l1"``/``"magnitude"``, ``"topk"``, ``"snip"``, ``"snip_momentum"`` or any
            registered one) or a :class:`~lightning_compress.core.criteria.Criterion` object or class.
        pattern: ``"unstructured"``, ``"NxM"``, ``"N:M"`` (any registered grammar) or a
            :class:`~lightning_compress.core.patterns.Pattern`.
        schedule: ``"exp"`` | ``"cos"`` | ``"linear"`` | ``"cubic"`` over prune events.
        start_step / end_step / frequency: optimizer steps of the first and last prune event and between
            events, integers only (fractions of a fit: :func:`lightning_compress.core.args.resolve_step`);
            ``end_step=None`` must be resolved with :meth:`resolve_end_step` before :meth:`step`.
        scope: ``"global"`` (one ranking over a group's layers, each capped at
            ``max_sparsity_per_layer``) or ``"local"`` (per layer).
        modules / exclude: regexes over qualified module names (``re.search``); default: every module of
            ``target_types`` but the last one (the classifier).
        groups: ``{name: {"modules": [...], "sparsity": s, "exclude": [...], "pattern": p}}``, each ranked
            and scheduled on its own (replaces ``modules``/``sparsity``; ``exclude`` adds to each group's).
        find_groups: ``(model, group) -> list[UnitGroup]``: prune structured units instead of weights
            (``method`` must be a structured criterion, ``l1`` or ``topk``; at least one unit stays).
        unit_word: what a unit is called in error messages (``"row"``, ``"head"``, ``"channel"``).
        kind: the masking kind of the transforms (one owner per kind per weight).
        target_types: module types weight targets may have.
        owner: masking owner id (default: unique per pruner).
        name: prefix of error messages (the callback's class name).
        rounding: ``"nearest"`` or ``"floor"``: how a local (``scope="local"``) pruned-unit count
            ``sparsity * n`` is rounded; ``"floor"`` keeps ``ceil((1 - sparsity) * n)`` units, as
            DeepSpeed's TopKBinarizer (the DeepSpeed importer's setting).

    Raises:
        TypeError: at construction for an argument of the wrong type (:mod:`lightning_compress.core.args`).
        ValueError: at construction for an unknown method / schedule / pattern, sparsity outside
            [0, 1) or above the pattern's maximum, ``end_step < start_step``, ``frequency < 1``, an
            empty ``modules`` / ``groups``, a bad regex; at :meth:`attach` for a regex matching nothing,
            a selection leaving no target, a pattern that does not fit a weight, a module in two
            groups or a weight already masked by another owner of the same kind.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        sparsity: float | None = 0.5,
        method: MethodName | Criterion | type[Criterion] = "l1",
        pattern: str | Pattern = "unstructured",
        schedule: ScheduleName = "exp",
        start_step: int = 0,
        end_step: int | None = None,
        frequency: int = 1,
        scope: Scope = "global",
        max_sparsity_per_layer: float = 0.98,
        modules: list[str] | None = None,
        exclude: list[str] | None = None,
        groups: dict[str, dict[str, Any]] | None = None,
        *,
        find_groups: FindGroups | None = None,
        unit_word: str = "unit",
        kind: str = "sparse_mask",
        target_types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
        owner: str | None = None,
        name: str = "Pruner",
        rounding: Rounding = "nearest",
    ) -> None:
        self.name = name
        if rounding not in get_args(Rounding):
            raise ValueError(f"{name}: `rounding`={rounding!r} must be one of {list(get_args(Rounding))}.")
        #: how a local pruned-unit count is rounded (:func:`~lightning_compress.core.ranking.select_pruned_units`)
        self.rounding = rounding
        self.criterion = resolve_criterion(method, name)
        self.find_groups = find_groups
        if find_groups is not None and not self.criterion.structured:
            allowed = " or ".join(repr(n) for n, c in CRITERIA.items() if c.structured and c.name == n)
            raise ValueError(f"{name}: `method`={method!r} must be {allowed} for structured pruning.")
        args.check_choice(schedule, "schedule", name, SCHEDULES, problem=f"is unknown; it must be one of {list(SCHEDULES)}")
        args.check_choice(scope, "scope", name, ("global", "local"))
        self.max_sparsity_per_layer = args.check_float(max_sparsity_per_layer, "max_sparsity_per_layer", name, minimum=0.0, maximum=1.0, min_closed=False)
        modules = args.check_regexes(modules, "modules", name)
        exclude = args.check_regexes(exclude, "exclude", name, allow_empty=True)
        self.pattern = self._parse_pattern(pattern)
        self.schedule_kind = schedule
        self.scope = scope
        self.unit_word = unit_word
        self.kind = kind
        self.target_types = tuple(target_types)
        self.owner = owner or f"{name}#p{next(_COUNTER)}"
        self.set_steps(start_step, end_step, frequency)
        self.groups: list[PruneGroup] = self._make_groups(sparsity, modules, exclude, groups)
        #: True when the parameters belong to a DeepSpeed engine (unit scores read its fp32 master weights)
        self.in_engine = False
        #: optimizer steps done, as last given to :meth:`step`
        self.steps_done = 0
        #: one entry per prune event that changed masks: ``{"step": s, "sparsity": ..., ...}``
        self.history: list[dict[str, Any]] = []
        self.model: nn.Module | None = None
        if model is not None:
            self.attach(model)

    @property
    def method(self) -> str:
        """Canonical name of the criterion (``"magnitude"`` reads ``"l1"``)."""
        return self.criterion.name

    def set_steps(self, start_step: int, end_step: int | None, frequency: int) -> None:
        """Set the schedule's optimizer steps (integers; the callbacks resolve fractions first)."""
        name = self.name
        self.start_step = args.check_step(start_step, "start_step", name, allow_fraction=False)
        self.end_step = args.check_step(end_step, "end_step", name, allow_none=True, allow_fraction=False)
        self.frequency = args.check_step(frequency, "frequency", name, minimum=1, allow_fraction=False)
        if self.end_step is not None and self.end_step < self.start_step:
            raise ValueError(f"{name}: `end_step`={end_step} is before `start_step`={start_step}; set end_step >= "
                             f"start_step, or leave end_step=None to end at the last optimizer step of training.")
        self.resolved_end = self.end_step
        for group in getattr(self, "groups", []):
            group.schedule = None

    # ------------------------------------------------------------------ argument checks
    def _parse_pattern(self, pattern: str | Pattern, argument: str = "pattern") -> Pattern:
        if not isinstance(pattern, (str, Pattern)):
            args.fail(self.name, argument, pattern, f"is a {type(pattern).__name__}", "pass a pattern string such as "
                      "'unstructured', '4x1' or '2:4', or a lightning_compress.core.patterns.Pattern", TypeError)
        try:
            return parse_pattern(pattern)
        except ValueError as err:
            msg = str(err).replace("`pattern`", f"`{argument}`", 1)
            raise ValueError(f"{self.name}: {msg}") from None

    def _check_sparsity(self, sparsity: float | None, pattern: Pattern, argument: str) -> float:
        if sparsity is None:
            return pattern.max_sparsity if pattern.max_sparsity < 1.0 else 0.5
        sparsity = args.check_float(sparsity, argument, self.name, minimum=0.0, maximum=1.0, max_closed=False,
                                    fix="pass the fraction of weights zeroed, in [0, 1) (DeepSpeed's dense_ratio r means sparsity 1 - r)")
        if sparsity > pattern.max_sparsity + 1e-9:
            raise ValueError(f"{self.name}: `{argument}`={sparsity} is more than pattern {pattern.name!r} can reach "
                             f"({pattern.max_sparsity:g}); lower it or use another pattern.")
        return sparsity

    def _make_groups(self, sparsity, modules, exclude, groups) -> list[PruneGroup]:  # noqa: ANN001
        name = self.name
        if groups is None:
            return [PruneGroup("default", self._check_sparsity(sparsity, self.pattern, "sparsity"), modules, exclude, self.pattern)]
        groups = args.check_mapping(groups, "groups", name, what="a dict {group name: {'modules': [...], 'sparsity': s}}")
        if not groups:
            args.fail(name, "groups", groups, "is empty", "name at least one group, or pass None for one group of every target")
        if modules is not None:
            raise ValueError(f"{name}: pass either `modules` or `groups`, not both (put the regexes in each group).")
        out = []
        for gname, spec in groups.items():
            where = f"groups[{gname!r}]"
            spec = args.check_mapping(spec, where, name, allow_none=False, what="a dict with keys modules, exclude, sparsity, pattern")
            unknown = set(spec) - {"modules", "exclude", "sparsity", "pattern"}
            if unknown:
                raise ValueError(f"{name}: `groups` group {gname!r} has unknown keys {sorted(unknown)}; allowed: modules, exclude, sparsity, pattern.")
            gpattern = self._parse_pattern(spec["pattern"], f"{where}.pattern") if "pattern" in spec else self.pattern
            gmods = args.check_regexes(spec.get("modules"), f"{where}.modules", name)
            gexcl = list(exclude or []) + list(args.check_regexes(spec.get("exclude"), f"{where}.exclude", name, allow_empty=True) or [])
            gsparsity = self._check_sparsity(spec.get("sparsity", sparsity), gpattern, f"{where}.sparsity")
            out.append(PruneGroup(gname, gsparsity, gmods, gexcl or None, gpattern))
        return out

    # ------------------------------------------------------------------ targets
    @property
    def targets(self) -> list[WeightTarget | UnitTarget]:
        return [t for g in self.groups for t in g.targets]

    def weight_targets(self, model: nn.Module, group: PruneGroup) -> list[WeightTarget]:
        """A group's weight targets: ``modules``/``exclude`` resolved, the pattern checked on each."""
        types = self.target_types
        if nn.Linear in types:  # Hugging Face Conv1D: a Linear stored [in, out]
            types = (*types, *conv1d_types(model))
        if group.modules is None:
            chosen = select_modules(model, None, None, types, owner=self.name, exclude_last=True)
            if group.exclude:
                chosen = apply_exclude(model, chosen, group.exclude, self.name)
        else:
            chosen = select_modules(model, group.modules, group.exclude, types, owner=self.name)
        targets = []
        for mname, module in chosen.items():
            shape = tuple(getattr(module.weight, "ds_shape", module.weight.shape))
            group.pattern.check(out_in_shape(module), f"{self.name} group {group.name!r}, module {mname!r}")
            targets.append(
                WeightTarget(
                    name=mname, module=module, group=group.name, pattern=group.pattern,
                    max_sparsity=min(self.max_sparsity_per_layer, group.pattern.max_sparsity),
                    score=self.criterion.per_weight_state(torch.Size(shape), device=module.weight.device),
                    mask_buffer=masking.private_name(f"mask_{self.kind}"),
                    transposed=is_conv1d(module),
                )
            )
        return targets

    def unit_targets(self, model: nn.Module, group: PruneGroup) -> list[UnitTarget]:
        """A group's unit targets from ``find_groups``; checks that the sparsity leaves a unit per layer."""
        assert self.find_groups is not None
        if group.exclude:  # an exclude regex must match some module, as for weight targets
            apply_exclude(model, {}, group.exclude, self.name)
        ugroups = self.find_groups(model, group)
        self._check_reachable(group, ugroups)
        return [
            UnitTarget(
                name=ug.name, unit_group=ug, group=group.name, max_sparsity=self._unit_cap(ug),
                score=ScoreState(self.criterion, (ug.num_units,)),  # units: no forward accumulator
            )
            for ug in ugroups
        ]

    def _unit_cap(self, ug: UnitGroup) -> float:
        return min(self.max_sparsity_per_layer, (ug.num_units - 1) / ug.num_units)

    def _check_reachable(self, group: PruneGroup, ugroups: list[UnitGroup]) -> None:
        s, word = group.sparsity, self.unit_word
        if self.scope == "local":
            for ug in ugroups:
                k = math.floor(s * ug.num_units + 1e-9) if self.rounding == "floor" else round(s * ug.num_units)
                if int(k) >= ug.num_units:
                    raise ValueError(
                        f"{self.name}: `sparsity`={s} would remove all {ug.num_units} {word}s of {ug.name!r} "
                        f"(at least 1 must stay); use sparsity <= {(ug.num_units - 1) / ug.num_units:.3g}."
                    )
            return
        total = sum(ug.num_units * ug.params_per_unit() for ug in ugroups)
        reach = sum(math.floor(self._unit_cap(ug) * ug.num_units + 1e-9) * ug.params_per_unit() for ug in ugroups)
        if total and s > reach / total + 1e-9:
            small = min(ugroups, key=lambda u: u.num_units)
            raise ValueError(
                f"{self.name}: `sparsity`={s} would remove every {word} of some layers (at least 1 stays "
                f"per layer, e.g. {small.name!r} has {small.num_units}); the most reachable is {reach / total:.3g}."
            )

    # ------------------------------------------------------------------ attach / remove
    def attach(self, model: nn.Module) -> None:
        """Resolve every group's targets on ``model`` and put all-ones masks on them (idempotent for
        the same model; a different model is re-targeted: masks come off the old one, state resets)."""
        if self.model is model:
            return
        if self.model is not None:
            self.remove()
            self.reset()
        build = self.unit_targets if self.find_groups is not None else self.weight_targets
        seen: dict[str, str] = {}
        for group in self.groups:
            group.targets = list(build(model, group))
            if not group.targets:
                where, what = "" if group.name == "default" else f" of group {group.name!r}", self.unit_word if self.find_groups else "layer"
                raise ValueError(f"{self.name}: `modules`={group.modules} and `exclude`={group.exclude}{where} leave no {what} "
                                 f"of {type(model).__name__} to prune; widen `modules` or narrow `exclude`.")
            for t in group.targets:
                if t.name in seen:
                    raise ValueError(
                        f"{self.name}: module {t.name!r} is in groups {seen[t.name]!r} and {group.name!r}; "
                        f"a module may belong to one group only: tighten the groups' `modules`/`exclude`."
                    )
                seen[t.name] = group.name
        for t in self.targets:
            t.attach(self.owner, self.kind)
        guard_direct_reads(model)
        self.model = model

    def modules_touched(self) -> dict[str, nn.Module]:
        """``{qualified name: module}`` of every module carrying this pruner's transforms."""
        out: dict[str, nn.Module] = {}
        for t in self.targets:
            out.update(t.touched())
        return out

    def remove(self) -> None:
        """Take the masks off (the weights keep their values; bake first with
        ``lightning_compress.clean`` to keep the zeros)."""
        for t in self.targets:
            t.detach(self.owner)
        for g in self.groups:
            g.targets = []
            g.buffers = None
        self.model = None

    def reset(self) -> None:
        """Forget events, history, position and the resolved ``end_step`` (before pruning another model)."""
        for g in self.groups:
            g.events_done = 0
            g.schedule = None
            g.buffers = None
        self.history = []
        self.steps_done = 0
        self.resolved_end = self.end_step

    # ------------------------------------------------------------------ schedule
    def resolve_end_step(self, total_steps: int | None = None) -> int:
        """Fix the schedule: ``end_step``, or ``max(start_step, total_steps - 1)`` when it is None."""
        end = self.end_step
        if end is None:
            if total_steps is None:
                raise ValueError(f"{self.name}: `end_step` is None; pass `end_step` or the number of optimizer steps.")
            end = max(self.start_step, int(total_steps) - 1)
        self._build_schedules(end)
        return end

    @property
    def schedule_resolved(self) -> bool:
        """True once the schedule has an end (:meth:`resolve_end_step`, or restored by :meth:`load_state_dict`)."""
        return all(g.schedule is not None for g in self.groups)

    def _build_schedules(self, end: int) -> None:
        self.resolved_end = end
        for group in self.groups:
            group.schedule = SparsitySchedule(
                final=group.sparsity, kind=self.schedule_kind, start_step=self.start_step, end_step=end, frequency=self.frequency
            )

    # ------------------------------------------------------------------ training loop
    def update_scores(self, grad_fn: GradFn | None = None, step: int | None = None) -> None:
        """One optimizer step's score update (after backward, before ``optimizer.step()``).

        Args:
            grad_fn: ``param -> full reduced fp32 gradient or None``; default ``param.grad`` (DeepSpeed's
                full gradient for ZeRO-3 parameters).
            step: optimizer steps done before this one (default: the last :meth:`step`).
        """
        step = self.steps_done if step is None else int(step)
        if self.resolved_end is not None and step > self.resolved_end and not self.criterion.always_update:
            return  # no more events: stop paying for scores
        in_engine = self.in_engine
        grad = grad_fn or (lambda p: full_grad(p, in_engine))
        for t in self.targets:
            t.update(grad, in_engine)

    def event_due(self, step: int) -> bool:
        """True when :meth:`step` with ``step`` would compute masks (a new event is due and its
        criterion is ready); the caller can then make full weights available (FSDP1) first."""
        for group in self.groups:
            due = group.schedule.events_due(step) if group.schedule is not None else None
            if due is None or due > group.events_done:
                if all(self.criterion.ready(t.score) for t in group.targets):
                    return True
        return False

    def step(self, step: int) -> bool:
        """Run the latest due prune event once ``step`` optimizer steps are done.  Returns True when
        masks changed (then :attr:`history` got an entry)."""
        self.steps_done = int(step)
        if any(g.schedule is None for g in self.groups):
            self.resolve_end_step()
        changed = False
        for group in self.groups:
            due = group.schedule.events_due(step)
            if due <= group.events_done:
                continue
            if not all(self.criterion.ready(t.score) for t in group.targets):
                continue  # gradient criteria: wait for the first scored optimizer step
            self.prune_group(group, group.schedule.target(due), keep_buffers=due < group.schedule.num_events)
            group.events_done = due
            changed = True
        if changed:
            self.history.append({"step": int(step), **self.sparsity_stats()})
        return changed

    @torch.no_grad()
    def prune_group(self, group: PruneGroup, sparsity: float, keep_buffers: bool = False) -> None:
        """Recompute the group's masks to reach ``sparsity`` now (identical on every rank).
        ``keep_buffers``: more events follow, so keep the group's cost / result buffers
        (:class:`~lightning_compress.core.ranking.RankBuffers`, 5 bytes per unit) for them."""
        if not group.targets:
            return
        bufs = group.buffers if group.buffers is not None and len(group.buffers.sizes) == len(group.targets) else None
        slots = bufs.cost_slots() if bufs is not None else [None] * len(group.targets)
        scored = [t.layer_scores(self.in_engine, slot) for t, slot in zip(group.targets, slots)]
        layers = [layer for layer, _ in scored]
        pruned = select_pruned_units(layers, sparsity, self.scope, self.rounding, flat_costs=None if bufs is None else bufs.costs,
                                     pruned_out=None if bufs is None else bufs.pruned)
        for t, pu, (_, aux) in zip(group.targets, pruned, scored):
            t.apply_pruned(pu, aux)
        group.buffers = (bufs or RankBuffers.like(layers)) if keep_buffers else None

    # ------------------------------------------------------------------ reporting
    def sparsity_stats(self) -> dict[str, float]:
        """Actual sparsity (zeroed fraction of the targeted weights; for unit groups, parameters of
        removed units): ``"sparsity"`` overall and ``"sparsity/<group>"`` with several groups."""
        stats: dict[str, float] = {}
        total = zeros = 0.0
        for group in self.groups:
            g_total = sum(t.numel() for t in group.targets)
            g_zeros = sum(pruned_counts(group.targets))
            total += g_total
            zeros += g_zeros
            if len(self.groups) > 1:
                stats[f"sparsity/{group.name}"] = g_zeros / max(g_total, 1)
        stats["sparsity"] = zeros / max(total, 1)
        return stats

    def sparsity(self) -> float:
        return self.sparsity_stats()["sparsity"]

    def masks(self) -> dict[str, torch.Tensor]:
        """``{target name: bool keep mask}`` (CPU copies; unit targets: keep vector over units)."""
        return {t.name: t.mask.detach().cpu().clone() for t in self.targets}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "events_done": {g.name: g.events_done for g in self.groups},
            "resolved_end": self.resolved_end,
            "masks": self.masks(),
            "scores": {t.name: t.score.state_dict() for t in self.targets},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore events, the resolved ``end_step``, masks and scores onto the attached targets."""
        if state.get("resolved_end") is not None:
            self._build_schedules(int(state["resolved_end"]))
        events = state.get("events_done", {})
        for g in self.groups:
            g.events_done = int(events.get(g.name, 0))
        by_name = {t.name: t for t in self.targets}
        missing = set(state.get("masks", {})) - set(by_name)
        if missing:
            raise ValueError(
                f"{self.name}: the checkpoint has masks for {sorted(missing)[:5]} which this pruner does not "
                f"target; resume with the same `modules`/`exclude`/`groups` as the run that saved it."
            )
        for tname, mask in state.get("masks", {}).items():
            by_name[tname].load_mask(mask)
        for tname, sstate in state.get("scores", {}).items():
            if tname in by_name:
                by_name[tname].score.load_state_dict(sstate)


__all__ = ["Pruner"]
