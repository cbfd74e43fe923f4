"""Export-time layers whose weight is stored in a float format (FP8 / MXFP8 / MXFP6 / MXFP4 / NVFP4 of
:mod:`lightning_compress.core.float_quant`): element codes as uint8 plus the format's scales, decoded in
the graph by a table lookup (``decode_table[codes]``) and the same scale multiplications, in the same
order, as the fake quantizer's forward (``value * scale``, then ``* global_scale`` for NVFP4, float32,
then the layer's dtype) — so the exported program computes exactly what training's forward computed.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_compress.core.float_formats import decode_table
from lightning_compress.core.float_quant import block_size, quantize_float_weight


class StoredFloat(nn.Module):
    """A Linear / Conv2d / Embedding whose weight lives as float-format codes (see the module docstring)."""

    def __init__(self, module: nn.Module, spec, weight: torch.Tensor) -> None:  # noqa: ANN001
        super().__init__()
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise ValueError(f"StoredFloat: Conv2d padding_mode={module.padding_mode!r} is not supported.")
        self.kind = "linear" if isinstance(module, nn.Linear) else "conv" if isinstance(module, nn.Conv2d) else "embedding"
        sf = quantize_float_weight(weight, spec)
        self.shape = tuple(module.weight.shape)
        self.block = block_size(spec.scheme)
        self.nvfp4 = spec.scheme == "nvfp4"
        self.per_row = spec.granularity == "channel"
        self.register_buffer("codes", sf.codes.clone())
        self.register_buffer("table", decode_table(sf.element_format))
        self.register_buffer("w_scale", sf.scales.float().clone())
        self.register_buffer("global_scale", sf.global_scale.float().reshape(()).clone())
        self.compute_dtype = module.weight.dtype
        self.register_buffer("bias", module.bias.detach().clone() if getattr(module, "bias", None) is not None else None)
        if self.kind == "conv":
            self.stride, self.padding, self.dilation, self.groups = module.stride, module.padding, module.dilation, module.groups
        if self.kind == "embedding":
            self.padding_idx = module.padding_idx

    def weight_value(self) -> torch.Tensor:
        q = self.table[self.codes.long()]
        if self.block is None:
            w = q * (self.w_scale.reshape(-1, 1) if self.per_row else self.w_scale)
        else:
            rows, n = q.shape
            w = (q.reshape(rows, n // self.block, self.block) * self.w_scale.unsqueeze(-1)).reshape(rows, n)
        if self.nvfp4:
            w = w * self.global_scale
        return w.reshape(self.shape).to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_value()
        if self.kind == "linear":
            return nn.functional.linear(x, w, self.bias)
        if self.kind == "conv":
            return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return nn.functional.embedding(x, w, self.padding_idx)
