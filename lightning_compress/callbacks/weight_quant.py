"""``WeightQuant``: quantization-aware training of weights (fake quantization, straight-through)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from lightning_compress.core import masking
from lightning_compress.core.quantize import (
    GRANULARITIES,
    SUPPORTED_WEIGHT_BITS,
    WEIGHT_QUANT_KIND,
    QuantSpec,
    WeightFakeQuant,
    check_bits,
    check_group_size,
)
from lightning_compress.core.quantize import bit_levels
from lightning_compress.core.select import select_modules

from lightning_compress.callbacks._steps import optimizer_step_count

_COUNTER = itertools.count()


class WeightQuant(Callback):
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

    The quantizers stay on the modules after ``fit`` (the model keeps its quantized forward, and
    ``RedundancyClean`` / :func:`core.quantize.pack_state` read them); :meth:`remove` takes them off.

    Args:
        bits: final weight width in bits, one of 8, 4, 3, 2 (ternary), 1 (binary).
        start_bits: first width of the schedule (None: ``bits`` from the start).
        period: optimizer steps spent at each width of the schedule (needed with ``start_bits``).
        granularity: one scale per ``"tensor"``, per output ``"channel"``, or per ``"group"`` of
            ``group_size`` consecutive input values of each output channel.
        group_size: values per group (input dimension; Conv2d: ``in*kh*kw``) for ``"group"``.
        symmetric: symmetric (zero-point 0) or asymmetric affine quantization (affine widths only).
        modules: regexes of module names to quantize (Linear, Conv2d, Embedding); None: every
            Linear and Conv2d except the last one (the classifier).
        exclude: regexes of module names to leave alone.
        start_step: optimizer steps to run in full precision before quantization starts.

    Raises:
        ValueError: unsupported ``bits`` / ``start_bits``, ``start_bits < bits``, a bad ``period``,
            ``granularity`` or ``group_size`` (in ``__init__``); ``group_size`` not dividing a
            module's input dimension, a regex matching nothing, or no quantizable layer (in ``setup``).

    Example::

        trainer = Trainer(callbacks=[WeightQuant(bits=4, start_bits=8, period=500, granularity="group", group_size=64)])
    """

    def __init__(
        self,
        bits: int = 8,
        start_bits: int | None = None,
        period: int | None = None,
        granularity: Literal["tensor", "channel", "group"] = "channel",
        group_size: int | None = None,
        symmetric: bool = True,
        modules: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        start_step: int = 0,
    ) -> None:
        name = type(self).__name__
        check_bits(bits, SUPPORTED_WEIGHT_BITS, "bits", name)
        if start_bits is not None:
            check_bits(start_bits, SUPPORTED_WEIGHT_BITS, "start_bits", name)
            if start_bits < bits:
                raise ValueError(f"{name}: `start_bits`={start_bits} must be >= `bits`={bits} (bits only step down).")
        if start_bits is not None and start_bits != bits:
            if not isinstance(period, int) or isinstance(period, bool) or period < 1:
                raise ValueError(
                    f"{name}: `period`={period!r} must be a positive number of optimizer steps when "
                    f"`start_bits` ({start_bits}) differs from `bits` ({bits})."
                )
        elif period is not None and (not isinstance(period, int) or isinstance(period, bool) or period < 1):
            raise ValueError(f"{name}: `period`={period!r} must be a positive number of optimizer steps.")
        if granularity not in GRANULARITIES:
            raise ValueError(f"{name}: `granularity`={granularity!r} must be one of {list(GRANULARITIES)}.")
        if not isinstance(start_step, int) or isinstance(start_step, bool) or start_step < 0:
            raise ValueError(f"{name}: `start_step`={start_step!r} must be a non-negative integer.")
        self.spec = QuantSpec(bits, granularity, group_size, symmetric).validate(name)
        if granularity != "group" and group_size is not None:
            raise ValueError(f"{name}: `group_size` is only used with granularity='group' (got {granularity!r}).")
        self.bits = bits
        self.start_bits = start_bits if start_bits is not None else bits
        self.period = period
        self.modules = modules
        self.exclude = exclude
        self.start_step = start_step
        self.levels = bit_levels(self.start_bits, bits)
        self._owner = f"{name}#{next(_COUNTER)}"
        self._targets: dict[str, nn.Module] = {}
        self._quantizers: dict[str, WeightFakeQuant] = {}
        self._step = 0
        self._pending: dict[str, Any] | None = None

    # ---------------------------------------------------------------- schedule
    def bits_at(self, step: int) -> int | None:
        """Width used by the forward once ``step`` optimizer steps are done (None: not quantized yet)."""
        if step < self.start_step:
            return None
        if self.period is None or len(self.levels) == 1:
            return self.levels[-1]
        k = (step - self.start_step) // self.period
        return self.levels[min(k, len(self.levels) - 1)]

    def _apply_step(self, step: int) -> None:
        self._step = step
        bits = self.bits_at(step)
        for q in self._quantizers.values():
            q.enabled = bits is not None
            q.bits = bits if bits is not None else self.start_bits

    @property
    def current_bits(self) -> int | None:
        return self.bits_at(self._step)

    @property
    def targets(self) -> dict[str, nn.Module]:
        """``{qualified name: module}`` quantized by this callback (after ``setup``)."""
        return dict(self._targets)

    # ---------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._targets:
            return
        name = type(self).__name__
        if self.modules is None:
            targets = select_modules(pl_module, None, self.exclude, (nn.Linear, nn.Conv2d), owner=name, exclude_last=True)
        else:
            targets = select_modules(pl_module, self.modules, self.exclude, (nn.Linear, nn.Conv2d, nn.Embedding), owner=name)
        for mod_name, module in targets.items():
            spec = self.spec
            if isinstance(module, nn.Embedding) and spec.granularity == "tensor":
                spec = QuantSpec(spec.bits, "channel", None, spec.symmetric)
            check_group_size(tuple(getattr(module.weight, "ds_shape", module.weight.shape)), spec, mod_name, name)
            q = WeightFakeQuant(spec)
            masking.add_param_transform(
                module, "weight", self._owner, q, kind=WEIGHT_QUANT_KIND, priority=masking.QUANT_PRIORITY, module_name=mod_name
            )
            self._quantizers[mod_name] = q
        self._targets = targets
        step = optimizer_step_count(trainer)
        if self._pending is not None:
            step = max(step, int(self._pending.get("step", 0)))
            self._pending = None
        self._apply_step(step)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._apply_step(optimizer_step_count(trainer))

    def remove(self) -> None:
        """Take the quantizers off the modules (full-precision forward again)."""
        for module in self._targets.values():
            masking.remove_owner(module, self._owner)
        self._targets = {}
        self._quantizers = {}

    # ---------------------------------------------------------------- state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"step": self._step, "bits": self.current_bits, "levels": list(self.levels), "start_step": self.start_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if list(state_dict.get("levels", self.levels)) != list(self.levels) or state_dict.get("start_step", self.start_step) != self.start_step:
            raise ValueError(
                f"{type(self).__name__}: checkpoint bits schedule levels={state_dict.get('levels')} "
                f"start_step={state_dict.get('start_step')} differs from this callback's levels={self.levels} "
                f"start_step={self.start_step}; resume with the same `bits`, `start_bits` and `start_step`."
            )
        if self._targets:
            self._apply_step(max(self._step, int(state_dict["step"])))
        else:
            self._pending = dict(state_dict)
