"""``WeightQuant``: quantization-aware training of weights (fake quantization, straight-through).

A thin adapter: :class:`lightning_compress.core.weight_quantizer.WeightQuantizer` does the work (use it
directly from a plain PyTorch loop); this callback attaches it on every stage and feeds it
``trainer.global_step``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from torch import nn
from typing_extensions import override

from lightning_compress.callbacks._base import CompressionCallback
from lightning_compress.callbacks._clock import ScheduleClock
from lightning_compress.callbacks._steps import optimizer_step_count, total_optimizer_steps
from lightning_compress.core import args
from lightning_compress.core.fake_quant import WeightFakeQuant
from lightning_compress.core.weight_quantizer import WeightQuantizer


class WeightQuant(CompressionCallback):
    """Quantization-aware training: every targeted weight is fake-quantized in forward.

    The quantizer rides on the module's forward (``core/masking.py``, kind ``"weight_quant"``, after
    masks), with a straight-through estimator in backward; the optimizer keeps full-precision
    weights.  ``bits=2`` is ternary (TWN scaling) and ``bits=1`` binary (XTC, ``alpha = mean|w|``),
    see :mod:`lightning_compress.core.quantize`.  ``nn.Embedding`` weights are quantized per row
    (``granularity="tensor"`` is read as ``"channel"`` for them).

    Bits schedule (DeepSpeed's MoQ idea): with ``start_bits``, the width steps down through the
    supported widths ``levels = [b in (8, 4, 3, 2, 1) with bits <= b <= start_bits]`` (descending).
    Before ``start_step`` optimizer steps are done, weights are not quantized; once
    ``start_step + k * period`` optimizer steps are done (``trainer.global_step`` at the start of a
    batch), the forward uses ``levels[min(k, len(levels) - 1)]``.  Example: ``start_bits=8, bits=4,
    period=100, start_step=0`` trains steps 0..99 at 8 bits and from step 100 on at 4 bits.

    The quantizers are attached in ``setup`` of every stage (``fit``, ``validate``, ``test``,
    ``predict``), so evaluating a checkpoint runs the quantized model.  Two instances on disjoint
    ``modules`` coexist in one Trainer (their ``state_key`` differs, see :meth:`identity`).

    The quantizers stay on the modules after ``fit`` (the model keeps its quantized forward, and
    ``RedundancyClean`` / :func:`core.quantize.pack_state` read them); :meth:`remove` takes them off.

    Lifecycle: steps are optimizer steps done on the model, counted across fits
    (:class:`~lightning_compress.callbacks._clock.ScheduleClock`; ``trainer.global_step`` within one fit,
    resumed or not).  A second ``fit`` of the same model continues the bits schedule where the first
    stopped (it never goes back to a wider width or to full precision); another model re-targets the
    callback (quantizers come off the old model, the schedule position restarts at 0); resuming from a
    checkpoint needs every constructor argument of the saving run (``ValueError`` naming the argument
    otherwise); ``validate`` / ``test`` / ``predict`` with ``ckpt_path`` use the checkpoint's width.

    Args:
        bits: final weight width in bits, one of 8, 4, 3, 2 (ternary), 1 (binary).
        start_bits: first width of the schedule (None: ``bits`` from the start).
        period: optimizer steps spent at each width of the schedule (needed with ``start_bits > bits``,
            refused without a schedule).
        granularity: one scale per ``"tensor"``, per output ``"channel"``, per ``"group"`` of
            ``group_size`` consecutive input values of each output channel, or per ``"row_block"``.
        group_size: values per group (input dimension; Conv2d: ``in*kh*kw``) for ``"group"``.
        symmetric: symmetric (zero-point 0) or asymmetric affine quantization (affine widths only).
        modules: regexes of module names to quantize (Linear, Conv2d, Embedding); None: every
            Linear and Conv2d except the last one (the classifier).
        exclude: regexes of module names to leave alone.
        start_step: optimizer steps to run in full precision before quantization starts.
        groups: with ``granularity="row_block"``: the weight (``[out, in]``; a Hugging Face ``Conv1D``'s
            transposed) flattened and cut into ``groups`` equal chunks, one scale each (blocks of
            ``out / groups`` rows: DeepSpeed's ``quantize_groups``).
        scheme: ``"affine"`` or ``"deepspeed"``: DeepSpeed's quantizer grids (2**b levels; any width 1..16;
            Embedding weights per row) and its MoQ bits schedule (one bit less once ``start_step + period *
            2**(k-1)`` optimizer steps are done), see :class:`~lightning_compress.core.weight_quantizer.WeightQuantizer`.

    ``start_step`` and ``period``: an ``int`` is a number of optimizer steps; a ``float`` in ``(0, 1]``
    is a fraction of this fit's optimizer steps ``T = trainer.estimated_stepping_batches``, resolved at
    ``on_train_start`` (``floor(f * T)``; ``period`` at least 1, ``start_step`` at most ``T - 1``).  The
    type decides: ``1`` is one optimizer step, ``1.0`` the whole fit.  Until a fit (or a checkpoint)
    resolves fractional steps, the quantizers are off (validate / test / predict of a model that never
    trained with this callback run in full precision).  A schedule that reaches ``bits`` only after the
    fit's last optimizer step is an error at ``on_train_start``.

    Raises:
        TypeError: an argument of the wrong type (``bits="8"``, ``symmetric="no"``, ``start_step="0"``).
        ValueError: unsupported ``bits`` / ``start_bits``, ``start_bits < bits``, a bad ``period``,
            ``granularity`` or ``group_size`` (in ``__init__``); ``group_size`` not dividing a
            module's input dimension, a regex matching nothing, or no quantizable layer (in ``setup``).

    Example (``model``, ``datamodule``: yours; ``x``: a batch of its input)::

        import torch
        from lightning.pytorch import Trainer
        from lightning_compress import RedundancyClean, WeightQuant

        quant = WeightQuant(bits=4, start_bits=8, period=500, granularity="group", group_size=16)
        Trainer(max_steps=1000, callbacks=[quant, RedundancyClean("slim")]).fit(model, datamodule)  # int4 stored
        slim = torch.export.load("slim/model.pt2").module()  # runs without your model's code
        y = slim(x)  # exported in eval mode: call it as it is (it has no working .eval())
    """

    def __init__(
        self,
        bits: int = 8,
        start_bits: int | None = None,
        period: int | float | None = None,
        granularity: Literal["tensor", "channel", "group", "row_block"] = "channel",
        group_size: int | None = None,
        symmetric: bool = True,
        modules: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        start_step: int | float = 0,
        groups: int | None = None,
        scheme: Literal["affine", "deepspeed"] = "affine",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.clock = ScheduleClock()
        # ints are optimizer steps, floats in (0, 1] fractions of the fit (resolved at on_train_start)
        self.step_args = {
            "start_step": args.check_step(start_step, "start_step", name),
            "period": args.check_step(period, "period", name, minimum=0 if scheme == "deepspeed" else 1, allow_none=True),
        }
        #: True once the fractions are optimizer steps (``on_train_start``, or a checkpoint's schedule)
        self.steps_resolved = not any(args.is_fraction(v) for v in self.step_args.values())
        self.quantizer = WeightQuantizer(
            None, bits, start_bits, 1 if args.is_fraction(period) else period, granularity, group_size, symmetric,
            modules, exclude, 0 if args.is_fraction(start_step) else start_step,
            groups=groups, scheme=scheme, owner=self.owner, name=name,
        )
        self.spec = self.quantizer.spec
        self.bits = bits
        self.start_bits = self.quantizer.start_bits
        self.modules = modules
        self.exclude = exclude
        self.levels = self.quantizer.levels

    @property
    def start_step(self) -> int | float:
        """Optimizer steps in full precision (a fraction of the fit as given until it is resolved)."""
        return self.quantizer.start_step if self.steps_resolved else self.step_args["start_step"]

    @property
    def period(self) -> int | float | None:
        """Optimizer steps per width of the schedule (as ``start_step``)."""
        return self.quantizer.period if self.steps_resolved else self.step_args["period"]

    def identity(self) -> dict[str, Any]:
        q = self.quantizer  # step arguments as given (a fraction stays a fraction: stable state_key)
        ident = {
            "bits": q.bits, "start_bits": q.start_bits, "period": self.step_args["period"], "granularity": q.spec.granularity,
            "group_size": q.spec.group_size, "symmetric": q.spec.symmetric, "modules": q.modules,
            "exclude": q.exclude, "start_step": self.step_args["start_step"],
        }
        if q.spec.groups is not None or q.scheme != "affine":  # only when set: older state keys stay
            ident.update(groups=q.spec.groups, scheme=q.scheme)
        return ident

    # ---------------------------------------------------------------- schedule
    def bits_at(self, step: int) -> int | None:
        """Width used by the forward once ``step`` optimizer steps are done (None: not quantized yet)."""
        return self.quantizer.bits_at(step)

    def _apply_step(self, step: int) -> None:
        self.quantizer.step(step)

    @property
    def current_bits(self) -> int | None:
        return self.quantizer.current_bits

    @property
    def targets(self) -> dict[str, nn.Module]:
        """``{qualified name: module}`` quantized by this callback (after ``setup``)."""
        return dict(self.modules_touched)

    @property
    def _quantizers(self) -> dict[str, WeightFakeQuant]:
        return self.quantizer.quantizers

    # ---------------------------------------------------------------- hooks
    def attach_model(self, trainer: pl.Trainer | None, model: nn.Module, stage: str | None) -> None:
        self.modules_touched = self.quantizer.attach(model)
        if self.steps_resolved:
            self.quantizer.step(optimizer_step_count(trainer) if trainer is not None else 0)
        else:  # fractions of a fit not resolved yet (no fit started, no checkpoint): full precision until then
            self.quantizer.hold()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        offset = self.clock.start(optimizer_step_count(trainer))
        self.resolve_schedule(total_optimizer_steps(trainer), offset)
        self.quantizer.step(self.clock.now(optimizer_step_count(trainer)))

    def resolve_schedule(self, total: int | None, offset: int = 0) -> None:
        """Fix the schedule for a fit of ``total`` optimizer steps (None: unknown) that starts ``offset``
        steps into the model's schedule (fractions: ``offset`` + steps of this fit, on the first fit only).

        Raises:
            ValueError: fractions with an unknown number of steps; a schedule whose final width
                (``bits``) would first be used after the fit's last optimizer step.
        """
        name = type(self).__name__
        start, period = self.step_args["start_step"], self.step_args["period"]
        if total is None:
            if not self.steps_resolved:
                which = ", ".join(f"`{k}`={v!r}" for k, v in self.step_args.items() if args.is_fraction(v))
                raise ValueError(
                    f"{name}: {which} need the number of optimizer steps of this fit, which is unknown "
                    f"(max_steps=-1 with an unsized dataloader); set Trainer(max_steps=...) or pass integer steps."
                )
            return
        if not self.steps_resolved:
            self.quantizer.set_schedule(
                offset + args.resolve_step(start, total) if args.is_fraction(start) else start,
                None if period is None else args.resolve_step(period, total, duration=True),
            )
            self.steps_resolved = True
        last, final = offset + total - 1, self.quantizer.last_switch_step()
        if final > last and final > self.clock.seen:  # (a schedule finished in an earlier fit stays finished)
            what = "`start_step`" + (" + `period` steps per width" if len(self.levels) > 1 else "")
            self.schedule_cannot_finish(
                f"{name}: {what} (start_step={start!r}, period={period!r}) first reach {self.bits} bits after "
                f"{final} optimizer steps, but this fit's last optimizer step is {last} ({total} steps), so the "
                f"schedule cannot finish; lower `start_step`/`period`, pass fractions of the fit, or train longer."
            )

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.quantizer.step(self.clock.now(optimizer_step_count(trainer)))

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.clock.now(optimizer_step_count(trainer))  # after the optimizer step: what a checkpoint records

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.now(optimizer_step_count(trainer))

    def remove(self) -> None:
        """Take the quantizers off the modules (full-precision forward again)."""
        self.quantizer.remove()
        super().remove()

    def reset_state(self) -> None:
        """Forget the old model's schedule position (the quantizers went with :meth:`remove`)."""
        self.quantizer.steps_done = 0
        self.clock.reset()
        self.steps_resolved = not any(args.is_fraction(v) for v in self.step_args.values())
        self._pending_state = None

    # ---------------------------------------------------------------- state
    @override
    def own_state(self) -> dict[str, Any]:
        """The quantizer's state, the clock, and the resolved ``period`` (fractions resolve alike on resume)."""
        return {**self.quantizer.state_dict(), "clock": self.clock.state_dict(), "period": self.quantizer.period}

    def apply_state(self, state: dict[str, Any]) -> None:
        self.quantizer.load_state_dict(state)
        self.clock.load_state_dict(state.get("clock"))

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.steps_resolved and "start_step" in state_dict:
            # fractions: the checkpoint holds the optimizer steps they were resolved to in its fit
            self.quantizer.set_schedule(int(state_dict["start_step"]), state_dict.get("period", self.quantizer.period))
            self.steps_resolved = True
        self.quantizer.check_state(state_dict)  # another bits schedule: names levels and start_step
        super().load_state_dict(state_dict)  # then every other argument
