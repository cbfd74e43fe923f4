"""Fake quantizers (straight-through estimator): weights (:func:`fake_quant_weight`, the transform
:class:`WeightFakeQuant`, integer codes :func:`quantize_weight_int`) and activations
(:func:`fake_quant_dynamic`, :func:`fake_quant_static`); :func:`weight_quantizer` /
:func:`pre_quant_weight` read them back from a module.  Formats: :mod:`lightning_compress.core.quantize`.
Eager calls run the fused kernels of :mod:`lightning_compress.core.fake_quant_fused` (bit-identical to
the ``torch.fake_quantize_*`` / straight-through formulas they replace); a weight's fake-quantized value
is computed once per optimizer step (:mod:`lightning_compress.core.fake_quant_cache`) and once per
evaluation.  Pure PyTorch."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from lightning_compress.core import fake_quant_cache, masking
from lightning_compress.core.fake_quant_fused import capture, fast_path, straight_through
from lightning_compress.core.float_quant import fake_quant_float_weight, is_float_scheme
from lightning_compress.core.quant_grid import (
    WEIGHT_QUANT_KIND,
    QuantSpec,
    affine_params,
    as_rows,
    deepspeed_affine_params,
    fake_quant_rows,
    qrange,
    ste,
)
from lightning_compress.core.quant_observers import min_max, row_range


def ternary_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes in {-1, 0, 1}, alpha per row) by TWN: delta = 0.7 mean|w|, alpha = mean |w| > delta."""
    a = rows.detach().float().abs()
    delta = 0.7 * a.mean(1, keepdim=True)
    keep = a > delta
    alpha = (a * keep).sum(1) / keep.sum(1).clamp_min(1)
    codes = torch.sign(rows.detach().float()) * keep
    return codes, alpha


def binary_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes in {-1, 1}, alpha = mean|w| per row)."""
    r = rows.detach().float()
    alpha = r.abs().mean(1)
    codes = torch.where(r >= 0, torch.ones_like(r), -torch.ones_like(r))
    return codes, alpha


def _rows(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    return as_rows(w, spec.granularity, spec.group_size, spec.groups)


def _deepspeed_grid(
    rows: torch.Tensor, spec: QuantSpec, ranges: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    lo, hi = ranges if ranges is not None else min_max(rows.detach().float(), 1)
    return deepspeed_affine_params(lo, hi, spec.bits, spec.symmetric)


def _deepspeed_codes(rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Codes computed with DeepSpeed's operations (``round((x - zero_point * scale) / scale)`` with its
    float zero point ``round(min / scale) * scale = -zp * scale``), so ties round as in DeepSpeed."""
    s = scale.unsqueeze(1)
    return torch.clamp(torch.round((rows.detach().float() + zp.unsqueeze(1).float() * s) / s), qmin, qmax)


