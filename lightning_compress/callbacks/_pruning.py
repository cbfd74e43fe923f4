"""``BasePruning``: the Lightning adapter over :class:`lightning_compress.core.pruner.Pruner` that every
pruning callback (SparsePruning, RowPruning, HeadPruning, ChannelPruning) is.

It only translates trainer events (steps = optimizer steps, see
:mod:`lightning_compress.callbacks._steps`):

* ``setup`` (every stage, via :class:`~lightning_compress.callbacks._base.CompressionCallback`):
  :meth:`Pruner.attach` puts all-ones masks on the targets (before ``deepspeed.initialize`` for
  ``fit``; on validate / test / predict so that a restored checkpoint's masks apply);
* ``on_train_start``: resolve ``end_step=None`` to the last optimizer step of the fit (the *first* fit
  of the model: a later one keeps that end);
* ``on_before_optimizer_step`` at an accumulation boundary: :meth:`Pruner.update_scores` with the
  reduced, full gradient (DeepSpeed's getter under an engine; FSDP1 inside ``summon_full_params``,
  FSDP2 through ``DTensor.full_tensor``, see :mod:`lightning_compress.callbacks._sharding`);
* ``on_train_batch_start``: :meth:`Pruner.step` (the latest due prune event; masks broadcast from
  rank 0), then log the sparsity.

Steps are positions of a :class:`~lightning_compress.callbacks._clock.ScheduleClock`: optimizer steps
done on the model, counted across fits.  In one fit (resumed or not) that is ``trainer.global_step``.
Lifecycle (the same for every pruning callback):

* **a second ``fit`` of the same model** (same or new Trainer) continues the schedule where the first
  stopped: a schedule that finished stays finished (masks, sparsity and scores are kept, no prune
  event runs again), one that did not goes on to ``end_step``; the sparsity never goes back.
  ``end_step=None`` was resolved against the first fit and stays so.  To prune further, bake the
  masks (:func:`lightning_compress.clean`) and use a new callback.
* **another model** (:meth:`CompressionCallback.attach` re-targets): the masks come off the old model
  and everything is forgotten (masks, scores, prune events, history, schedule position, resolved
  ``end_step``): the callback reports the new model's sparsity only.
* **resume** (``ckpt_path``): masks, scores, prune events, resolved ``end_step`` and position come
  from the checkpoint; every constructor argument must equal the saving run's (``ValueError`` naming
  the argument otherwise, see :meth:`arguments`).
* **evaluation** (``validate`` / ``test`` / ``predict``, with or without ``ckpt_path``): the masks are
  on the model (from the checkpoint when given), so it computes what it computed after training.

Subclasses choose the defaults: ``mask_kind``, ``target_types`` and, for structured pruning, the unit
groups (:class:`~lightning_compress.callbacks._structured.StructuredPruning`).
"""

from __future__ import annotations

import functools
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from torch import nn
from typing_extensions import override

from lightning_compress.callbacks._base import CompressionCallback
from lightning_compress.callbacks._clock import ScheduleClock
from lightning_compress.callbacks._sharding import full_params
from lightning_compress.core import args
from lightning_compress.callbacks._steps import (
    deepspeed_engine,
    is_accumulation_boundary,
    optimizer_step_count,
    total_optimizer_steps,
)
from lightning_compress.core.criteria import Criterion
from lightning_compress.core.dist import full_grad
from lightning_compress.core.patterns import Pattern
from lightning_compress.core.pruner import Pruner
from lightning_compress.core.pruner_targets import PruneGroup, PruneTarget, UnitTarget, WeightTarget
from lightning_compress.core.types import MethodName, ScheduleName, Scope


