"""``WeightQuantizer``: quantization-aware training of weights from any training loop (pure PyTorch).

The driver behind the ``WeightQuant`` callback, usable without Lightning::

    wq = WeightQuantizer(model, bits=4, start_bits=8, period=100)   # attaches now
    for step, (x, y) in enumerate(loader):     # step = optimizer steps done before this batch
        wq.step(step)                          # sets the width the forward uses
        loss_fn(model(x), y).backward()
        opt.step(); opt.zero_grad()
    wq.remove()                                # or keep the quantizers for export / pack_state

It also holds the attach path every weight quantizer of the package goes through
(:func:`select_weight_targets` + :func:`attach_weight_quantizers`, used by post-training
:func:`lightning_compress.quantize` as well).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from torch import nn

from lightning_compress.core import args, masking
from lightning_compress.core.conv1d import conv1d_types, is_conv1d, out_in_shape
from lightning_compress.core.direct_reads import guard_direct_reads
from lightning_compress.core.fake_quant import WeightFakeQuant
from lightning_compress.core.float_quant import is_float_scheme
from lightning_compress.core.quant_grid import (
    GRANULARITIES,
    SCHEMES,
    WEIGHT_QUANT_KIND,
    Granularity,
    Observer,
    QuantSpec,
    Scheme,
    bit_levels,
    check_bits,
    check_group_size,
    supported_bits,
)
from lightning_compress.core.select import select_modules

_COUNTER = itertools.count()


def select_weight_targets(
    model: nn.Module, modules: Sequence[str] | None, exclude: Sequence[str] | None, name: str
) -> dict[str, nn.Module]:
    """``{qualified name: module}`` whose weight gets quantized: with ``modules`` None every Linear,
    Conv2d and Hugging Face ``Conv1D`` except the last one (the classifier); else the Linear / Conv2d /
    Conv1D / Embedding modules the regexes name.  ``exclude`` regexes are left alone.

    Raises:
        ValueError: a regex matches nothing, or no quantizable module is left (messages start ``name:``).
    """
    conv1d = conv1d_types(model)
    if modules is None:
        return select_modules(model, None, exclude, (nn.Linear, nn.Conv2d, *conv1d), owner=name, exclude_last=True)
    return select_modules(model, modules, exclude, (nn.Linear, nn.Conv2d, nn.Embedding, *conv1d), owner=name)


def attach_weight_quantizers(
    targets: dict[str, nn.Module],
    spec: QuantSpec,
    owner: str,
    name: str,
    *,
    observer: Observer = "minmax",
    calibrate: bool = False,
) -> dict[str, WeightFakeQuant]:
    """Put one :class:`WeightFakeQuant` by ``spec`` on the ``weight`` of every module of ``targets``
    (kind ``"weight_quant"``, after masks) under ``owner``; returns them by module name.

    ``nn.Embedding`` weights are quantized per row (``granularity="tensor"`` is read as ``"channel"``;
    with ``spec.scheme="deepspeed"`` every granularity is, DeepSpeed's token-wise Embedding quantizer).
    A Hugging Face ``Conv1D`` weight (``[in, out]``) is quantized as its ``[out, in]`` transpose.
    ``calibrate``: fix each quantizer's clipping ranges now from the weight as forward sees it (masks
    applied) with ``observer`` (post-training); else they are recomputed from the weight at every call.

    Raises:
        ValueError: ``spec.group_size`` does not divide a module's input dimension; another owner
            already quantizes one of the weights.
    """
    quantizers: dict[str, WeightFakeQuant] = {}
    try:
        for mod_name, module in targets.items():
            mspec = spec
            if isinstance(module, nn.Embedding) and (spec.granularity == "tensor" or spec.scheme == "deepspeed"):
                mspec = replace(spec, granularity="channel", group_size=None, groups=None)
            check_group_size(out_in_shape(module), mspec, mod_name, name)
            q = WeightFakeQuant(mspec, observer=observer, transposed=is_conv1d(module))
            if calibrate:
                q.calibrate(masking.effective_param(module, "weight"))
            masking.add_param_transform(
                module, "weight", owner, q, kind=WEIGHT_QUANT_KIND, priority=masking.QUANT_PRIORITY, module_name=mod_name
            )
            quantizers[mod_name] = q
    except Exception:  # all or nothing: no half-quantized model
        for mod_name in quantizers:
            masking.remove_owner(targets[mod_name], owner)
        raise
    return quantizers


class WeightQuantizer:
    """Fake-quantizes the weights of a model's targeted modules in forward (straight-through in backward).

    The quantizers ride on the modules' forward (``core/masking.py``, kind ``"weight_quant"``, after
    masks); the optimizer keeps full-precision weights.  ``bits=2`` is ternary (TWN scaling), ``bits=1``
    binary (XTC, ``alpha = mean|w|``), see :mod:`lightning_compress.core.quantize`.

    Bits schedule (DeepSpeed's MoQ idea): with ``start_bits`` the width steps down through
    ``levels = [b in (8, 4, 3, 2, 1) with bits <= b <= start_bits]`` (descending).  After
    :meth:`step` with ``step`` = optimizer steps done: below ``start_step`` the weights are not
    quantized; from ``start_step + k * period`` on the forward uses ``levels[min(k, len(levels) - 1)]``
    (:meth:`bits_at`).  Example: ``start_bits=8, bits=4, period=100`` runs steps 0..99 at 8 bits and
    from step 100 on at 4 bits.

    Args:
        model: the model to attach to now (None: call :meth:`attach` later).
        bits: final weight width in bits, one of 8, 4, 3, 2 (ternary), 1 (binary).
        start_bits: first width of the schedule (None: ``bits`` from the start).
        period: optimizer steps spent at each width of the schedule (needed with ``start_bits``).
        granularity: one scale per ``"tensor"``, per output ``"channel"``, or per ``"group"`` of
            ``group_size`` consecutive input values of each output channel.
        group_size: values per group (input dimension; Conv2d: ``in*kh*kw``) for ``"group"``.
        symmetric: symmetric (zero-point 0) or asymmetric affine quantization (affine widths only).
        modules: regexes of module names to quantize (Linear, Conv2d, Embedding); None: every Linear
            and Conv2d except the last one (the classifier).
        exclude: regexes of module names to leave alone.
        start_step: optimizer steps to run in full precision before quantization starts.
        groups: ``granularity="row_block"``: the number of equal contiguous chunks of the flattened
            ``[out, in]`` weight, one scale each (DeepSpeed's ``quantize_groups``).
        scheme: ``"affine"`` (default) or ``"deepspeed"``: DeepSpeed's quantizer grids (see
            :class:`~lightning_compress.core.quant_grid.QuantSpec`; any width 1..16, Embedding weights
            per row) and DeepSpeed's MoQ bits schedule: the width starts at ``start_bits`` and loses one
            bit once ``start_step + period * 2**(k-1)`` optimizer steps are done (k = 1, 2, ...; the
            period doubles after each drop; ``period=0``: one bit per step) until ``bits``.
        owner: the id the quantizers are registered under (default ``"WeightQuantizer#<n>"``).
        name: the name error messages start with (default ``"WeightQuantizer"``).

    Steps are integers here (a fraction of a fit is resolved by the ``WeightQuant`` callback, or by
    :func:`lightning_compress.core.args.resolve_step` for your own loop).

    Raises:
        TypeError: an argument of the wrong type (:mod:`lightning_compress.core.args`: ``bits="8"``,
            ``symmetric="no"``, ``start_step=1.7``, ``modules=5``).
        ValueError: unsupported ``bits`` / ``start_bits``, ``start_bits < bits``, a bad ``period`` (missing
            with ``start_bits > bits``, given without a schedule), ``granularity``, ``group_size`` or
            ``start_step``, ``modules=[]``, a regex that does not compile (at construction); ``group_size`` not
            dividing a module's input dimension, a regex matching nothing, or no quantizable layer
            (in :meth:`attach`); a state with another schedule (:meth:`load_state_dict`).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        bits: int = 8,
        start_bits: int | None = None,
        period: int | None = None,
        granularity: Granularity = "channel",
        group_size: int | None = None,
        symmetric: bool = True,
        modules: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        start_step: int = 0,
        *,
        groups: int | None = None,
        scheme: Scheme = "affine",
        owner: str | None = None,
        name: str | None = None,
    ) -> None:
        name = name or type(self).__name__
        args.check_choice(scheme, "scheme", name, SCHEMES)
        check_bits(bits, supported_bits(scheme), "bits", name)
        if start_bits is not None:
            check_bits(start_bits, supported_bits(scheme), "start_bits", name)
            if start_bits < bits:
                raise ValueError(f"{name}: `start_bits`={start_bits} must be >= `bits`={bits} (bits only step down).")
        self.spec = QuantSpec(bits, granularity, group_size, symmetric, groups, scheme).validate(name)
        self.name = name
        self.owner = owner or f"{type(self).__name__}#{next(_COUNTER)}"
        self.bits = bits
        self.start_bits = start_bits if start_bits is not None else bits
        self.scheme = scheme
        self.modules = args.check_regexes(modules, "modules", name)
        self.exclude = args.check_regexes(exclude, "exclude", name, allow_empty=True)
        self.set_schedule(start_step, period)
        #: ``{qualified name: module}`` quantized (after :meth:`attach`)
        self.targets: dict[str, nn.Module] = {}
        #: ``{qualified name: WeightFakeQuant}`` on those modules
        self.quantizers: dict[str, WeightFakeQuant] = {}
        #: optimizer steps done, as last passed to :meth:`step`
        self.steps_done = 0
        if model is not None:
            self.attach(model)

    # ---------------------------------------------------------------- schedule
    def set_schedule(self, start_step: int, period: int | None) -> None:
        """Set the bits schedule's optimizer steps (integers; see the class docstring).

        Raises:
            TypeError: a step that is not an int (``1.7``, ``"10"``, ``True``).
            ValueError: ``start_step < 0``; ``period < 1``; no ``period`` although ``start_bits > bits``;
                a ``period`` although there is no schedule (``start_bits`` None or equal to ``bits``:
                it would be ignored).
        """
        name = self.name
        start_step = args.check_step(start_step, "start_step", name, allow_fraction=False)
        min_period = 0 if self.scheme == "deepspeed" else 1  # DeepSpeed: period 0 = one bit less every step
        period = args.check_step(period, "period", name, minimum=min_period, allow_none=True, allow_fraction=False)
        if self.start_bits != self.bits and period is None:
            args.fail(name, "period", period, f"must be a positive number of optimizer steps when `start_bits` "
                      f"({self.start_bits}) differs from `bits` ({self.bits})", "pass the optimizer steps spent at each width")
        if self.start_bits == self.bits and period is not None:
            args.fail(name, "period", period, f"has no effect without a bits schedule (`start_bits`={self.start_bits} = `bits`)",
                      f"drop period, or set start_bits > bits (e.g. start_bits=8, bits={self.bits})"
                      if self.bits < 8 else "drop period (8 bits is the widest width; nothing to step down from)")
        self.start_step = start_step
        self.period = period
        if is_float_scheme(self.scheme):  # a float format has one width: no bits schedule
            self.levels = [self.bits]
        elif self.scheme == "deepspeed":
            self.levels = list(range(self.start_bits, self.bits - 1, -1))
        else:
            self.levels = bit_levels(self.start_bits, self.bits)

    def last_switch_step(self) -> int:
        """Optimizer steps done when the final width is first used (``start_step`` without a schedule)."""
        n = len(self.levels) - 1
        if n == 0 or self.period is None:
            return self.start_step
        if self.scheme == "deepspeed":  # see bits_at: the last drop once done >= max(period * 2**(n-1), n)
            return self.start_step + max(self.period * 2 ** (n - 1), n)
        return self.start_step + n * self.period

    def hold(self) -> None:
        """Switch every quantizer off until the next :meth:`step` (a schedule not known yet)."""
        for q in self.quantizers.values():
            q.enabled = False

    def bits_at(self, step: int) -> int | None:
        """Width used by the forward once ``step`` optimizer steps are done (None: not quantized yet)."""
        if step < self.start_step:
            return None
        if self.period is None or len(self.levels) == 1:
            return self.levels[-1]
        done = step - self.start_step
        if self.scheme == "deepspeed":  # MoQ: drop k (1-based) once done >= max(period * 2**(k-1), k)
            k = 0
            while k + 1 < len(self.levels) and done >= max(self.period * 2**k, k + 1):
                k += 1
            return self.levels[k]
        k = done // self.period
        return self.levels[min(k, len(self.levels) - 1)]

    def step(self, step: int) -> None:
        """Set the width of every quantizer for ``step`` optimizer steps done (call before the forward)."""
        self.steps_done = int(step)
        bits = self.bits_at(self.steps_done)
        for q in self.quantizers.values():
            q.enabled = bits is not None
            q.bits = bits if bits is not None else self.start_bits

    @property
    def current_bits(self) -> int | None:
        """Width the forward uses now (None: not quantized yet)."""
        return self.bits_at(self.steps_done)

    # ---------------------------------------------------------------- attach / remove
    @property
    def is_attached(self) -> bool:
        return bool(self.targets)

    def attach(self, model: nn.Module) -> dict[str, nn.Module]:
        """Put the quantizers on ``model``'s targets (see ``modules``) at the width of the current step;
        returns the targets.  Call :meth:`remove` before attaching to another model."""
        if self.targets:
            raise ValueError(f"{self.name}: already attached to {len(self.targets)} modules; call remove() first.")
        targets = select_weight_targets(model, self.modules, self.exclude, self.name)
        self.quantizers = attach_weight_quantizers(targets, self.spec, self.owner, self.name)
        guard_direct_reads(model)
        self.targets = targets
        self.step(self.steps_done)
        return targets

    def remove(self) -> None:
        """Take the quantizers off the modules (full-precision forward again; the weights stay)."""
        for module in self.targets.values():
            masking.remove_owner(module, self.owner)
        self.targets = {}
        self.quantizers = {}

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """``{"step", "bits", "levels", "start_step"}``: where the schedule stands."""
        return {"step": self.steps_done, "bits": self.current_bits, "levels": list(self.levels), "start_step": self.start_step}

    def check_state(self, state: dict[str, Any]) -> None:
        """Raise ValueError when ``state`` comes from another bits schedule."""
        if list(state.get("levels", self.levels)) != list(self.levels) or state.get("start_step", self.start_step) != self.start_step:
            raise ValueError(
                f"{self.name}: checkpoint bits schedule levels={state.get('levels')} "
                f"start_step={state.get('start_step')} differs from this callback's levels={self.levels} "
                f"start_step={self.start_step}; resume with the same `bits`, `start_bits` and `start_step`."
            )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the schedule at the stored step (never going back); attached or not."""
        self.check_state(state)
        self.step(max(self.steps_done, int(state["step"])))


__all__ = ["WeightQuantizer", "attach_weight_quantizers", "select_weight_targets"]
