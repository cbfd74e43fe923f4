"""Scaled low-precision float formats: FP8 with per-tensor / per-channel scales, OCP microscaling
(MXFP8 / MXFP6 / MXFP4: blocks of 32 sharing an E8M0 power-of-two scale) and NVFP4 (blocks of 16
sharing an FP8 E4M3 scale, under one float32 scale per tensor).

Blocks run along the **last dimension** (a Linear weight ``[out, in]``: 32 / 16 consecutive input
values of one output row; the reduction dimension, as the hardware formats require).  Everything is
float32 arithmetic on exact powers of two plus :func:`~lightning_compress.core.float_formats.round_to_format`,
so the emulation is bit-exact on every device:

* **FP8** (``fp8_quantize``): ``scale = amax / max_value(fmt)`` per tensor or per row (amax 0 -> scale 1),
  ``q = round_fmt(x / scale)``, value ``q * scale``; the scale is float32 (as ``torch._scaled_mm`` takes it).
* **MX** (``mx_quantize``, OCP MX v1.0 section 6.3): per block ``shared_exp = floor(log2(amax)) - emax(elem)``
  clamped to E8M0's range [-127, 127], ``X = 2^shared_exp``, ``q = round_elem(x / X)`` saturating; an
  all-zero block gets ``X = 2^-127``.
* **NVFP4** (``nvfp4_quantize``): ``global = amax(tensor) / (448 * 6)``; per block of 16
  ``s = round_e4m3(amax(block) / 6 / global)``; ``q = round_e2m1(x / (s * global))`` saturating;
  value ``q * s * global`` (``s = 0``: the block is zero).

Each returns a :class:`ScaledFloat` (codes, scales, how to dequantize); :func:`fake_quantize_float`
is the straight-through fake quantizer over them (value of the dequantized tensor, gradient 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from lightning_compress.core.float_formats import decode, encode, get_format, pack_fp4, round_to_format, unpack_fp4

FloatScheme = Literal["fp8_e4m3", "fp8_e5m2", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "nvfp4"]

#: scheme -> (element format, block size or None, scale kind)
SCHEMES: dict[str, tuple[str, int | None, str]] = {
    "fp8_e4m3": ("e4m3", None, "float32"),
    "fp8_e5m2": ("e5m2", None, "float32"),
    "mxfp8_e4m3": ("e4m3", 32, "e8m0"),
    "mxfp8_e5m2": ("e5m2", 32, "e8m0"),
    "mxfp6_e3m2": ("e3m2", 32, "e8m0"),
    "mxfp6_e2m3": ("e2m3", 32, "e8m0"),
    "mxfp4": ("e2m1", 32, "e8m0"),
    "nvfp4": ("e2m1", 16, "e4m3"),
}


@dataclass
class ScaledFloat:
    """A tensor in a scaled float format: ``codes`` (uint8 element codes, shape of the input; FP4 packed
    two per byte by :meth:`packed`), ``scales`` (float32 per tensor / per row for FP8; per block
    ``[..., n_blocks]`` otherwise, as float32 values exactly representable in the scale format),
    ``global_scale`` (NVFP4's per-tensor float32; 1 otherwise)."""

    scheme: str
    codes: torch.Tensor
    scales: torch.Tensor
    global_scale: torch.Tensor
    shape: tuple[int, ...]

    @property
    def element_format(self) -> str:
        return SCHEMES[self.scheme][0]

    @property
    def block(self) -> int | None:
        return SCHEMES[self.scheme][1]

    def dequantize(self) -> torch.Tensor:
        """float32 values: ``decode(codes) * scale`` (per element's tensor / row / block), then ``* global_scale``
        (NVFP4; in that order, float32)."""
        q = decode(self.codes, self.element_format)
        out = _apply_scales(q, self.scales, self.block).reshape(self.shape)
        return out * self.global_scale if self.scheme == "nvfp4" else out

    def packed(self) -> dict[str, torch.Tensor]:
        """Storage form: element codes (FP4 two per byte, FP6 one per byte), scale codes (E8M0 / E4M3 as
        uint8; FP8 per-tensor/row scales as float32) and NVFP4's global scale."""
        fmt = self.element_format
        codes = pack_fp4(self.codes) if get_format(fmt).bits == 4 else self.codes
        kind = SCHEMES[self.scheme][2]
        scales = self.scales if kind == "float32" else encode(self.scales, kind)
        out = {"codes": codes, "scales": scales}
        if self.scheme == "nvfp4":
            out["global_scale"] = self.global_scale.reshape(1)
        return out

    @classmethod
    def from_packed(cls, scheme: str, packed: dict[str, torch.Tensor], shape: tuple[int, ...]) -> "ScaledFloat":
        """Inverse of :meth:`packed`."""
        fmt, _, kind = SCHEMES[scheme]
        codes = packed["codes"]
        if get_format(fmt).bits == 4:
            codes = unpack_fp4(codes)
        scales = packed["scales"] if kind == "float32" else decode(packed["scales"], kind)
        g = packed.get("global_scale", torch.ones(1)).reshape(())
        return cls(scheme, codes, scales, g.float(), tuple(shape))


def check_scheme(scheme: str, owner: str = "float format", argument: str = "format") -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"{owner}: `{argument}`={scheme!r} is not a float format; use one of {sorted(SCHEMES)}")
    return scheme


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    if x.dim() == 0 or x.shape[-1] % block:
        raise ValueError(
            f"a block-scaled float format needs the last dimension divisible by {block}; got shape {tuple(x.shape)}"
        )
    return x.reshape(*x.shape[:-1], x.shape[-1] // block, block)


def _apply_scales(q: torch.Tensor, scales: torch.Tensor, block: int | None) -> torch.Tensor:
    if block is None:
        return q * (scales.reshape(-1, *([1] * (q.dim() - 1))) if scales.numel() > 1 else scales)
    qb = _blocks(q, block)
    return (qb * scales.unsqueeze(-1)).reshape(q.shape)


def fp8_quantize(x: torch.Tensor, fmt: str = "e4m3", per_row: bool = False) -> ScaledFloat:
    """FP8 with one float32 scale per tensor (``per_row=False``) or per row of dim 0 (a Linear's output
    channel): ``scale = amax / max_value``, amax 0 -> scale 1."""
    f = get_format(fmt)
    xf = x.detach().float()
    amax = xf.reshape(xf.shape[0], -1).abs().amax(dim=1) if per_row else xf.abs().amax()
    scale = torch.where(amax > 0, amax / f.max_value, torch.ones_like(amax))
    view = scale.reshape(-1, *([1] * (xf.dim() - 1))) if per_row else scale
    q = round_to_format(xf / view, f)
    return ScaledFloat(f"fp8_{f.name}", encode(q, f), scale, torch.ones(()), tuple(x.shape))


def e8m0_scale(amax: torch.Tensor, elem_emax: int) -> torch.Tensor:
    """OCP MX shared scale ``2^(floor(log2(amax)) - elem_emax)`` clamped to [2^-127, 2^127]; amax 0 -> 2^-127."""
    _, exp = torch.frexp(amax)  # amax = m * 2^exp, m in [0.5, 1): floor(log2 amax) = exp - 1
    e = torch.clamp(exp - 1 - elem_emax, -127, 127)
    e = torch.where(amax > 0, e, torch.full_like(e, -127))
    return torch.ldexp(torch.ones_like(amax), e.float())


def mx_quantize(x: torch.Tensor, elem: str = "e2m1", block: int = 32) -> ScaledFloat:
    """OCP microscaling: blocks of ``block`` along the last dim, a shared E8M0 scale each."""
    f = get_format(elem)
    xb = _blocks(x.detach().float(), block)
    amax = xb.abs().amax(dim=-1)
    scale = e8m0_scale(amax, f.emax)
    q = round_to_format(xb / scale.unsqueeze(-1), f).reshape(x.shape)
    scheme = {"e2m1": "mxfp4", "e4m3": "mxfp8_e4m3", "e5m2": "mxfp8_e5m2", "e3m2": "mxfp6_e3m2", "e2m3": "mxfp6_e2m3"}[f.name]
    if SCHEMES[scheme][1] != block:
        raise ValueError(f"mx_quantize: {scheme} uses blocks of {SCHEMES[scheme][1]}, got block={block}")
    return ScaledFloat(scheme, encode(q, f), scale, torch.ones(()), tuple(x.shape))


def nvfp4_quantize(x: torch.Tensor, global_scale: torch.Tensor | None = None) -> ScaledFloat:
    """NVFP4: E2M1 elements in blocks of 16 along the last dim, an E4M3 scale per block, one float32
    ``global_scale`` per tensor (default ``amax / (448 * 6)``; amax 0 -> 1)."""
    xf = x.detach().float()
    if global_scale is None:
        amax = xf.abs().amax()
        global_scale = torch.where(amax > 0, amax / (448.0 * 6.0), torch.ones_like(amax))
    g = global_scale.detach().float().reshape(())
    xb = _blocks(xf, 16)
    s = round_to_format(xb.abs().amax(dim=-1) / 6.0 / g, "e4m3")
    denom = (s * g).unsqueeze(-1)
    q = torch.where(denom > 0, xb / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(xb))
    q = round_to_format(q, "e2m1").reshape(x.shape)
    return ScaledFloat("nvfp4", encode(q, "e2m1"), s, g, tuple(x.shape))


def quantize_float(x: torch.Tensor, scheme: str, per_row: bool = False) -> ScaledFloat:
    """``x`` in ``scheme`` (a key of :data:`SCHEMES`); ``per_row`` only for the FP8 schemes."""
    check_scheme(scheme)
    elem, block, _ = SCHEMES[scheme]
    if block is None:
        return fp8_quantize(x, elem, per_row=per_row)
    if per_row:
        raise ValueError(f"quantize_float: per_row is for fp8_* schemes; {scheme} has one scale per block of {block}")
    if scheme == "nvfp4":
        return nvfp4_quantize(x)
    return mx_quantize(x, elem, block)


class _FloatSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scheme: str, per_row: bool) -> torch.Tensor:  # noqa: ANN001
        return quantize_float(x, scheme, per_row).dequantize().to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        return grad, None, None


def fake_quantize_float(x: torch.Tensor, scheme: str, per_row: bool = False) -> torch.Tensor:
    """Straight-through fake quantization: forward the dequantized ``scheme`` value of ``x`` (in ``x``'s
    dtype), backward the gradient unchanged."""
    return _FloatSTE.apply(x, scheme, per_row)
