"""Fake quantizers (straight-through estimator), range observers and real low-bit storage.

Pure PyTorch: never imports lightning (or deepspeed).

Weight quantization
-------------------
A weight is viewed as rows, one scale (and zero-point) per row:

* ``"tensor"``: the whole weight is one row;
* ``"channel"``: one row per output channel (``weight[i]``; for ``nn.Embedding`` that is one
  token, i.e. *per row*);
* ``"group"``: each output channel is cut into groups of ``group_size`` consecutive values along the
  input dimension (for Conv2d the weight is viewed as ``[out, in*kh*kw]``).

Bit widths (:data:`SUPPORTED_WEIGHT_BITS`):

* 8, 4, 3: affine.  Symmetric: ``scale = max|w| / (2**(b-1)-1)``, zero-point 0, integer range
  ``[-2**(b-1), 2**(b-1)-1]`` (8 bits: scale = max|w|/127, range (-128, 127), the range ONNX export
  accepts).  Asymmetric: the row's range is widened to contain 0, ``scale = (hi-lo)/(2**b-1)``,
  ``zero_point = round(-lo/scale)``, integer range ``[0, 2**b-1]``.  The fake quantizer is
  ``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine`` over an 8-bit range after a
  clamp to the ``b``-bit range, so it exports to ONNX ``QuantizeLinear``/``DequantizeLinear`` at every
  width and the values are exactly those of the ``b``-bit grid.
* 2: ternary (TWN, Li & Liu 2016, as in XTC / TernaryBERT): ``delta = 0.7 * mean|w|``,
  ``alpha = mean(|w| where |w| > delta)``, value ``alpha * sign(w)`` where ``|w| > delta`` else 0.
* 1: binary (XTC / BinaryBERT): ``alpha = mean|w|`` per row, value ``alpha * sign(w)`` (0 -> +alpha).

Every quantizer passes the gradient straight through (STE; the affine one zeroes it outside the
clipping range, like ``torch.fake_quantize_*``).

Activation quantization: :func:`fake_quant_dynamic` (ranges per token / per image at each call) and
:func:`fake_quant_static` (fixed per-tensor range, from :class:`RangeObserver`).

Low-bit storage: :func:`pack_state` / :func:`unpack_state` (key layout in :func:`pack_state`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

SUPPORTED_WEIGHT_BITS = (1, 2, 3, 4, 8)
SUPPORTED_ACT_BITS = (4, 8)
Granularity = Literal["tensor", "channel", "group"]
Observer = Literal["minmax", "percentile", "mse"]
GRANULARITIES = ("tensor", "channel", "group")
OBSERVERS = ("minmax", "percentile", "mse")
_GRAN_CODE = {"tensor": 0, "channel": 1, "group": 2}
PACK_FORMAT_VERSION = 1

#: kind under which weight quantizers ride on a module (see ``core/masking.py``)
WEIGHT_QUANT_KIND = "weight_quant"
ACT_QUANT_KIND = "act_quant"


# --------------------------------------------------------------------------------------------
# specs and validation
# --------------------------------------------------------------------------------------------
def bit_levels(start_bits: int, bits: int) -> list[int]:
    """Supported weight widths from ``start_bits`` down to ``bits``, descending (8 -> 2: ``[8, 4, 3, 2]``):
    the widths a bit schedule steps through."""
    return [b for b in sorted(SUPPORTED_WEIGHT_BITS, reverse=True) if bits <= b <= start_bits]


def check_bits(bits: int, supported: tuple[int, ...], argument: str, owner: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in supported:
        raise ValueError(
            f"{owner}: `{argument}`={bits!r} is not a supported bit width; use one of {list(supported)}."
        )


@dataclass(frozen=True)
class QuantSpec:
    """How one weight is quantized.  ``group_size`` only matters for ``granularity="group"``."""

    bits: int = 8
    granularity: Granularity = "channel"
    group_size: int | None = None
    symmetric: bool = True

    def validate(self, owner: str = "quantize") -> "QuantSpec":
        check_bits(self.bits, SUPPORTED_WEIGHT_BITS, "bits", owner)
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"{owner}: `granularity`={self.granularity!r} must be one of {list(GRANULARITIES)}.")
        if self.granularity == "group":
            if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or self.group_size < 1:
                raise ValueError(
                    f"{owner}: granularity='group' needs a positive integer `group_size` (got {self.group_size!r})."
                )
        return self


def check_group_size(weight_shape: torch.Size | tuple[int, ...], spec: QuantSpec, module_name: str, owner: str) -> None:
    """Raise ValueError when ``spec.group_size`` does not divide the weight's input dimension."""
    if spec.granularity != "group":
        return
    n_in = int(math.prod(weight_shape[1:])) if len(weight_shape) > 1 else int(weight_shape[0])
    if n_in % int(spec.group_size) != 0:  # type: ignore[arg-type]
        raise ValueError(
            f"{owner}: `group_size`={spec.group_size} does not divide the input dimension {n_in} of module "
            f"{module_name!r} (weight shape {tuple(weight_shape)}). Pick a divisor of {n_in} or exclude the module."
        )


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range of an affine ``bits`` quantizer."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def as_rows(w: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    """View ``w`` as ``[rows, n]``: one scale per row (see module docstring)."""
    if granularity == "tensor":
        return w.reshape(1, -1)
    if w.dim() < 2:
        raise ValueError(f"granularity={granularity!r} needs a weight with at least 2 dims, got shape {tuple(w.shape)}")
    w2 = w.reshape(w.shape[0], -1)
    if granularity == "channel":
        return w2
    assert group_size is not None
    if w2.shape[1] % group_size:
        raise ValueError(f"group_size={group_size} does not divide the input dimension {w2.shape[1]}")
    return w2.reshape(-1, group_size)


# --------------------------------------------------------------------------------------------
# affine scale / zero point, observers
# --------------------------------------------------------------------------------------------
def affine_params(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero-point (int32) for ranges ``[lo, hi]`` (per row tensors)."""
    lo = lo.detach().float()
    hi = hi.detach().float()
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = amax / qmax
        zp = torch.zeros_like(scale, dtype=torch.int32)
    else:
        lo = torch.clamp(lo, max=0.0)
        hi = torch.clamp(hi, min=0.0)
        scale = (hi - lo) / (qmax - qmin)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = torch.clamp(torch.round(-lo / safe), qmin, qmax).to(torch.int32)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, zp


