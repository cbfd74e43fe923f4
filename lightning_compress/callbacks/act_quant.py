"""``ActQuant``: quantization-aware training of layer inputs (activations)."""

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
from lightning_compress.core.act_quant import ActFakeQuant
from lightning_compress.core.act_quantizer import ActQuantizer


class ActQuant(CompressionCallback):
    """Fake-quantizes the input of every targeted Linear / Conv2d / Hugging Face ``Conv1D``
    (straight-through in backward).

    * ``range="dynamic"``: scale (and zero-point) computed at every call, per token for Linear
      (over the last dimension) and per image for Conv2d (over C, H, W).
    * ``range="static"``: one per-tensor range per layer, learned in training as an exponential
      moving average (``momentum``) of each batch's min / max, averaged over ranks after every
      training batch (so all ranks quantize alike), frozen in eval mode.  The ranges live in
      non-persistent module buffers (the model's ``state_dict`` keys do not change) and in this
      callback's ``state_dict`` (so they survive checkpoints, DeepSpeed ones included).

    A thin adapter over :class:`lightning_compress.core.act_quantizer.ActQuantizer` (use it directly
    from a plain PyTorch loop): attached in ``setup`` of every stage; two instances on disjoint
    ``modules`` coexist in one Trainer (their ``state_key`` differs, see :meth:`identity`).
    ``validate`` / ``test`` / ``predict`` with ``ckpt_path`` use the checkpoint's static ranges; a second
    ``fit`` of the same model goes on updating them; another model re-targets the callback (new
    quantizers, no range yet); resuming needs every constructor argument of the saving run
    (``ValueError`` naming the argument otherwise).

    Args:
        bits: activation width in bits (8 or 4).
        range: ``"dynamic"`` or ``"static"`` (see above).
        symmetric: symmetric (zero-point 0) or asymmetric (zero-point from the range).
        modules: regexes of module names (Linear, Conv2d); None: all except the last one.
        exclude: regexes of module names to leave alone.
        momentum: EMA factor of the static range (0 <= momentum < 1).
        start_step: inputs pass unquantized until this many optimizer steps are done on the model
            (counted across fits, as WeightQuant's schedule; DeepSpeed's ``schedule_offset``); a float in
            ``(0, 1]`` is a fraction of the fit's optimizer steps, resolved at ``on_train_start`` (full
            precision until then); a start after the fit's last optimizer step is an error there.

    Raises:
        TypeError: an argument of the wrong type (``bits="8"``, ``symmetric="no"``, ``momentum="0.9"``).
        ValueError: unsupported ``bits``, ``range`` or ``momentum``, ``modules=[]`` (``__init__``); a regex matching
            nothing or no Linear / Conv2d to quantize (``setup``).

    Example (``model``, ``datamodule``: yours; ``x``: a batch of its input)::

        import torch
        from lightning.pytorch import Trainer
        from lightning_compress import ActQuant, RedundancyClean, WeightQuant

        callbacks = [WeightQuant(bits=8), ActQuant(bits=8, range="static"), RedundancyClean("slim")]
        Trainer(max_steps=1000, callbacks=callbacks).fit(model, datamodule)
        slim = torch.export.load("slim/model.pt2").module()  # runs without your model's code
        y = slim(x)  # exported in eval mode: call it as it is (it has no working .eval())
    """

    def __init__(
        self,
        bits: int = 8,
        range: Literal["dynamic", "static"] = "dynamic",
        symmetric: bool = True,
        modules: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        momentum: float = 0.95,
        start_step: int | float = 0,
    ) -> None:
        super().__init__()
        #: ``start_step`` as given: an int (optimizer steps) or a fraction of the fit (resolved at on_train_start)
        self.step_arg = args.check_step(start_step, "start_step", type(self).__name__)
        self.steps_resolved = not args.is_fraction(start_step)
        self.quantizer = ActQuantizer(
            None, bits, range, symmetric, modules, exclude, momentum, start_step=start_step if self.steps_resolved else 0,
            owner=self.owner, name=type(self).__name__,
        )
        self.start_step = start_step
        #: optimizer steps done on the model across fits (``start_step`` is counted on it)
        self.clock = ScheduleClock()
        self.bits = bits
        self.range = range
        self.symmetric = self.quantizer.symmetric
        self.modules = modules
        self.exclude = exclude
        self.momentum = self.quantizer.momentum

    def identity(self) -> dict[str, Any]:
        q = self.quantizer
        return {
            "bits": q.bits, "range": q.range, "symmetric": q.symmetric, "modules": q.modules,
            "exclude": q.exclude, "momentum": q.momentum, **({"start_step": self.step_arg} if self.step_arg else {}),
        }

    def arguments(self) -> dict[str, Any]:
        """What the saved ranges depend on: all of :meth:`identity` but ``momentum`` (a resumed run may
        change it: the ranges go on with the new EMA factor)."""
        return {k: v for k, v in self.identity().items() if k != "momentum"}

    @property
    def targets(self) -> dict[str, nn.Module]:
        """``{qualified name: module}`` whose input this callback quantizes (after ``setup``)."""
        return dict(self.modules_touched)

    @property
    def _quantizers(self) -> dict[str, ActFakeQuant]:
        return self.quantizer.quantizers

    def ranges(self) -> dict[str, tuple[float, float] | None]:
        """Static ranges ``{module name: (lo, hi)}`` (None where nothing was learned yet)."""
        return self.quantizer.ranges()

    def attach_model(self, trainer: pl.Trainer | None, model: nn.Module, stage: str | None) -> None:
        self.modules_touched = self.quantizer.attach(model)
        self.quantizer.step(max(self.clock.seen, optimizer_step_count(trainer) if trainer is not None else 0))
        if not self.steps_resolved:  # a fractional start_step not resolved yet: full precision until then
            for q in self.quantizer.quantizers.values():
                q.enabled = False

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        offset = self.clock.start(optimizer_step_count(trainer))
        total, name = total_optimizer_steps(trainer), type(self).__name__
        if not self.steps_resolved:
            if total is None:
                raise ValueError(f"{name}: `start_step`={self.step_arg!r} needs the number of optimizer steps of this fit, "
                                 f"which is unknown (max_steps=-1 with an unsized dataloader); set Trainer(max_steps=...).")
            self.quantizer.start_step, self.steps_resolved = offset + args.resolve_step(self.step_arg, total), True
        start = self.quantizer.start_step
        if total is not None and start > offset + total - 1 and start > self.clock.seen:
            self.schedule_cannot_finish(
                f"{name}: `start_step`={self.step_arg!r} (step {start}) is after this fit's last optimizer step "
                f"({offset + total - 1}: {total} optimizer steps), so activations would never be quantized; lower "
                f"start_step, pass a fraction of the fit, or train longer."
            )
        self.quantizer.step(self.clock.now(optimizer_step_count(trainer)))

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.quantizer.step(self.clock.now(optimizer_step_count(trainer)))

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # every micro-batch (not only at accumulation boundaries): every forward updates the EMA, and
        # under DeepSpeed the boundary flag has already moved on when this hook runs
        self.quantizer.sync_ranges()
        self.clock.now(optimizer_step_count(trainer))  # after the optimizer step: what a checkpoint records

    def remove(self) -> None:
        """Take the quantizers off the modules."""
        self.quantizer.remove()
        super().remove()

    def reset_state(self) -> None:
        """Forget the old model's ranges (they went with the quantizers in :meth:`remove`)."""
        self.quantizer._pending = None
        self._pending_state = None
        self.clock.reset()
        if args.is_fraction(self.step_arg):
            self.steps_resolved = False

    @override
    def own_state(self) -> dict[str, Any]:
        state = self.quantizer.state_dict()
        if self.start_step:  # only then does the position matter (older checkpoints stay the same)
            state["clock"] = self.clock.state_dict()
        if args.is_fraction(self.step_arg) and self.steps_resolved:
            state["start_step"] = self.quantizer.start_step  # the fraction, resolved
        return state

    def apply_state(self, state: dict[str, Any]) -> None:
        if not self.steps_resolved and state.get("start_step") is not None:  # as resolved in the saving fit
            self.quantizer.start_step, self.steps_resolved = int(state["start_step"]), True
        self.clock.load_state_dict(state.get("clock"))
        self.quantizer.load_state_dict(state)
        if self.quantizer.is_attached:
            self.quantizer.step(max(self.quantizer.steps_done, self.clock.seen))

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.is_attached and set(state_dict.get("ranges", {})) - set(self.quantizer.targets):
            self.quantizer.load_state_dict(state_dict)  # raises, naming the module it does not target
        super().load_state_dict(state_dict)