class BasePruning(CompressionCallback):
    """Shared adapter; use a subclass.

    Lifecycle (every pruning callback; details in the module docstring): steps count optimizer steps
    done on the model across fits; a second ``fit`` of the same model continues the schedule (finished
    stays finished, never un-prunes; ``end_step=None`` stays resolved against the first fit); another
    model re-targets the callback and forgets the old one; resuming needs the saving run's arguments
    (``ValueError`` naming each changed one); ``validate`` / ``test`` / ``predict`` with ``ckpt_path``
    on a new Trainer and a fresh model run the checkpoint's masks.

    Args:
        sparsity: fraction of the targeted weights zeroed at ``end_step`` (in [0, 1)).
        method: ``"l1"`` (magnitude), ``"topk"`` (learned movement scores), ``"snip"``,
            ``"snip_momentum"`` (see :mod:`lightning_compress.core.criteria`), any registered criterion
            name, or a :class:`~lightning_compress.core.criteria.Criterion`.
        pattern: structure of what is pruned at once (a string or a
            :class:`~lightning_compress.core.patterns.Pattern`).
        schedule, scope, max_sparsity_per_layer, modules, exclude, groups:
            as :class:`~lightning_compress.core.pruner.Pruner`.
        start_step, end_step, frequency: an ``int`` is a number of optimizer steps; a ``float`` in
            ``(0, 1]`` is a fraction of this fit's optimizer steps ``T = trainer.estimated_stepping_batches``,
            resolved at ``on_train_start`` (:func:`lightning_compress.core.args.resolve_step`:
            ``floor(f * T)``, capped at the last step ``T - 1`` for ``start_step``/``end_step``, at least 1
            for ``frequency``).  The type decides: ``1`` is optimizer step 1, ``1.0`` the whole fit.
            ``end_step=None`` = ``1.0`` = the fit's last optimizer step.  An ``end_step`` after the fit's
            last step is an error at ``on_train_start`` (the schedule could not finish).
    """

    #: kind of the mask transform (one owner per kind per weight)
    mask_kind: str = "mask"
    #: module types targeted
    target_types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)

    def __init__(
        self,
        sparsity: float | None = 0.5,
        method: MethodName | Criterion = "l1",
        pattern: str | Pattern = "unstructured",
        schedule: ScheduleName = "exp",
        start_step: int | float = 0,
        end_step: int | float | None = None,
        frequency: int | float = 1,
        scope: Scope = "global",
        max_sparsity_per_layer: float = 0.98,
        modules: list[str] | None = None,
        exclude: list[str] | None = None,
        groups: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.clock = ScheduleClock()
        self._grouped = groups is not None
        # step arguments: ints are optimizer steps, floats in (0, 1] fractions of the fit (resolved at
        # on_train_start); the pruner gets integers (placeholders until then for the fractions)
        self.step_args = {
            "start_step": args.check_step(start_step, "start_step", name),
            "end_step": args.check_step(end_step, "end_step", name, allow_none=True),
            "frequency": args.check_step(frequency, "frequency", name, minimum=1),
        }
        if args.is_fraction(start_step) and args.is_fraction(end_step) and end_step < start_step:
            args.fail(name, "end_step", end_step, f"is before `start_step`={start_step}", "set end_step >= start_step")
        #: True once ``on_train_start`` (or a checkpoint) turned the fractions into optimizer steps
        self.steps_resolved = False
        self.pruner = Pruner(
            None, sparsity=sparsity, method=method, pattern=pattern, schedule=schedule,
            start_step=0 if args.is_fraction(start_step) else start_step,
            end_step=None if args.is_fraction(end_step) else end_step,
            frequency=1 if args.is_fraction(frequency) else frequency,
            scope=scope, max_sparsity_per_layer=max_sparsity_per_layer,
            modules=modules, exclude=exclude, groups=groups, owner=self.owner, name=name,
            kind=self.mask_kind, target_types=self.target_types, **self.pruner_options(),
        )

    def pruner_options(self) -> dict[str, Any]:
        """Extra keyword arguments of this callback's :class:`Pruner` (structured pruning: unit groups)."""
        return {}

    # ------------------------------------------------------------------ the pruner's settings
    @property
    def method(self) -> str:
        return self.pruner.method

    @property
    def criterion(self) -> Criterion:
        return self.pruner.criterion

    @property
    def pattern(self) -> Pattern:
        return self.pruner.pattern

    @property
    def schedule_kind(self) -> str:
        return self.pruner.schedule_kind

    def _step(self, key: str) -> int | float | None:
        given = self.step_args[key]
        return given if args.is_fraction(given) and not self.steps_resolved else getattr(self.pruner, key)

    @property
    def start_step(self) -> int | float:
        """Optimizer step of the first prune event (a fraction of the fit as given until
        ``on_train_start`` resolves it)."""
        return self._step("start_step")

    @property
    def end_step(self) -> int | float | None:
        """Optimizer step of the last prune event (as ``start_step``; None = the fit's last step)."""
        return self._step("end_step")

    @property
    def frequency(self) -> int | float:
        """Optimizer steps between prune events (as ``start_step``)."""
        return self._step("frequency")

    @property
    def scope(self) -> str:
        return self.pruner.scope

    @property
    def max_sparsity_per_layer(self) -> float:
        return self.pruner.max_sparsity_per_layer

    @property
    def groups(self) -> list[PruneGroup]:
        return self.pruner.groups

    @property
    def targets(self) -> list[WeightTarget | UnitTarget]:
        return self.pruner.targets

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.pruner.history

    # ------------------------------------------------------------------ CompressionCallback
    @override
    def identity(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern.name,
            "method": self.method,
            "groups": [(g.name, g.modules, g.exclude, g.sparsity) for g in self.groups],
        }

    @override
    def arguments(self) -> dict[str, Any]:
        """Every argument a checkpoint's masks and schedule depend on (compared on resume)."""
        p = self.pruner
        out: dict[str, Any] = {
            "method": p.method, "pattern": p.pattern.name, "schedule": p.schedule_kind, **self.step_args,
            "scope": p.scope, "max_sparsity_per_layer": p.max_sparsity_per_layer,
        }  # step arguments as given (a fraction stays a fraction: it resolves alike in the resumed fit)
        if self._grouped:
            out["groups"] = {
                g.name: {"modules": g.modules, "exclude": g.exclude, "sparsity": g.sparsity, "pattern": g.pattern.name}
                for g in p.groups
            }
        else:
            g = p.groups[0]
            out.update(sparsity=g.sparsity, modules=g.modules, exclude=g.exclude)
        return out

    @override
    def attach_model(self, trainer: Trainer | None, model: nn.Module, stage: str | None) -> None:
        self.pruner.attach(model)
        self.modules_touched = self.pruner.modules_touched()

    @override
    def remove(self) -> None:
        self.pruner.remove()
        super().remove()

    @override
    def reset_state(self) -> None:
        """Forget the old model: prune events, history, resolved ``end_step``, schedule position (masks
        and scores went with the targets in :meth:`remove`; :meth:`attach_model` makes new ones)."""
        self.pruner.reset()
        self.clock.reset()
        self.steps_resolved = False
        self._pending_state = None

    # ------------------------------------------------------------------ trainer events
    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.pruner.in_engine = deepspeed_engine(trainer) is not None
        offset = self.clock.start(optimizer_step_count(trainer))
        total = total_optimizer_steps(trainer)
        if not self.pruner.schedule_resolved:  # the first fit of this model (else: keep the schedule)
            self.resolve_schedule(total, offset)
        elif total is not None and self.pruner.resolved_end > offset + total - 1:  # an unfinished one, too short a fit
            self._too_late(self.pruner.resolved_end, offset + total - 1, total)

    def resolve_schedule(self, total: int | None, offset: int = 0) -> int:
        """Fix the schedule for a fit of ``total`` optimizer steps (None: unknown) that starts ``offset``
        steps into the model's schedule: fractions become ``offset`` + steps of this fit
        (:func:`~lightning_compress.core.args.resolve_step`), ``end_step=None`` its last step.  Returns
        the resolved ``end_step``.

        Raises:
            ValueError: a fraction or ``end_step=None`` with an unknown number of steps, or a last prune
                event (``end_step``) after the fit's last optimizer step.
        """
        name = type(self).__name__
        spec = self.step_args
        if total is None:
            which = ", ".join(f"`{k}`={v!r}" for k, v in spec.items() if args.is_fraction(v) or (k == "end_step" and v is None))
            if which:
                raise ValueError(
                    f"{name}: {which} need the number of optimizer steps of this fit, which is unknown "
                    f"(max_steps=-1 with an unsized dataloader); set Trainer(max_steps=...) or pass integer steps."
                )
            self.pruner.set_steps(spec["start_step"], spec["end_step"], spec["frequency"])
            return self.pruner.resolve_end_step()

        def point(v: int | float) -> int:
            return offset + args.resolve_step(v, total) if args.is_fraction(v) else v

        start, last = point(spec["start_step"]), offset + total - 1
        end = None if spec["end_step"] is None else point(spec["end_step"])
        if end is not None and end > last:
            self._too_late(end, last, total)
        if end is None and start > last:
            self.schedule_cannot_finish(
                f"{name}: `start_step`={spec['start_step']!r} is after this fit's last optimizer step ({last}: "
                f"{total} optimizer steps), so nothing would be pruned; lower start_step or train longer."
            )
        self.pruner.set_steps(start, end, args.resolve_step(spec["frequency"], total, duration=True))
        self.steps_resolved = True
        return self.pruner.resolve_end_step(total + offset)

    def _too_late(self, end: int, last: int, total: int) -> None:
        self.schedule_cannot_finish(
            f"{type(self).__name__}: `end_step`={self.step_args['end_step']!r} (step {end}) is after this fit's last "
            f"optimizer step ({last}: {total} optimizer steps), so the schedule cannot finish and the model would "
            f"stay below `sparsity`; lower end_step, pass a fraction of the fit (end_step=1.0 = its last step) or train longer."
        )

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if not is_accumulation_boundary(trainer):
            return
        grad = functools.partial(full_grad, in_engine=self.pruner.in_engine)
        now = self.clock.now(optimizer_step_count(trainer))
        if not self.criterion.learns:  # magnitude: nothing read per step (no gather under FSDP1)
            self.pruner.update_scores(grad, step=now)
            return
        # FSDP1: full weights and full reduced gradients while scoring (FSDP2 / ZeRO: the getters gather)
        with full_params(trainer, with_grads=True):
            self.pruner.update_scores(grad, step=now)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.maybe_prune(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.clock.now(optimizer_step_count(trainer))  # after the optimizer step: what a checkpoint records

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.clock.now(optimizer_step_count(trainer))

    def maybe_prune(self, trainer: Trainer, pl_module: LightningModule | None = None) -> bool:
        """Run the latest due prune event, if any (:meth:`Pruner.step`).  Returns True when masks changed."""
        step = optimizer_step_count(trainer)
        now = self.clock.now(step)
        if self.pruner.event_due(now):
            with full_params(trainer):  # FSDP1: the event ranks full weights (collective, every rank)
                changed = self.pruner.step(now)
        else:
            changed = self.pruner.step(now)
        if changed and pl_module is not None and trainer.logger is not None:
            stats = {k: v for k, v in self.history[-1].items() if k != "step"}
            prefix = type(self).__name__
            trainer.logger.log_metrics({f"{prefix}/{k}": v for k, v in stats.items()}, step=step)
        return changed

    def prune_group(self, group: PruneGroup, sparsity: float) -> None:
        """Recompute ``group``'s masks to reach ``sparsity`` now."""
        self.pruner.prune_group(group, sparsity)

    # ------------------------------------------------------------------ reporting
    def sparsity_stats(self) -> dict[str, float]:
        """Actual sparsity (fraction of zeros in the masks): overall and per group."""
        return self.pruner.sparsity_stats()

    def masks(self) -> dict[str, Any]:
        return self.pruner.masks()

    # ------------------------------------------------------------------ state
    @override
    def own_state(self) -> dict[str, Any]:
        steps = {"start_step": self.pruner.start_step, "frequency": self.pruner.frequency}  # fractions, resolved
        return {**self.pruner.state_dict(), "clock": self.clock.state_dict(), "steps": steps}

    @override
    def apply_state(self, state: dict[str, Any]) -> None:
        if state.get("steps") is not None and state.get("resolved_end") is not None and not self.steps_resolved:
            # fractions resolve as in the saving fit (the resolved end comes with the pruner's state)
            spec, saved = self.step_args, state["steps"]
            self.pruner.set_steps(
                int(saved["start_step"]) if args.is_fraction(spec["start_step"]) else spec["start_step"],
                None if args.is_fraction(spec["end_step"]) else spec["end_step"],
                int(saved["frequency"]) if args.is_fraction(spec["frequency"]) else spec["frequency"],
            )
            self.steps_resolved = True
        self.pruner.load_state_dict(state)
        self.clock.load_state_dict(state.get("clock"))


__all__ = ["BasePruning", "PruneGroup", "PruneTarget", "UnitTarget", "WeightTarget"]