def _fq_rows(rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """Fake-quantize float32 ``rows`` [R, n] with one (scale, zp) per row; STE; ONNX-exportable."""
    qmin, qmax = qrange(bits, symmetric)
    if bits < 8:
        # clip to the b-bit range; the bounds sit 0.49 step outside it, so every value that rounds
        # into the range keeps its gradient (as in torch.fake_quantize_*) and clipped ones round to
        # qmin / qmax
        lo_v = ((qmin - 0.49 - zp).float() * scale).unsqueeze(1)
        hi_v = ((qmax + 0.49 - zp).float() * scale).unsqueeze(1)
        rows = torch.maximum(torch.minimum(rows, hi_v), lo_v)
    q8min, q8max = qrange(8, symmetric)
    if rows.shape[0] == 1:
        return torch.fake_quantize_per_tensor_affine(rows, scale.reshape(()), zp.reshape(()), q8min, q8max)
    return torch.fake_quantize_per_channel_affine(rows, scale, zp, 0, q8min, q8max)


def _row_range(rows: torch.Tensor, observer: str, bits: int, symmetric: bool, percentile: float) -> tuple[torch.Tensor, torch.Tensor]:
    rows = rows.detach().float()
    lo, hi = rows.amin(1), rows.amax(1)
    if observer == "minmax":
        return lo, hi
    if observer == "percentile":
        n = rows.shape[1]
        k_hi = max(1, min(n, int(math.ceil(percentile * n))))
        k_lo = max(1, min(n, int(math.floor((1 - percentile) * n)) + 1))
        if symmetric:
            a = rows.abs().kthvalue(k_hi, dim=1).values
            return -a, a
        return rows.kthvalue(k_lo, dim=1).values, rows.kthvalue(k_hi, dim=1).values
    if observer == "mse":
        best_err = torch.full_like(lo, float("inf"))
        best_lo, best_hi = lo.clone(), hi.clone()
        for r in torch.linspace(1.0, 0.3, 15).tolist():
            c_lo, c_hi = lo * r, hi * r
            s, z = affine_params(c_lo, c_hi, bits, symmetric)
            err = (_fq_rows(rows, s, z, bits, symmetric) - rows).pow(2).mean(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, c_lo, best_lo)
            best_hi = torch.where(better, c_hi, best_hi)
        return best_lo, best_hi
    raise ValueError(f"observer={observer!r} must be one of {list(OBSERVERS)}")


# --------------------------------------------------------------------------------------------
# weight quantizers
# --------------------------------------------------------------------------------------------
def _ste(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Value ``q`` exactly, gradient of ``w`` (straight through)."""
    return q.detach() + (w - w.detach())


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


def fake_quant_weight(
    w: torch.Tensor,
    spec: QuantSpec,
    ranges: tuple[torch.Tensor, torch.Tensor] | None = None,
    observer: str = "minmax",
    percentile: float = 0.9999,
) -> torch.Tensor:
    """Fake-quantize ``w`` by ``spec`` (same shape and dtype, STE gradient).

    ``ranges``: fixed per-row (lo, hi) from an earlier calibration; else ``observer`` computes them.
    """
    rows = as_rows(w, spec.granularity, spec.group_size).float()
    if spec.bits == 2:
        codes, alpha = ternary_rows(rows)
        out = _ste(rows, codes * alpha.unsqueeze(1))
    elif spec.bits == 1:
        codes, alpha = binary_rows(rows)
        out = _ste(rows, codes * alpha.unsqueeze(1))
    else:
        lo, hi = ranges if ranges is not None else _row_range(rows, observer, spec.bits, spec.symmetric, percentile)
        scale, zp = affine_params(lo, hi, spec.bits, spec.symmetric)
        out = _fq_rows(rows, scale, zp, spec.bits, spec.symmetric)
    return out.reshape(w.shape).to(w.dtype)


def quantize_weight_int(
    w: torch.Tensor, spec: QuantSpec, ranges: tuple[torch.Tensor, torch.Tensor] | None = None, observer: str = "minmax"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Integer codes ``[rows, n]`` (int32), scale per row (float32) and zero-point per row (asym only).

    Affine: ``w ~= (q - zp) * scale``; ternary/binary: ``w ~= q * scale`` with q in {-1,0,1} / {-1,1}.
    """
    rows = as_rows(w.detach(), spec.granularity, spec.group_size).float()
    if spec.bits == 2:
        codes, alpha = ternary_rows(rows)
        return codes.to(torch.int32), alpha, None
    if spec.bits == 1:
        codes, alpha = binary_rows(rows)
        return codes.to(torch.int32), alpha, None
    lo, hi = ranges if ranges is not None else _row_range(rows, observer, spec.bits, spec.symmetric, 0.9999)
    scale, zp = affine_params(lo, hi, spec.bits, spec.symmetric)
    qmin, qmax = qrange(spec.bits, spec.symmetric)
    # codes read back from the fake-quantized values, so that storage and forward agree even on
    # exact ties (torch.fake_quantize_* multiplies by 1/scale, which can round a tie differently)
    fq = _fq_rows(rows, scale, zp, spec.bits, spec.symmetric)
    q = torch.clamp(torch.round(fq / scale.unsqueeze(1)) + zp.unsqueeze(1), qmin, qmax).to(torch.int32)
    return q, scale, (zp if not spec.symmetric else None)


class WeightFakeQuant:
    """A weight transform ``fn(module, weight)`` for :func:`core.masking.add_param_transform`.

    Attributes (mutable, read at every call):
        spec: the target :class:`QuantSpec`.
        bits: the width used now (a bits schedule lowers it from ``start_bits`` to ``spec.bits``).
        enabled: False passes the weight through unchanged (before ``start_step``).
        ranges: fixed per-row (lo, hi) from :meth:`calibrate` (post-training); None = recomputed
            from the weight at every call with ``observer``.
    """

    def __init__(self, spec: QuantSpec, observer: str = "minmax", enabled: bool = True) -> None:
        self.spec = spec
        self.bits = spec.bits
        self.observer = observer
        self.enabled = enabled
        self.ranges: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def current_spec(self) -> QuantSpec:
        return replace(self.spec, bits=self.bits)

    def calibrate(self, weight: torch.Tensor) -> None:
        """Fix the clipping ranges from ``weight`` with this quantizer's observer (affine widths)."""
        if self.bits <= 2:
            return
        spec = self.current_spec
        rows = as_rows(weight.detach(), spec.granularity, spec.group_size)
        self.ranges = _row_range(rows, self.observer, spec.bits, spec.symmetric, 0.9999)

    def __call__(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        return fake_quant_weight(weight, self.current_spec, self.ranges, self.observer)

    def quantize_int(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return quantize_weight_int(weight, self.current_spec, self.ranges, self.observer)

    def __repr__(self) -> str:
        return f"WeightFakeQuant(bits={self.bits}, spec={self.spec}, observer={self.observer!r}, enabled={self.enabled})"


# --------------------------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------------------------
def fake_quant_dynamic(x: torch.Tensor, bits: int, symmetric: bool, dims: tuple[int, ...]) -> torch.Tensor:
    """Quantize ``x`` with one range per slice reduced over ``dims`` (per token: ``(-1,)``;
    per image of an NCHW batch: ``(1, 2, 3)``), computed at this call; STE."""
    xf = x.float()
    lo = xf.detach().amin(dim=dims, keepdim=True)
    hi = xf.detach().amax(dim=dims, keepdim=True)
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
    q = torch.clamp(torch.round(xf / scale) + zp, qmin, qmax)
    out = (q - zp) * scale
    return _ste(xf, out).to(x.dtype)


def fake_quant_static(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """Per-tensor fake quantization with a fixed scale / zero-point (exports to ONNX QDQ)."""
    rows = x.float().reshape(1, -1)
    out = _fq_rows(rows, scale.reshape(1).float(), zero_point.reshape(1).to(torch.int32), bits, symmetric)
    return out.reshape(x.shape).to(x.dtype)


class RangeObserver:
    """Collects an activation range.

    * ``"minmax"``: the min / max seen;
    * ``"percentile"``: the ``percentile`` quantile of |x| (symmetric) or both tails (asymmetric), over
      a uniform random sample of the values seen (at most ``sample_size``), clipped to min / max;
    * ``"mse"``: the clipping of [min, max] (ratios 1.0 .. 0.3) that minimizes the squared
      quantization error over that sample.
    """

    def __init__(self, observer: str = "minmax", bits: int = 8, symmetric: bool = True,
                 percentile: float = 0.9999, sample_size: int = 200_000, seed: int = 0) -> None:
        if observer not in OBSERVERS:
            raise ValueError(f"observer={observer!r} must be one of {list(OBSERVERS)}")
        self.observer, self.bits, self.symmetric, self.percentile = observer, bits, symmetric, percentile
        self.sample_size = sample_size
        self.lo: float | None = None
        self.hi: float | None = None
        self.samples: list[torch.Tensor] = []
        self.count = 0
        self._gen = torch.Generator().manual_seed(seed)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        if x.numel() == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)
        self.count += 1
        if self.observer != "minmax":
            per_batch = max(1, self.sample_size // 16)
            if x.numel() > per_batch:
                idx = torch.randint(0, x.numel(), (per_batch,), generator=self._gen)
                x = x[idx]
            self.samples.append(x.cpu())
            total = sum(s.numel() for s in self.samples)
            if total > self.sample_size:  # thin uniformly
                cat = torch.cat(self.samples)
                idx = torch.randperm(cat.numel(), generator=self._gen)[: self.sample_size]
                self.samples = [cat[idx]]

    def compute(self) -> tuple[float, float]:
        if self.lo is None or self.hi is None:
            raise ValueError("RangeObserver saw no value: the calibration produced no activation for this module")
        lo, hi = self.lo, self.hi
        if self.observer == "minmax":
            return lo, hi
        sample = torch.cat(self.samples)
        if self.observer == "percentile":
            rows = sample.reshape(1, -1)
        else:
            rows = sample.reshape(1, -1)
        if self.observer == "percentile":
            l_t, h_t = _row_range(rows, "percentile", self.bits, self.symmetric, self.percentile)
            return max(lo, float(l_t)), min(hi, float(h_t))
        best = (math.inf, lo, hi)
        for r in torch.linspace(1.0, 0.3, 15).tolist():
            s, z = affine_params(torch.tensor([lo * r]), torch.tensor([hi * r]), self.bits, self.symmetric)
            err = float((_fq_rows(rows, s, z, self.bits, self.symmetric) - rows).pow(2).mean())
            if err < best[0]:
                best = (err, lo * r, hi * r)
        return best[1], best[2]


# --------------------------------------------------------------------------------------------
# bit packing and low-bit storage
# --------------------------------------------------------------------------------------------
def container_bits(bits: int) -> int:
    """Bits used per value in storage: 8 -> 8, 4 and 3 -> 4 (nibbles), 2 -> 2, 1 -> 1."""
    return {8: 8, 4: 4, 3: 4, 2: 2, 1: 1}[bits]


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (< 2**bits) into a flat uint8 tensor, low bits first (little-endian)."""
    cb = container_bits(bits)
    flat = codes.reshape(-1).to(torch.uint8)
    if cb == 8:
        return flat.clone()
    per = 8 // cb
    pad = (-flat.numel()) % per
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    flat = flat.reshape(-1, per).to(torch.int32)
    shifts = torch.arange(per, dtype=torch.int32) * cb
    return (flat << shifts).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``numel`` unsigned codes as uint8."""
    cb = container_bits(bits)
    if cb == 8:
        return packed.reshape(-1)[:numel].to(torch.uint8)
    per = 8 // cb
    shifts = torch.arange(per, dtype=torch.int32) * cb
    vals = (packed.reshape(-1, 1).to(torch.int32) >> shifts) & ((1 << cb) - 1)
    return vals.reshape(-1)[:numel].to(torch.uint8)


def weight_quantizer(module: nn.Module, param_name: str = "weight") -> WeightFakeQuant | None:
    """The :class:`WeightFakeQuant` registered on ``module.<param_name>`` (None if none)."""
    for t in getattr(module, "_lc_param_transforms", {}).get(param_name, []):
        if t.kind == WEIGHT_QUANT_KIND and isinstance(t.fn, WeightFakeQuant):
            return t.fn
    return None


def pack_weight(weight: torch.Tensor, spec: QuantSpec, quantizer: WeightFakeQuant | None = None) -> dict[str, torch.Tensor]:
    """Pack ``weight`` by ``spec`` (see :func:`pack_state` for the layout)."""
    if quantizer is not None:
        q, scale, zp = quantizer.quantize_int(weight)
        spec = quantizer.current_spec
    else:
        q, scale, zp = quantize_weight_int(weight, spec)
    bits = spec.bits
    if bits == 2:
        codes = q + 1
    elif bits == 1:
        codes = (q > 0).to(torch.int32)
    else:
        codes = q - qrange(bits, spec.symmetric)[0]
    if bits == 8 and spec.symmetric:
        qweight = q.reshape(-1).to(torch.int8).clone()
    else:
        qweight = pack_bits(codes, bits)
    meta = torch.tensor(
        [PACK_FORMAT_VERSION, bits, _GRAN_CODE[spec.granularity], int(spec.group_size or 0), int(spec.symmetric), weight.dim(), *weight.shape],
        dtype=torch.int64,
    )
    out = {"qweight": qweight, "scale": scale.float().contiguous(), "meta": meta}
    if zp is not None:
        out["zero_point"] = zp.to(torch.uint8).contiguous()
    return out


def pack_model(model: nn.Module) -> dict[str, torch.Tensor]:
    """:func:`pack_state` of every quantized parameter of ``model``, flattened:
    ``{f"{module_name}.{param_name}.{key}": tensor}`` with ``key`` in ``qweight`` / ``scale`` /
    ``zero_point`` / ``meta`` (layout in :func:`pack_state`).  Empty when nothing is quantized.
    :func:`unpack_model` inverts it."""
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        for pname in list(getattr(module, "_lc_param_transforms", {})):
            if weight_quantizer(module, pname) is None:
                continue
            prefix = f"{name}.{pname}" if name else pname
            for key, value in pack_state(module, pname).items():
                out[f"{prefix}.{key}"] = value
    return out


def unpack_model(flat: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """``{f"{module_name}.{param_name}": dequantized tensor}`` from a :func:`pack_model` dict (other
    keys are ignored, so a whole saved state with float tensors next to packed ones may be passed)."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in flat.items():
        prefix, _, key = k.rpartition(".")
        if key in ("qweight", "scale", "zero_point", "meta"):
            groups.setdefault(prefix, {})[key] = v
    return {prefix: unpack_state(state, dtype) for prefix, state in groups.items() if "meta" in state and "qweight" in state}


def pack_state(module: nn.Module, param_name: str = "weight") -> dict[str, torch.Tensor]:
    """Real low-bit storage of a module's quantized weight.

    Called on a module that does not itself carry a weight quantizer but contains some (a whole
    model), it returns :func:`pack_model` of it instead (flat ``"{module}.{param}.{key}"`` keys).

    ``module.<param_name>`` must carry a ``"weight_quant"`` transform (a :class:`WeightFakeQuant`,
    registered by ``WeightQuant`` or :func:`lightning_compress.quantize`).  Transforms that run
    before it (masks, priority 0) are applied first, so the packed weight is exactly the one the
    forward used.  Under ZeRO-3 call it inside ``deepspeed.zero.GatheredParameters``.

    Returned keys (prefix them yourself, e.g. ``f"{module_name}.weight."``):

    * ``"qweight"``: 8-bit symmetric: ``int8`` values ``q`` (flat, row-major over the weight);
      otherwise ``uint8`` codes packed little-endian, low bits first: 8-bit asymmetric one code per
      byte, 4/3-bit two per byte (3-bit in a 4-bit container), 2-bit (ternary) four per byte, 1-bit
      (binary) eight per byte.  Codes are ``q - qmin`` (affine), ``q + 1`` (ternary, q in {-1,0,1}),
      ``(q > 0)`` (binary, q in {-1,1}).
    * ``"scale"``: ``float32 [rows]``, one per row of :func:`as_rows` (tensor: 1, channel: out,
      group: out * in / group_size); for ternary / binary it is ``alpha``.
    * ``"zero_point"``: ``uint8 [rows]``, present only for asymmetric affine widths.
    * ``"meta"``: ``int64 [6 + ndim]`` = ``[format_version, bits, granularity (0 tensor, 1 channel,
      2 group), group_size (0 if none), symmetric (0/1), ndim, *shape]``.

    Dequantization (:func:`unpack_state`): affine ``(q - zp) * scale``, ternary/binary ``q * alpha``.

    Raises:
        ValueError: the parameter has no weight quantizer.
    """
    quantizer = weight_quantizer(module, param_name)
    if quantizer is None and any(weight_quantizer(m, p) is not None for m in module.modules() for p in getattr(m, "_lc_param_transforms", {})):
        return pack_model(module)
    if quantizer is None:
        raise ValueError(
            f"pack_state: {type(module).__name__}.{param_name} carries no {WEIGHT_QUANT_KIND!r} transform; "
            f"quantize it with WeightQuant or lightning_compress.quantize first."
        )
    with torch.no_grad():
        value = pre_quant_weight(module, param_name)
        return pack_weight(value.detach(), quantizer.current_spec, quantizer)


def pre_quant_weight(module: nn.Module, param_name: str = "weight") -> torch.Tensor:
    """The parameter through the transforms that run before its weight quantizer (masks)."""
    value = module._parameters[param_name]
    assert value is not None
    for t in getattr(module, "_lc_param_transforms", {}).get(param_name, []):
        if t.kind == WEIGHT_QUANT_KIND:
            break
        value = t.fn(module, value)
    return value


def unpack_state(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dequantized weight (``dtype``, original shape) from a :func:`pack_state` dict."""
    meta = state["meta"].tolist()
    if meta[0] != PACK_FORMAT_VERSION:
        raise ValueError(f"unpack_state: unknown format version {meta[0]} (this code reads {PACK_FORMAT_VERSION})")
    bits, gran, group_size, symmetric, ndim = meta[1:6]
    shape = tuple(meta[6 : 6 + ndim])
    numel = int(math.prod(shape))
    scale = state["scale"].float()
    rows = scale.numel()
    if bits == 8 and symmetric:
        q = state["qweight"].reshape(-1).to(torch.float32)
    else:
        codes = unpack_bits(state["qweight"], bits, numel).to(torch.float32)
        if bits == 2:
            q = codes - 1
        elif bits == 1:
            q = codes * 2 - 1
        else:
            q = codes + qrange(bits, bool(symmetric))[0]
    q = q.reshape(rows, -1)
    if "zero_point" in state:
        q = q - state["zero_point"].to(torch.float32).unsqueeze(1)
    return (q * scale.unsqueeze(1)).reshape(shape).to(dtype)


def packed_nbytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors in a :func:`pack_state` dict."""
    return sum(t.numel() * t.element_size() for t in state.values())
