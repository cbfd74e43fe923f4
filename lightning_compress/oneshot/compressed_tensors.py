"""Export a one-shot compressed Hugging Face model in the compressed-tensors format (what vLLM loads),
and read it back with that package's own decompression.

Needs the optional package ``compressed-tensors`` (``pip install compressed-tensors``; tested with 0.20.1).

:func:`save_compressed_tensors` (model, directory):

1. takes the grid of every quantized ``nn.Linear`` from its :class:`~lightning_compress.core.fake_quant.WeightFakeQuant`
   (fixed ranges -> scale, zero-point by :func:`~lightning_compress.core.quant_grid.affine_params`) and, when
   the layer's input carries a dynamic 8-bit activation quantizer (SmoothQuant W8A8), that too;
2. bakes a plain copy (:func:`lightning_compress.clean`: masks and on-grid weights);
3. attaches one compressed-tensors ``QuantizationScheme`` per distinct grid (targets = the exact module
   names), writes our scales / zero-points into the scheme's ``weight_scale`` / ``weight_zero_point``
   (compressed-tensors' integer range is signed for every width: an asymmetric code ``q`` in
   ``[0, 2^b - 1]`` with zero-point ``z`` is stored as ``q - 2^(b-1)`` with ``z - 2^(b-1)``), compresses
   with ``ModelCompressor`` (``pack-quantized`` for 4/3-bit and weight-only 8-bit, ``int-quantized`` for
   W8A8) and saves (``save_pretrained`` + the ``quantization_config`` entry of ``config.json``).

Sparsity is stored as the zeros of the dense (or quantized) weights: compressed-tensors removed its
sparse formats (``sparse-24-bitmask``) after 0.14 ("Sparse24 format is no longer supported"), so there
is no 2:4 sparse storage to write with the installed version.  ``Conv1D`` (GPT-2) layers and ternary
2-bit weights have no compressed-tensors form: refused with ``ValueError``.

:func:`load_compressed_tensors` (directory, model_class): ``from_pretrained`` with
``CompressedTensorsConfig(run_compressed=False)``, i.e. decompressed by compressed-tensors itself.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_compress.core import masking
from lightning_compress.core.act_quant import ActFakeQuant
from lightning_compress.core.fake_quant import WeightFakeQuant, weight_quantizer
from lightning_compress.core.quant_grid import ACT_QUANT_KIND, WEIGHT_QUANT_KIND, affine_params, as_rows
from lightning_compress.oneshot.linear_view import is_conv1d


def _grids(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: {bits, symmetric, strategy, group_size, scale, zero_point, act}}`` of every quantized linear."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        t = masking.find_transform(m, "weight", WEIGHT_QUANT_KIND)
        if t is None:
            continue
        if is_conv1d(m) or not isinstance(m, nn.Linear):
            raise ValueError(f"save_compressed_tensors: {name!r} is a {masking.original_class(m).__name__}; "
                             f"compressed-tensors stores quantized nn.Linear layers only. Exclude it from quantization.")
        q = weight_quantizer(m)
        if q is None or not isinstance(q, WeightFakeQuant):
            raise ValueError(f"save_compressed_tensors: {name!r} carries a weight quantizer that is not a WeightFakeQuant.")
        spec = q.current_spec
        if spec.bits <= 2:
            raise ValueError(f"save_compressed_tensors: {name!r} is quantized to {spec.bits} bit(s) (ternary / binary), "
                             f"which compressed-tensors has no format for; use bits 3, 4 or 8.")
        w = masking.effective_param(m, "weight", kinds=tuple(k for _, k in masking.owners(m, "weight") if k != WEIGHT_QUANT_KIND))
        rows = as_rows(w.detach().float(), spec.granularity, spec.group_size)
        if q.ranges is None:
            lo, hi = rows.amin(1), rows.amax(1)
        else:
            lo, hi = q.ranges
        scale, zp = affine_params(lo, hi, spec.bits, spec.symmetric)
        out_f, in_f = m.weight.shape
        ngroups = 1 if spec.granularity == "channel" else in_f // spec.group_size
        if spec.granularity == "tensor":
            raise ValueError(f"save_compressed_tensors: {name!r} has one scale per tensor; export per channel or per group.")
        zp_ct = zp.to(torch.int32) - (0 if spec.symmetric else 2 ** (spec.bits - 1))
        act = None
        ti = masking.find_transform(m, None, ACT_QUANT_KIND)
        if ti is not None:
            aq = ti.fn
            if not isinstance(aq, ActFakeQuant) or aq.range != "dynamic" or aq.bits != 8 or not aq.symmetric:
                raise ValueError(f"save_compressed_tensors: {name!r} has an input quantizer other than dynamic 8-bit "
                                 f"symmetric per token; only that (SmoothQuant's W8A8) is exported.")
            act = 8
        out[name] = {
            "bits": spec.bits, "symmetric": spec.symmetric,
            "strategy": "channel" if spec.granularity == "channel" else "group",
            "group_size": spec.group_size if spec.granularity == "group" else None,
            "scale": scale.reshape(out_f, ngroups), "zero_point": zp_ct.reshape(out_f, ngroups), "act": act,
        }
    return out


@torch.no_grad()
def save_compressed_tensors(model: nn.Module, directory: str | Path) -> dict[str, Any]:
    """Write ``model`` (a Hugging Face ``PreTrainedModel`` carrying one-shot quantizers) to ``directory``
    in the compressed-tensors format; returns ``{"format", "groups", "modules"}``.  ``model`` is not changed."""
    try:
        from compressed_tensors.compressors import ModelCompressor
        from compressed_tensors.quantization import (
            QuantizationArgs, QuantizationConfig, QuantizationScheme, QuantizationStatus, apply_quantization_config,
        )
    except ImportError as e:  # pragma: no cover - optional dependency
        raise ImportError("save_compressed_tensors needs `pip install compressed-tensors`") from e
    from lightning_compress.export import clean

    grids = _grids(model)
    if not grids:
        raise ValueError("save_compressed_tensors: the model has no quantized nn.Linear; quantize with GPTQ / RTN / "
                         "SmoothQuant first (or save a plain model with save_pretrained).")
    plain = clean(copy.deepcopy(model))
    keys: dict[tuple, list[str]] = {}
    for name, g in grids.items():
        keys.setdefault((g["bits"], g["symmetric"], g["strategy"], g["group_size"], g["act"]), []).append(name)
    groups = {}
    for i, ((bits, sym, strategy, gs, act), names) in enumerate(keys.items()):
        weights = QuantizationArgs(num_bits=bits, type="int", symmetric=sym, strategy=strategy, group_size=gs,
                                   observer="minmax", dynamic=False)
        acts = None if act is None else QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
        groups[f"group_{i}"] = QuantizationScheme(targets=[f"re:^{n.replace('.', '[.]')}$" for n in names],
                                                  weights=weights, input_activations=acts)
    fmt = "int-quantized" if any(k[4] is not None for k in keys) else "pack-quantized"
    config = QuantizationConfig(config_groups=groups, quantization_status=QuantizationStatus.FROZEN, format=fmt)
    apply_quantization_config(plain, config, show_progress=False)
    for name, g in grids.items():
        m = plain.get_submodule(name)
        m.weight_scale.data.copy_(g["scale"].to(m.weight_scale.dtype))
        if hasattr(m, "weight_zero_point"):
            m.weight_zero_point.data.copy_(g["zero_point"].to(m.weight_zero_point.dtype))
        m.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(plain, quantization_format=fmt)
    compressor.compress_model(plain)
    directory = Path(directory)
    plain.save_pretrained(directory)
    compressor.update_config(str(directory))
    return {"format": fmt, "groups": len(groups), "modules": sorted(grids)}


def load_compressed_tensors(directory: str | Path, model_class: Any = None) -> nn.Module:
    """The model saved by :func:`save_compressed_tensors`, decompressed by compressed-tensors (dense
    float weights, ``from_pretrained`` with ``CompressedTensorsConfig(run_compressed=False)``)."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    cls = model_class or AutoModelForCausalLM
    return cls.from_pretrained(str(directory), quantization_config=CompressedTensorsConfig(run_compressed=False))


__all__ = ["load_compressed_tensors", "save_compressed_tensors"]
