"""Float weight formats as quantizer ``scheme`` values: ``"fp8_e4m3"``, ``"fp8_e5m2"``, ``"mxfp8_e4m3"``,
``"mxfp8_e5m2"``, ``"mxfp6_e3m2"``, ``"mxfp6_e2m3"``, ``"mxfp4"`` and ``"nvfp4"`` (emulation in
:mod:`lightning_compress.core.microscaling`).

How a :class:`~lightning_compress.core.quant_grid.QuantSpec` reads with a float scheme:

* ``bits`` is the element width (8 for FP8 / MXFP8, 6 for MXFP6, 4 for MXFP4 / NVFP4); any other value
  is refused (no bit schedules).
* FP8: ``granularity="tensor"`` (one float32 scale) or ``"channel"`` (one per output row).
* MX / NVFP4: ``granularity="group"`` with ``group_size`` equal to the format's block (32; NVFP4 16):
  blocks of consecutive input values of one output row (a Conv2d row is ``in * kh * kw`` values).
* ``symmetric=True`` (the formats are sign-magnitude); the scale comes from the weight's absolute
  maximum at every call (no calibrated ranges).

Storage (:func:`pack_float_weight`): element codes (uint8, FP4 two per byte), scales (float32 for FP8,
E8M0 / E4M3 codes as uint8 for MX / NVFP4), NVFP4's global scale, and ``meta`` =
``[2, scheme index in FLOAT_SCHEMES, granularity code, ndim, *shape]`` (format version 2 of
:mod:`lightning_compress.core.quant_pack`).
"""

from __future__ import annotations

import math

import torch

from lightning_compress.core.float_formats import get_format
from lightning_compress.core.microscaling import SCHEMES as _FLOAT, ScaledFloat, fake_quantize_float, quantize_float

FLOAT_SCHEMES: tuple[str, ...] = tuple(_FLOAT)
FLOAT_PACK_VERSION = 2


def is_float_scheme(scheme: str) -> bool:
    return scheme in _FLOAT


def element_bits(scheme: str) -> int:
    """Bits of one element of ``scheme``."""
    return get_format(_FLOAT[scheme][0]).bits


def block_size(scheme: str) -> int | None:
    return _FLOAT[scheme][1]


def check_float_spec(spec, owner: str) -> None:  # noqa: ANN001 (QuantSpec; no import cycle)
    """ValueError naming ``owner``, the argument, the value and the fix for a float-scheme spec that
    does not describe the format (see the module docstring)."""
    scheme = spec.scheme
    bits = element_bits(scheme)
    if spec.bits != bits:
        raise ValueError(f"{owner}: `bits`={spec.bits} does not match scheme={scheme!r} ({bits}-bit elements); pass bits={bits}")
    if not spec.symmetric:
        raise ValueError(f"{owner}: `symmetric`=False with scheme={scheme!r}: float formats are sign-magnitude; pass symmetric=True")
    block = block_size(scheme)
    if block is None:
        if spec.granularity not in ("tensor", "channel"):
            raise ValueError(
                f"{owner}: `granularity`={spec.granularity!r} with scheme={scheme!r}: FP8 scales are per tensor or per "
                f"output channel; pass granularity='tensor' or 'channel' (or an MX scheme for block scales)"
            )
    elif spec.granularity != "group" or spec.group_size != block:
        raise ValueError(
            f"{owner}: scheme={scheme!r} shares one scale per block of {block} input values; got "
            f"granularity={spec.granularity!r}, group_size={spec.group_size!r}: pass granularity='group', group_size={block}"
        )


def _rows(w: torch.Tensor, spec) -> torch.Tensor:  # noqa: ANN001
    if spec.granularity == "tensor":
        return w.reshape(1, -1)
    if w.dim() < 2:
        raise ValueError(f"scheme={spec.scheme!r} with granularity={spec.granularity!r} needs a weight with >= 2 dims, got {tuple(w.shape)}")
    return w.reshape(w.shape[0], -1)


def fake_quant_float_weight(w: torch.Tensor, spec) -> torch.Tensor:  # noqa: ANN001
    """``w`` (``[out, in...]``) on the float grid of ``spec.scheme``, same shape and dtype, STE gradient."""
    rows = _rows(w, spec)
    out = fake_quantize_float(rows.float(), spec.scheme, per_row=spec.granularity == "channel")
    return out.reshape(w.shape).to(w.dtype)


def quantize_float_weight(w: torch.Tensor, spec) -> ScaledFloat:  # noqa: ANN001
    return quantize_float(_rows(w.detach(), spec).float(), spec.scheme, per_row=spec.granularity == "channel")


_GRAN = {"tensor": 0, "channel": 1, "group": 2}


def pack_float_weight(w: torch.Tensor, spec, transposed: bool = False) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Packed storage of ``w`` (already ``[out, in...]``; ``transposed`` records a Conv1D's layout)."""
    sf = quantize_float_weight(w, spec)
    packed = sf.packed()
    meta = torch.tensor([FLOAT_PACK_VERSION, FLOAT_SCHEMES.index(spec.scheme), _GRAN[spec.granularity], w.dim(), *w.shape], dtype=torch.int64)
    out = {"qweight": packed["codes"].contiguous(), "scale": packed["scales"].contiguous(), "meta": meta}
    if "global_scale" in packed:
        out["global_scale"] = packed["global_scale"].float().contiguous()
    if transposed:
        out["transposed"] = torch.tensor(1, dtype=torch.int64)
    return out


def unpack_float_state(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dequantized weight from :func:`pack_float_weight` (original layout)."""
    meta = state["meta"].tolist()
    scheme = FLOAT_SCHEMES[meta[1]]
    gran = meta[2]
    ndim = meta[3]
    shape = tuple(meta[4 : 4 + ndim])
    rows_shape = (1, math.prod(shape)) if gran == 0 else (shape[0], math.prod(shape[1:]))
    packed = {"codes": state["qweight"], "scales": state["scale"]}
    if "global_scale" in state:
        packed["global_scale"] = state["global_scale"]
    out = ScaledFloat.from_packed(scheme, packed, rows_shape).dequantize().reshape(shape)
    if "transposed" in state:
        out = out.t()
    return out.to(dtype)
