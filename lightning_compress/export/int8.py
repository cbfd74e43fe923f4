"""Integer forms of weight-quantized models: layers that hold integer weight codes.

* :class:`Int8Linear` / :class:`Int8Conv2d`: integer kernels in ONNX (``DynamicQuantizeLinear`` ->
  ``MatMulInteger`` / ``ConvInteger`` -> ``Cast`` -> ``Mul`` -> ``Add``), the pattern ONNX Runtime
  fuses into its dynamic-quantized kernels; :class:`Int8Embedding`: an integer table with per-row
  scales.
* :class:`StoredInt8`: integer codes in the file, dequantized in the graph (float kernels).
* :func:`int8_model`: a plain copy of a quantized model with those layers swapped in, used by
  :func:`lightning_compress.export.export_int8` (ONNX) and
  :func:`lightning_compress.export.clean_for_storage` (the ``torch.export`` twin).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from lightning_compress.core.float_quant import is_float_scheme
from lightning_compress.core.quantize import pre_quant_weight, weight_quantizer
from lightning_compress.export.float_storage import StoredFloat
from lightning_compress.export.plain import plain_copy


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
    ONNX Runtime at load): small files, float kernels.  The dequantized weight (and the bias) keep
    the original layer's dtype, so a bf16-trained layer computes in bf16 as in training."""

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
        # the trained precision: bf16-true weights dequantize to bf16 (exactly the forward's values)
        self.compute_dtype = module.weight.dtype
        self.register_buffer("bias", module.bias.detach().clone() if module.bias is not None else None)
        if self.kind == "conv":
            self.stride, self.padding, self.dilation, self.groups = module.stride, module.padding, module.dilation, module.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = ((self.wq.float() - self.w_zp) * self.w_scale).reshape(self.shape).to(self.compute_dtype)
        if self.kind == "linear":
            return nn.functional.linear(x, w, self.bias)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


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
    float_plan: dict[str, tuple[Any, torch.Tensor]] = {}
    for name, module in model.named_modules():
        q = weight_quantizer(module)
        if q is None:
            continue
        spec = q.current_spec
        if not q.enabled or not isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
            summary["float"].append(name)
            continue
        if is_float_scheme(spec.scheme):  # FP8 / MX / NVFP4 codes, decoded in the graph
            float_plan[name] = (spec, pre_quant_weight(module).detach())
            summary.setdefault("float-format storage", []).append(name)
            continue
        if isinstance(module, nn.Embedding):
            how = "integer" if spec.granularity in ("tensor", "channel") else "float"
        elif storage_only or spec.granularity in ("group", "row_block") or (isinstance(module, nn.Conv2d) and conv == "float"):
            how = "int8 storage"
        else:
            how = "integer"
        if how == "float":
            summary["float"].append(name)
            continue
        with torch.no_grad():
            codes, scale, zp = q.quantize_int(pre_quant_weight(module).detach())
        plan[name] = (codes, scale, zp, spec, how)
    stripped = plain_copy(model, bake=True)
    for name, (spec, weight) in float_plan.items():
        _set_child(stripped, name, StoredFloat(stripped.get_submodule(name), spec, weight))
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
