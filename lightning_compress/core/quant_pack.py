"""Real low-bit storage of quantized weights: one module's weight (:func:`pack_state` /
:func:`unpack_state`, layout in :func:`pack_state`) and a whole model (:func:`pack_model` /
:func:`unpack_model`).  Pure PyTorch."""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_compress.core import masking
from lightning_compress.core.bit_packing import pack_bits, unpack_bits
from lightning_compress.core.fake_quant import (
    WeightFakeQuant,
    pre_quant_weight,
    quantize_weight_int,
    weight_quantizer,
)
from lightning_compress.core.float_quant import FLOAT_PACK_VERSION, is_float_scheme, pack_float_weight, unpack_float_state
from lightning_compress.core.quant_grid import WEIGHT_QUANT_KIND, QuantSpec, qrange

_GRAN_CODE = {"tensor": 0, "channel": 1, "group": 2, "row_block": 3}
PACK_FORMAT_VERSION = 1


def pack_weight(weight: torch.Tensor, spec: QuantSpec, quantizer: WeightFakeQuant | None = None) -> dict[str, torch.Tensor]:
    """Pack ``weight`` by ``spec`` (see :func:`pack_state` for the layout)."""
    transposed = bool(quantizer is not None and quantizer.transposed)
    if is_float_scheme((quantizer.current_spec if quantizer is not None else spec).scheme):
        spec = quantizer.current_spec if quantizer is not None else spec
        return pack_float_weight(weight.t() if transposed else weight, spec, transposed)
    if quantizer is not None:
        q, scale, zp = quantizer.quantize_int(weight)
        spec = quantizer.current_spec
    else:
        q, scale, zp = quantize_weight_int(weight, spec)
    bits = spec.bits
    if bits > 8:
        raise ValueError(
            f"pack_state: the weight is quantized at {bits} bits now (a bits schedule that has not reached its "
            f"target yet); low-bit storage holds at most 8. Export once the schedule is at its final width."
        )
    if transposed:  # codes are rows of the [out, in] view
        weight = weight.t()
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
    groups = spec.groups if spec.granularity == "row_block" else spec.group_size
    meta = torch.tensor(
        [PACK_FORMAT_VERSION, bits, _GRAN_CODE[spec.granularity], int(groups or 0), int(spec.symmetric), weight.dim(), *weight.shape],
        dtype=torch.int64,
    )
    out = {"qweight": qweight, "scale": scale.float().contiguous(), "meta": meta}
    if zp is not None:
        small = bool(((zp >= 0) & (zp <= 255)).all())
        out["zero_point"] = zp.to(torch.uint8 if small else torch.int32).contiguous()
    if transposed:
        out["transposed"] = torch.tensor(1, dtype=torch.int64)
    return out


def pack_model(model: nn.Module) -> dict[str, torch.Tensor]:
    """:func:`pack_state` of every quantized parameter of ``model``, flattened:
    ``{f"{module_name}.{param_name}.{key}": tensor}`` with ``key`` in ``qweight`` / ``scale`` /
    ``zero_point`` / ``meta`` (layout in :func:`pack_state`).  Empty when nothing is quantized.
    :func:`unpack_model` inverts it."""
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        for pname in masking.transformed_params(module):
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
        if key in ("qweight", "scale", "zero_point", "meta", "transposed", "global_scale"):
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
      2 group, 3 row_block), group_size or groups (0 if none), symmetric (0/1), ndim, *shape]``.
    * ``"transposed"``: present (``1``) for a weight stored ``[in, out]`` (Hugging Face ``Conv1D``):
      shape and codes are those of its ``[out, in]`` transpose; :func:`unpack_state` transposes back.
    * ``"zero_point"`` is ``int32`` instead of ``uint8`` when a zero-point falls outside [0, 255]
      (DeepSpeed's asymmetric grid does not clip it).

    Dequantization (:func:`unpack_state`): affine ``(q - zp) * scale``, ternary/binary ``q * alpha``.

    Float schemes (FP8, MX, NVFP4) are stored as format version 2: see
    :mod:`lightning_compress.core.float_quant` (``qweight`` element codes, ``scale``, ``global_scale``).

    Raises:
        ValueError: the parameter has no weight quantizer.
    """
    quantizer = weight_quantizer(module, param_name)
    if quantizer is None and any(weight_quantizer(m, p) is not None for m in module.modules() for p in masking.transformed_params(m)):
        return pack_model(module)
    if quantizer is None:
        raise ValueError(
            f"pack_state: {type(module).__name__}.{param_name} carries no {WEIGHT_QUANT_KIND!r} transform; "
            f"quantize it with WeightQuant or lightning_compress.quantize first."
        )
    with torch.no_grad():
        value = pre_quant_weight(module, param_name)
        return pack_weight(value.detach(), quantizer.current_spec, quantizer)



def unpack_state(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dequantized weight (``dtype``, original shape) from a :func:`pack_state` dict."""
    meta = state["meta"].tolist()
    if meta[0] == FLOAT_PACK_VERSION:
        return unpack_float_state(state, dtype)
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
    out = (q * scale.unsqueeze(1)).reshape(shape)
    if "transposed" in state:  # a Conv1D weight, packed as its [out, in] transpose
        out = out.t()
    return out.to(dtype)


def packed_nbytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors in a :func:`pack_state` dict."""
    return sum(t.numel() * t.element_size() for t in state.values())
