"""The integer grids behind every quantizer: supported widths, :class:`QuantSpec`, the rows view of a
weight, affine scale / zero-point, and the ONNX-exportable fake-quantization primitive.

Pure PyTorch.  The overview of the quantization formats is in :mod:`lightning_compress.core.quantize`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from lightning_compress.core.args import check_bool, check_choice, check_int, fail, is_int
from lightning_compress.core.fake_quant_fused import fake_quant_grid, fast_path, straight_through
from lightning_compress.core.float_quant import FLOAT_SCHEMES, check_float_spec, element_bits, is_float_scheme

SUPPORTED_WEIGHT_BITS = (1, 2, 3, 4, 8)
#: widths of ``scheme="deepspeed"`` (DeepSpeed's quantizers take any width; 1 binary, 2 ternary)
DEEPSPEED_WEIGHT_BITS = tuple(range(1, 17))
SUPPORTED_ACT_BITS = (4, 8)
Granularity = Literal["tensor", "channel", "group", "row_block"]
Scheme = Literal[
    "affine", "deepspeed", "fp8_e4m3", "fp8_e5m2", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "nvfp4"
]
Observer = Literal["minmax", "percentile", "mse"]
GRANULARITIES = ("tensor", "channel", "group", "row_block")
#: integer grids, then the float formats of :mod:`lightning_compress.core.float_quant`
SCHEMES = ("affine", "deepspeed", *FLOAT_SCHEMES)
OBSERVERS = ("minmax", "percentile", "mse")

#: kinds under which weight / input quantizers ride on a module (see ``core/masking.py``)
WEIGHT_QUANT_KIND = "weight_quant"
ACT_QUANT_KIND = "act_quant"


def bit_levels(start_bits: int, bits: int) -> list[int]:
    """Supported weight widths from ``start_bits`` down to ``bits``, descending (8 -> 2: ``[8, 4, 3, 2]``):
    the widths a bit schedule steps through."""
    return [b for b in sorted(SUPPORTED_WEIGHT_BITS, reverse=True) if bits <= b <= start_bits]


def check_bits(bits: int, supported: tuple[int, ...], argument: str, owner: str) -> None:
    """``bits`` must be an int (TypeError otherwise: ``"8"``, ``8.0``, ``True``) among ``supported``."""
    if not is_int(bits):
        fail(owner, argument, bits, f"is a {type(bits).__name__}, not an int bit width", f"use one of {list(supported)}", TypeError)
    if bits not in supported:
        fail(owner, argument, bits, "is not a supported bit width", f"use one of {list(supported)}")


@dataclass(frozen=True)
class QuantSpec:
    """How one weight is quantized.

    ``granularity``: one scale per ``"tensor"``, per output ``"channel"``, per ``"group"`` of
    ``group_size`` consecutive input values of a row, or per ``"row_block"``: the weight (as
    ``[out, in...]``) flattened and cut into ``groups`` equal contiguous chunks, i.e. blocks of
    ``out / groups`` rows when ``groups`` divides ``out`` (DeepSpeed's ``quantize_groups``).

    ``scheme``: ``"affine"`` (the default grids: ``2**b - 1`` steps over the range, see
    :func:`affine_params`) or ``"deepspeed"`` (DeepSpeed's quantizers for widths >= 3:
    symmetric ``scale = 2 max|w| / 2**b``, codes ``[-2**(b-1), 2**(b-1) - 1]``; asymmetric
    ``scale = (max - min) / 2**b``, zero-point ``-round(min / scale)``, codes ``[0, 2**b - 1]``; any
    width from 1 to 16 bits).  Widths 2 and 1 are ternary and binary in both schemes.
    """

    bits: int = 8
    granularity: Granularity = "channel"
    group_size: int | None = None
    symmetric: bool = True
    groups: int | None = None
    scheme: Scheme = "affine"

    def validate(self, owner: str = "quantize", bits_argument: str = "bits") -> "QuantSpec":
        check_choice(self.scheme, "scheme", owner, SCHEMES)
        if is_float_scheme(self.scheme):  # bits = the element width; granularity as the format defines it
            check_float_spec(self, owner)
            return self
        check_bits(self.bits, supported_bits(self.scheme), bits_argument, owner)
        check_choice(self.granularity, "granularity", owner, GRANULARITIES)
        check_bool(self.symmetric, "symmetric", owner)
        if self.granularity == "group":
            if self.group_size is None:
                fail(owner, "group_size", None, "but granularity='group' needs a positive integer `group_size`",
                     "pass the number of input values per group, e.g. 64")
            check_int(self.group_size, "group_size", owner, minimum=1)
        elif self.group_size is not None:
            check_int(self.group_size, "group_size", owner, minimum=1)
            fail(owner, "group_size", self.group_size, f"is only used with granularity='group' (got {self.granularity!r})",
                 "set granularity='group' or drop group_size")
        if self.granularity == "row_block":
            if self.groups is None:
                fail(owner, "groups", None, "but granularity='row_block' needs a positive integer `groups`", "pass the number of row blocks")
            check_int(self.groups, "groups", owner, minimum=1)
        elif self.groups is not None:
            fail(owner, "groups", self.groups, f"is only used with granularity='row_block' (got {self.granularity!r})",
                 "set granularity='row_block' or drop groups")
        return self


def supported_bits(scheme: str) -> tuple[int, ...]:
    """The weight widths a ``scheme`` quantizes (a float scheme: its element width only)."""
    if is_float_scheme(scheme):
        return (element_bits(scheme),)
    return DEEPSPEED_WEIGHT_BITS if scheme == "deepspeed" else SUPPORTED_WEIGHT_BITS


def check_group_size(weight_shape: torch.Size | tuple[int, ...], spec: QuantSpec, module_name: str, owner: str) -> None:
    """Raise ValueError when ``spec.group_size`` does not divide the weight's input dimension, or
    ``spec.groups`` (``"row_block"``) does not divide its number of values."""
    if spec.granularity == "row_block":
        numel = int(math.prod(weight_shape))
        if numel % int(spec.groups):  # type: ignore[arg-type]
            raise ValueError(
                f"{owner}: `groups`={spec.groups} does not divide the {numel} values of module {module_name!r} "
                f"(weight shape {tuple(weight_shape)}); DeepSpeed's quantize_groups cuts the flattened weight into "
                f"equal chunks. Pick a divisor or exclude the module."
            )
        return
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


def as_rows(w: torch.Tensor, granularity: str, group_size: int | None, groups: int | None = None) -> torch.Tensor:
    """View ``w`` as ``[rows, n]``: one scale per row (``"row_block"``: ``[groups, numel / groups]``)."""
    if granularity == "tensor":
        return w.reshape(1, -1)
    if granularity == "row_block":
        assert groups is not None
        if w.numel() % groups:
            raise ValueError(f"groups={groups} does not divide the {w.numel()} values of a weight of shape {tuple(w.shape)}")
        return w.reshape(groups, -1)
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
# affine scale / zero point, the fake-quant primitive
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


def deepspeed_affine_params(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """DeepSpeed's grid for ranges ``[lo, hi]`` (per row): ``(scale, zero_point, qmin, qmax)``.

    As ``SymQuantizer`` / ``AsymQuantizer`` (``deepspeed/compression/utils.py``) and MoQ's
    ``quantize_highbit``: symmetric ``scale = 2 max(|lo|, |hi|) / 2**b``, codes in
    ``[-2**(b-1), 2**(b-1) - 1]``, zero-point 0; asymmetric ``scale = (hi - lo) / 2**b``, zero-point
    ``-round(lo / scale)`` (an integer, not clipped), codes in ``[0, 2**b - 1]``.  A value ``w`` maps to
    ``(clamp(round(w / scale) + zp, qmin, qmax) - zp) * scale``.
    """
    lo = lo.detach().float()
    hi = hi.detach().float()
    levels = 2**bits
    if symmetric:
        scale = 2 * torch.maximum(lo.abs(), hi.abs()) / levels
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, torch.zeros_like(scale, dtype=torch.int32), -(levels // 2), levels // 2 - 1
    scale = (hi - lo) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = (-torch.round(lo / scale)).to(torch.int32)
    return scale, zp, 0, levels - 1


def fake_quant_rows(
    rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, bits: int, symmetric: bool,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Fake-quantize float32 ``rows`` [R, n] with one (scale, zp) per row; STE; ONNX-exportable.

    Eager calls take the fused path (:mod:`~lightning_compress.core.fake_quant_fused`, the same values
    and gradients); traced / exported / compiled ones record ``torch.fake_quantize_*`` (ONNX QDQ).
    ``bounds``: the exact min / max of each row of ``rows`` (``[R]``, 0-dim for one row) when the caller
    has them (a min-max observer): the fused path's CPU checks read them instead of reducing again."""
    qmin, qmax = qrange(bits, symmetric)
    q8min, q8max = qrange(8, symmetric)
    lo_v = hi_v = None
    if bits < 8:
        # clip to the b-bit range; the bounds sit 0.49 step outside it, so every value that rounds
        # into the range keeps its gradient (as in torch.fake_quantize_*) and clipped ones round to
        # qmin / qmax
        lo_v = ((qmin - 0.49 - zp).float() * scale).unsqueeze(1)
        hi_v = ((qmax + 0.49 - zp).float() * scale).unsqueeze(1)
    if fast_path():
        return fake_quant_grid(rows, scale, zp, q8min, q8max, lo_v, hi_v, bounds)
    if lo_v is not None:
        rows = torch.maximum(torch.minimum(rows, hi_v), lo_v)
    if rows.shape[0] == 1:
        return torch.fake_quantize_per_tensor_affine(rows, scale.reshape(()), zp.reshape(()), q8min, q8max)
    return torch.fake_quantize_per_channel_affine(rows, scale, zp, 0, q8min, q8max)


def ste(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Value ``q`` exactly, gradient of ``w`` (straight through)."""
    if fast_path():
        return straight_through(w, q)
    return q.detach() + (w - w.detach())