def _deepspeed_values(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    s = scale.unsqueeze(1)
    return q * s - zp.unsqueeze(1).float() * s


def fake_quant_weight(
    w: torch.Tensor,
    spec: QuantSpec,
    ranges: tuple[torch.Tensor, torch.Tensor] | None = None,
    observer: str = "minmax",
    percentile: float = 0.9999,
) -> torch.Tensor:
    """Fake-quantize ``w`` by ``spec`` (same shape and dtype, STE gradient).

    ``ranges``: fixed per-row (lo, hi) from an earlier calibration; else ``observer`` computes them
    (``scheme="deepspeed"``: min / max, as DeepSpeed).  A float ``scheme`` (FP8 / MX / NVFP4) takes its
    scales from the weight's absolute maximum (:mod:`lightning_compress.core.float_quant`).
    """
    if is_float_scheme(spec.scheme):
        return fake_quant_float_weight(w, spec)
    rows = _rows(w, spec).float()
    if spec.bits == 2:
        codes, alpha = ternary_rows(rows)
        out = ste(rows, codes * alpha.unsqueeze(1))
    elif spec.bits == 1:
        codes, alpha = binary_rows(rows)
        out = ste(rows, codes * alpha.unsqueeze(1))
    elif spec.scheme == "deepspeed":
        scale, zp, qmin, qmax = _deepspeed_grid(rows, spec, ranges)
        q = _deepspeed_codes(rows, scale, zp, qmin, qmax)
        out = ste(rows, _deepspeed_values(q, scale, zp))
    else:
        lo, hi = ranges if ranges is not None else row_range(rows, observer, spec.bits, spec.symmetric, percentile)
        scale, zp = affine_params(lo, hi, spec.bits, spec.symmetric)
        bounds = (lo, hi) if ranges is None and observer == "minmax" else None  # the rows' exact min / max
        out = fake_quant_rows(rows, scale, zp, spec.bits, spec.symmetric, bounds)
    return out.reshape(w.shape).to(w.dtype)


def quantize_weight_int(
    w: torch.Tensor, spec: QuantSpec, ranges: tuple[torch.Tensor, torch.Tensor] | None = None, observer: str = "minmax"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Integer codes ``[rows, n]`` (int32), scale per row (float32) and zero-point per row (asym only).

    Affine: ``w ~= (q - zp) * scale``; ternary/binary: ``w ~= q * scale`` with q in {-1,0,1} / {-1,1}.
    Float schemes have no integer codes: :func:`lightning_compress.core.float_quant.pack_float_weight`.
    """
    if is_float_scheme(spec.scheme):
        raise ValueError(f"quantize_weight_int: scheme={spec.scheme!r} is a float format, not an integer grid; "
                         "use lightning_compress.core.float_quant.quantize_float_weight")
    rows = _rows(w.detach(), spec).float()
    if spec.bits == 2:
        codes, alpha = ternary_rows(rows)
        return codes.to(torch.int32), alpha, None
    if spec.bits == 1:
        codes, alpha = binary_rows(rows)
        return codes.to(torch.int32), alpha, None
    if spec.scheme == "deepspeed":
        scale, zp, qmin, qmax = _deepspeed_grid(rows, spec, ranges)
        q = _deepspeed_codes(rows, scale, zp, qmin, qmax).to(torch.int32)
        return q, scale, (zp if not spec.symmetric else None)
    lo, hi = ranges if ranges is not None else row_range(rows, observer, spec.bits, spec.symmetric, 0.9999)
    scale, zp = affine_params(lo, hi, spec.bits, spec.symmetric)
    qmin, qmax = qrange(spec.bits, spec.symmetric)
    # codes read back from the fake-quantized values, so that storage and forward agree even on
    # exact ties (torch.fake_quantize_* multiplies by 1/scale, which can round a tie differently)
    fq = fake_quant_rows(rows, scale, zp, spec.bits, spec.symmetric)
    q = torch.clamp(torch.round(fq / scale.unsqueeze(1)) + zp.unsqueeze(1), qmin, qmax).to(torch.int32)
    return q, scale, (zp if not spec.symmetric else None)


_STEPS = [0]  # optimizer steps taken in this process (any torch optimizer): invalidates both caches


def _count_step(optimizer: object, args: object, kwargs: object) -> None:
    _STEPS[0] += 1
    fake_quant_cache.drop_training_caches()  # no training cache outlives its optimizer step


register_optimizer_step_post_hook(_count_step)


class WeightFakeQuant:
    """A weight transform ``fn(module, weight)`` for :func:`core.masking.add_param_transform`.

    Attributes (mutable, read at every call):
        spec: the target :class:`QuantSpec`.
        bits: the width used now (a bits schedule lowers it from ``start_bits`` to ``spec.bits``).
        enabled: False passes the weight through unchanged (before ``start_step``).
        ranges: fixed per-row (lo, hi) from :meth:`calibrate` (post-training); None = recomputed
            from the weight at every call with ``observer``.
        transposed: the weight is stored ``[in, out]`` (Hugging Face ``Conv1D``): rows, channels
            and row blocks are taken on its transpose ``[out, in]``, as for a Linear.
    """

    def __init__(self, spec: QuantSpec, observer: str = "minmax", enabled: bool = True, transposed: bool = False) -> None:
        self.spec = spec
        self.bits = spec.bits
        self.observer = observer
        self.enabled = enabled
        self.transposed = transposed
        self.ranges: tuple[torch.Tensor, torch.Tensor] | None = None
        #: no-grad forwards (evaluation): (key, quantized weight) of the last call, see :meth:`__call__`
        self._cache: tuple[tuple, torch.Tensor] | None = None
        #: forwards with gradients: (key, quantized weight, backward record) of this optimizer step's
        #: first forward (:mod:`~lightning_compress.core.fake_quant_cache`)
        self._train: tuple[tuple, torch.Tensor, tuple | None] | None = None

    @property
    def current_spec(self) -> QuantSpec:
        return replace(self.spec, bits=self.bits)

    def _oriented(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.t() if self.transposed else weight

    def calibrate(self, weight: torch.Tensor) -> None:
        """Fix the clipping ranges from ``weight`` with this quantizer's observer (affine widths)."""
        if self.bits <= 2 or is_float_scheme(self.spec.scheme):  # no ranges: ternary/binary, float formats
            return
        spec = self.current_spec
        rows = as_rows(self._oriented(weight.detach()), spec.granularity, spec.group_size, spec.groups)
        self.ranges = row_range(rows, self.observer, spec.bits, spec.symmetric, 0.9999)

    def _cache_key(self, module: nn.Module, weight: torch.Tensor) -> tuple | None:
        """Key of a reusable result: only for the module's own parameter (not a masked copy,
        whose storage is new at every call), off ZeRO-3 (its gathered weight is released after use),
        never while tracing / exporting (ONNX QDQ, ``torch.export``: the graph must hold the quantizer),
        and tied to the parameter's ``_version`` (in-place writes, ``load_state_dict``), its storage,
        the optimizer steps taken, and this quantizer's settings.  With gradients enabled (the training
        cache) also to ``requires_grad``, and only on the fused path with the cache on."""
        if hasattr(weight, "ds_id") or type(weight) not in (torch.Tensor, nn.Parameter):
            return None
        grad = torch.is_grad_enabled()
        if grad and not (fake_quant_cache.ENABLED and fast_path()):
            return None
        if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return None  # a trace must record the quantizer, not a cached constant
        if not any(weight is p for p in module._parameters.values()):
            return None
        return (id(weight), weight._version, weight.data_ptr(), weight.dtype, _STEPS[0], self.bits, self.spec,
                self.observer, self.transposed, id(self.ranges), self.ranges, grad and weight.requires_grad)

    def __call__(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        """The fake-quantized weight, kept and returned again while the parameter is unchanged (same
        ``_version`` and storage, no optimizer step since, same settings).  Under ``torch.no_grad``
        (evaluation): paid once per evaluation, not per batch.  With gradients: paid once per optimizer
        step, not per micro-batch, with bit-identical values and gradients
        (:mod:`~lightning_compress.core.fake_quant_cache`, which says what is cached and the memory)."""
        if not self.enabled:
            return weight
        key = self._cache_key(module, weight)
        if torch.is_grad_enabled():
            return self._train_call(weight, key)
        if key is not None and self._cache is not None and _same_key(self._cache[0], key):
            return self._cache[1]
        out = self._quantize(weight)
        self._cache = None if key is None else (key, out)
        return out

    def _train_call(self, weight: torch.Tensor, key: tuple | None) -> torch.Tensor:
        hit = self.__dict__.get("_train")  # absent on a quantizer unpickled from before the training cache
        if key is not None and hit is not None and _same_key(hit[0], key):
            return fake_quant_cache.replay(weight, hit[1], hit[2], self.transposed)
        self._train = hit = None  # the stale value and mask go before the new ones are allocated
        if key is None:
            return self._quantize(weight)
        with capture() as records:
            out = self._quantize(weight)
        if fake_quant_cache.cacheable(records, out):
            self._train = (key, out.detach() if out.requires_grad else out, records[0] if records else None)
            fake_quant_cache.hold(self)
        return out

    def _quantize(self, weight: torch.Tensor) -> torch.Tensor:
        out = fake_quant_weight(self._oriented(weight), self.current_spec, self.ranges, self.observer)
        return out.t() if self.transposed else out

    def __getstate__(self) -> dict:  # deepcopy / pickle: the caches stay behind
        return {**self.__dict__, "_cache": None, "_train": None}

    def quantize_int(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Codes of ``weight`` (of its transpose ``[out, in]`` when :attr:`transposed`)."""
        return quantize_weight_int(self._oriented(weight), self.current_spec, self.ranges, self.observer)

    def __repr__(self) -> str:
        return f"WeightFakeQuant(bits={self.bits}, spec={self.spec}, observer={self.observer!r}, enabled={self.enabled})"


def _same_key(a: tuple, b: tuple) -> bool:
    """Keys equal, with the ranges tuple compared by identity (its tensors have no ``==`` to a bool)."""
    return len(a) == len(b) and all(x is y if isinstance(x, tuple) else x == y for x, y in zip(a, b))


def fake_quant_dynamic(x: torch.Tensor, bits: int, symmetric: bool, dims: tuple[int, ...]) -> torch.Tensor:
    """Quantize ``x`` with one range per slice reduced over ``dims`` (per token: ``(-1,)``;
    per image of an NCHW batch: ``(1, 2, 3)``), computed at this call; STE."""
    xf = x.float()
    lo, hi = min_max(xf.detach(), dims, keepdim=True)
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / qmax
        zp = torch.zeros_like(scale)
    else:
        lo = torch.clamp(lo, max=0.0)
        hi = torch.clamp(hi, min=0.0)
        scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if not symmetric:
        zp = torch.clamp(torch.round(-lo / scale), qmin, qmax)
    if fast_path():  # the same float32 operations in place; (q - zp) * scale holds no -0.0
        t = (xf.detach() / scale).round_()
        if symmetric:  # zp == 0: ((t + 0).clamp - 0) * scale is clamp(t) * scale + 0.0, bit for bit
            out = t.clamp_(qmin, qmax).mul_(scale).add_(0.0)  # (see fake_quant_fused._dequant)
        else:
            out = t.add_(zp).clamp_(qmin, qmax).sub_(zp).mul_(scale)
        return straight_through(xf, out, plus_zero=False).to(x.dtype)
    q = torch.clamp(torch.round(xf / scale) + zp, qmin, qmax)
    out = (q - zp) * scale
    return ste(xf, out).to(x.dtype)


def fake_quant_static(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-tensor fake quantization with a fixed scale / zero-point (exports to ONNX QDQ).  ``bounds``:
    ``x``'s exact min and max (0-dim float32) when the caller computed them (a faster CPU check)."""
    rows = x.float().reshape(1, -1)
    out = fake_quant_rows(rows, scale.reshape(1).float(), zero_point.reshape(1).to(torch.int32), bits, symmetric, bounds)
    return out.reshape(x.shape).to(x.dtype)


def weight_quantizer(module: nn.Module, param_name: str = "weight") -> WeightFakeQuant | None:
    """The :class:`WeightFakeQuant` registered on ``module.<param_name>`` (None if none)."""
    t = masking.find_transform(module, param_name, WEIGHT_QUANT_KIND, WeightFakeQuant)
    return None if t is None else t.fn  # type: ignore[return-value]


def pre_quant_weight(module: nn.Module, param_name: str = "weight") -> torch.Tensor:
    """The parameter through the transforms that run before its weight quantizer (masks)."""
    value = module._parameters[param_name]
    assert value is not None
    for t in masking.param_transforms(module, param_name):
        if t.kind == WEIGHT_QUANT_KIND:
            break
        value = t.fn(module, value)
    return value
