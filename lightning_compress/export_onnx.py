"""ONNX export of quantized models, in two forms.

* :func:`export_qdq`: the fake-quantized model as is.  ``torch.fake_quantize_*`` become
  ``QuantizeLinear`` / ``DequantizeLinear`` pairs on weights (per tensor, per channel; groups as
  per-channel QDQ on the weight viewed ``[out*in/g, g]`` then reshaped; 4/3-bit values sit in an
  int8 container after a clip, ternary / binary weights are exported as their float values) and on
  static activations (per tensor, uint8 when asymmetric).  Dynamic per-token activation quantization
  has no QDQ form; it is exported as the float arithmetic that computes it (so outputs agree with
  PyTorch).  This is the format for TensorRT and for CPUs with VNNI / AMX.
* :func:`export_int8`: an integer model that is fast on a plain (AVX2) CPU in ONNX Runtime: every
  quantized Linear becomes ``DynamicQuantizeLinear`` (the activation, per tensor, uint8, at run
  time) -> ``MatMulInteger`` (our int8 weight codes, zero-points) -> ``Cast`` -> ``Mul`` (activation
  scale x our per-channel weight scales) -> ``Add`` (bias), the pattern ONNX Runtime fuses into its
  ``DynamicQuantizeMatMul`` kernel.  Quantized embeddings keep an int8 table with per-row scales
  (``Gather`` of codes and scales, then ``Mul``).  Conv2d likewise with ``ConvInteger`` (ONNX Runtime implements
  it for uint8 weights only: symmetric codes are shifted by 128), or kept as a float Conv with the
  dequantized weight (``conv="float"``, the default, because ``ConvInteger`` is slow in ONNX
  Runtime on CPU; see ``benchmarks/quant.py``: the weights are then stored as int8 codes and
  dequantized in the graph, which ONNX Runtime constant-folds at load).  Group-wise weights have no
  per-column form in ``MatMulInteger``: they are stored the same way (integer codes, float kernel)
  and listed under ``"int8 storage"`` in the returned summary.  The model's own activation quantizers are replaced by ONNX Runtime's
  dynamic per-tensor uint8 quantization.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from lightning_compress.core.quantize import pre_quant_weight, weight_quantizer
from lightning_compress.core.surgery import strip


class _OutputAdapter(nn.Module):
    """Runs the model with positional inputs and returns tensors (``logits`` / first output of
    Hugging Face ``ModelOutput``s and tuples)."""

    def __init__(self, model: nn.Module, input_names: Sequence[str] | None) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names) if input_names else None

    def forward(self, *args: torch.Tensor) -> Any:
        if self.input_names is not None and _wants_kwargs(self.model):
            out = self.model(**dict(zip(self.input_names, args)))
        else:
            out = self.model(*args)
        if isinstance(out, torch.Tensor):
            return out
        if hasattr(out, "logits"):
            return out.logits
        if isinstance(out, dict):
            return next(iter(out.values()))
        if isinstance(out, (tuple, list)):
            return out[0]
        return out


def _wants_kwargs(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model.config, "model_type")


def _export(model: nn.Module, args: tuple[torch.Tensor, ...], path: str | os.PathLike, input_names: Sequence[str] | None,
            dynamic_axes: dict[str, dict[int, str]] | None, opset: int, fold: bool = True) -> str:
    adapter = _OutputAdapter(model, input_names).eval()
    names = list(input_names) if input_names else [f"input_{i}" for i in range(len(args))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                adapter, tuple(args), str(path), dynamo=False, opset_version=opset, input_names=names,
                output_names=["output"], dynamic_axes=dynamic_axes, do_constant_folding=fold,
            )
    return str(path)


def export_qdq(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    input_names: Sequence[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    opset: int = 17,
) -> str:
    """Export a fake-quantized model (``WeightQuant`` / ``ActQuant`` / :func:`quantize`) to an ONNX
    QDQ model at ``path`` (see module docstring).  ``args``: example inputs, positional (with
    ``input_names`` for Hugging Face models, which are called with keywords).  Returns the path."""
    return _export(model, args, path, input_names, dynamic_axes, opset)


def export_float(model: nn.Module, args: tuple[torch.Tensor, ...], path: str | os.PathLike,
                 input_names: Sequence[str] | None = None, dynamic_axes: dict[str, dict[int, str]] | None = None,
                 opset: int = 17) -> str:
    """Export ``model`` in plain fp32 (quantizers, if any, are taken off a copy first)."""
    return _export(_strip(model, bake=False), args, path, input_names, dynamic_axes, opset)


# ---------------------------------------------------------------------------------------------
# integer form
# ---------------------------------------------------------------------------------------------
class _DynQMatMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, wq_t: torch.Tensor, w_scale: torch.Tensor, w_zp: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        w = (wq_t.float() - w_zp.float()) * w_scale
        return x @ w + bias

    @staticmethod
    def symbolic(g: Any, x: Any, wq_t: Any, w_scale: Any, w_zp: Any, bias: Any) -> Any:
        xq, xs, xzp = g.op("DynamicQuantizeLinear", x, outputs=3)
        y = g.op("MatMulInteger", xq, wq_t, xzp, w_zp)
        y = g.op("Cast", y, to_i=1)
        scale = g.op("Mul", xs, w_scale)
        y = g.op("Mul", y, scale)
        return g.op("Add", y, bias)


class _DynQConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, w_zp: torch.Tensor, bias: torch.Tensor,
                stride: list[int], padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:  # type: ignore[override]
        w = (wq.float() - w_zp.float()) * w_scale.reshape(-1, 1, 1, 1)
        return torch.nn.functional.conv2d(x, w, bias.reshape(-1), stride, padding, dilation, groups)

    @staticmethod
    def symbolic(g: Any, x: Any, wq: Any, w_scale: Any, w_zp: Any, bias: Any, stride: list[int], padding: list[int],
                 dilation: list[int], groups: int) -> Any:
        xq, xs, xzp = g.op("DynamicQuantizeLinear", x, outputs=3)
        y = g.op("ConvInteger", xq, wq, xzp, w_zp, strides_i=stride, pads_i=list(padding) * 2, dilations_i=dilation, group_i=groups)
        y = g.op("Cast", y, to_i=1)
        scale = g.op("Mul", xs, w_scale)
        y = g.op("Mul", y, scale)
        return g.op("Add", y, bias)


class Int8Linear(nn.Module):
    """Export-time Linear holding integer weight codes (``[in, out]``), scales and zero-points."""

    def __init__(self, wq_t: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("wq_t", wq_t)
        self.register_buffer("w_scale", scale)
        self.register_buffer("w_zp", zp)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _DynQMatMul.apply(x, self.wq_t, self.w_scale, self.w_zp, self.bias)


class Int8Conv2d(nn.Module):
    """Export-time Conv2d with uint8 weight codes (``ConvInteger``)."""

    def __init__(self, conv: nn.Conv2d, wq: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        if isinstance(conv.padding, str):
            raise ValueError(f"export_int8: Conv2d with padding={conv.padding!r} is not supported; use numeric padding.")
        self.stride, self.padding, self.dilation, self.groups = list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups
        self.register_buffer("wq", wq)
        self.register_buffer("w_scale", scale.reshape(1, -1, 1, 1))
        self.register_buffer("w_zp", zp)
        self.register_buffer("bias", bias.reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _DynQConv.apply(x, self.wq, self.w_scale, self.w_zp, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Int8Embedding(nn.Module):
    """Export-time Embedding: an int8 (or uint8 + zero-point) table with one scale per row; a lookup
    gathers codes and scales (``Gather`` -> ``Cast`` -> ``Sub`` -> ``Mul``)."""

    def __init__(self, emb: nn.Embedding, codes: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None) -> None:
        super().__init__()
        if emb.max_norm is not None:
            raise ValueError("export_int8: nn.Embedding with max_norm is not supported.")
        self.register_buffer("wq", codes.to(torch.int8 if zp is None else torch.uint8))
        self.register_buffer("w_scale", scale.float().reshape(-1, 1))
        self.register_buffer("w_zp", (zp if zp is not None else torch.zeros_like(scale)).float().reshape(-1, 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.wq[ids].float() - self.w_zp[ids]) * self.w_scale[ids]


class StoredInt8(nn.Module):
    """Export-time Linear / Conv2d whose weight is stored as integer codes (int8, or uint8 with
    zero-points) with one scale per row of :func:`core.quantize.as_rows` (tensor, channel or group)
    and dequantized in the graph (``Cast`` -> ``Sub`` -> ``Mul`` -> ``Reshape``, constant-folded by
    ONNX Runtime at load): small files, float kernels."""

    def __init__(self, module: nn.Module, codes: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None) -> None:
        super().__init__()
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise ValueError(f"export_int8: Conv2d padding_mode={module.padding_mode!r} is not supported.")
        self.kind = "linear" if isinstance(module, nn.Linear) else "conv"
        self.shape = tuple(module.weight.shape)
        rows = scale.numel()
        self.register_buffer("wq", codes.reshape(rows, -1).to(torch.int8 if zp is None else torch.uint8))
        self.register_buffer("w_scale", scale.float().reshape(rows, 1))
        self.register_buffer("w_zp", (zp if zp is not None else torch.zeros_like(scale)).float().reshape(rows, 1))
        self.register_buffer("bias", module.bias.detach().float().clone() if module.bias is not None else None)
        if self.kind == "conv":
            self.stride, self.padding, self.dilation, self.groups = module.stride, module.padding, module.dilation, module.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = ((self.wq.float() - self.w_zp) * self.w_scale).reshape(self.shape)
        if self.kind == "linear":
            return nn.functional.linear(x, w, self.bias)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _strip(model: nn.Module, bake: bool) -> nn.Module:
    """Deep copy without any transform; ``bake``: weights replaced by their effective value."""
    from lightning_compress.export import bake as bake_params

    model = copy.deepcopy(model)
    if bake:
        bake_params(model, kinds="all")
    strip(model)
    return model


def _set_child(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def int8_model(
    model: nn.Module, conv: Literal["float", "integer"] = "float", storage_only: bool = False
) -> tuple[nn.Module, dict[str, list[str]]]:
    """A copy of ``model`` ready for the integer CPU export.

    Weight-quantized layers become :class:`Int8Linear` (per tensor / channel), :class:`Int8Conv2d`
    (``conv="integer"``), :class:`Int8Embedding`, or :class:`StoredInt8` (group-wise weights, and
    Conv2d with ``conv="float"``: integer storage, float kernel).  Quantizers that are disabled
    (before a schedule's ``start_step``) leave their layer in float.  Activation quantizers are
    dropped (ONNX Runtime quantizes activations dynamically).

    ``storage_only``: every quantized Linear / Conv2d becomes :class:`StoredInt8` (integer codes in
    the file, float kernels): the form ``RedundancyClean`` saves with ``torch.export``.

    Returns ``(model, {"integer": [...], "int8 storage": [...], "float": [...]})`` (module names).
    """
    summary: dict[str, list[str]] = {"integer": [], "int8 storage": [], "float": []}
    plan: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Any, str]] = {}
    for name, module in model.named_modules():
        q = weight_quantizer(module)
        if q is None:
            continue
        spec = q.current_spec
        if not q.enabled or not isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
            summary["float"].append(name)
            continue
        if isinstance(module, nn.Embedding):
            how = "integer" if spec.granularity != "group" else "float"
        elif storage_only or spec.granularity == "group" or (isinstance(module, nn.Conv2d) and conv == "float"):
            how = "int8 storage"
        else:
            how = "integer"
        if how == "float":
            summary["float"].append(name)
            continue
        with torch.no_grad():
            codes, scale, zp = q.quantize_int(pre_quant_weight(module).detach())
        plan[name] = (codes, scale, zp, spec, how)
    stripped = _strip(model, bake=True)
    for name, (codes, scale, zp, spec, how) in plan.items():
        module = stripped.get_submodule(name)
        summary[how].append(name)
        if how == "int8 storage":
            _set_child(stripped, name, StoredInt8(module, codes, scale, zp))
            continue
        out = module.weight.shape[0]
        if spec.granularity == "tensor":
            scale = scale.expand(out).clone()
            zp = zp.expand(out).clone() if zp is not None else None
        codes = codes.reshape(module.weight.shape)
        if isinstance(module, nn.Embedding):
            _set_child(stripped, name, Int8Embedding(module, codes, scale, zp))
            continue
        bias = module.bias.detach().float().clone() if module.bias is not None else torch.zeros(out)
        if isinstance(module, nn.Linear):
            if zp is None:  # symmetric / ternary / binary: int8 codes, zero-point 0
                wq_t = codes.t().contiguous().to(torch.int8)
                zpt = torch.tensor(0, dtype=torch.int8)
            else:
                wq_t = codes.t().contiguous().to(torch.uint8)
                zpt = zp.to(torch.uint8)
            new: nn.Module = Int8Linear(wq_t, scale.float(), zpt, bias)
        else:
            if zp is None:
                wq = (codes + 128).to(torch.uint8)
                zpt = torch.tensor(128, dtype=torch.uint8)
            else:
                wq = codes.to(torch.uint8)
                zpt = zp.to(torch.uint8)
            new = Int8Conv2d(module, wq, scale.float(), zpt, bias)
        _set_child(stripped, name, new)
    return stripped, summary


def export_int8(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    input_names: Sequence[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    opset: int = 17,
    conv: Literal["float", "integer"] = "float",
) -> dict[str, list[str]]:
    """Export the integer CPU form of a weight-quantized model to ``path`` (see module docstring).

    Returns ``{"integer": [module names run with integer kernels], "int8 storage": [integer codes in
    the file, dequantized at load], "float": [baked as float]}``.

    Raises:
        ValueError: the model has no weight quantizer (quantize it first).
    """
    if not any(weight_quantizer(m) is not None for m in model.modules()):
        raise ValueError("export_int8: the model has no weight quantizer; run lightning_compress.quantize or WeightQuant first.")
    if conv not in ("float", "integer"):
        raise ValueError(f"export_int8: `conv`={conv!r} must be 'float' or 'integer'.")
    m, summary = int8_model(model, conv)
    # no constant folding at export: it would turn the integer weight codes of StoredInt8 layers
    # back into fp32 constants in the file (ONNX Runtime folds them at load instead)
    _export(m, args, path, input_names, dynamic_axes, opset, fold=False)
    return summary


def onnx_bytes(path: str | os.PathLike) -> int:
    return os.path.getsize(path)


__all__ = ["export_qdq", "export_int8", "export_float", "int8_model", "Int8Linear", "Int8Conv2d", "Int8Embedding", "StoredInt8"]
