"""Activation quantization kept by :func:`lightning_compress.clean`: a plain quantize-dequantize of a
layer's input in the slim model.

``ActQuant`` (and DeepSpeed's ``activation_quantization``) trains a model whose layers see quantized
inputs; the slim model must compute the same thing.  :func:`collect` reads every enabled input
quantizer (:class:`~lightning_compress.core.act_quant.ActFakeQuant`) before the machinery is stripped,
:func:`install` puts an :class:`InputQDQ` on each of those modules afterwards as a forward pre-hook:
no class swap, no buffer, no parameter (``state_dict`` keys are the plain model's), traced by
``torch.export`` / ONNX export as ordinary tensor ops.  Pure PyTorch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_compress.core import masking
from lightning_compress.core.act_quant import ActFakeQuant, dynamic_dims, static_range
from lightning_compress.core.fake_quant import fake_quant_dynamic, fake_quant_static
from lightning_compress.core.quant_grid import ACT_QUANT_KIND, affine_params


class InputQDQ:
    """Forward pre-hook: fake-quantize (quantize, then dequantize) the module's first input.

    ``range="dynamic"``: per token (Linear, ``Conv1D``) / per image (Conv) ranges at every call, as
    in training.  ``range="static"``: the range learned in training (``lo``, ``hi``), fixed; when none
    was learned, the call's own per-tensor min / max.
    """

    def __init__(
        self, bits: int, symmetric: bool, range: str, lo: float | None = None, hi: float | None = None, per_token: bool = True
    ) -> None:
        self.bits, self.symmetric, self.range, self.lo, self.hi = bits, symmetric, range, lo, hi
        #: dynamic ranges per token (last dim; Linear, Conv1D) or per image (all but the batch dim; Conv)
        self.per_token = per_token

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not args or not torch.is_tensor(args[0]) or not args[0].is_floating_point():
            return None
        x = args[0]
        if self.range == "dynamic":
            dims = (-1,) if self.per_token or x.dim() < 2 else tuple(range(1, x.dim()))
            xq = fake_quant_dynamic(x, self.bits, self.symmetric, dims)
        else:
            if self.lo is not None and self.hi is not None:
                lo = torch.tensor([self.lo], dtype=torch.float32, device=x.device)
                hi = torch.tensor([self.hi], dtype=torch.float32, device=x.device)
            else:
                xd = x.detach().float()
                lo, hi = xd.amin().reshape(1), xd.amax().reshape(1)
            scale, zp = affine_params(lo, hi, self.bits, self.symmetric)
            xq = fake_quant_static(x, scale, zp, self.bits, self.symmetric)
        return (xq, *args[1:])

    def __repr__(self) -> str:
        return f"InputQDQ(bits={self.bits}, symmetric={self.symmetric}, range={self.range!r})"


def collect(model: nn.Module) -> list[tuple[str, InputQDQ]]:
    """``(module name, InputQDQ)`` for every module whose input an enabled ``ActFakeQuant`` quantizes
    (call before the machinery is stripped)."""
    out = []
    for name, module in model.named_modules():
        for t in masking.input_transforms(module):
            q = t.fn
            if t.kind != ACT_QUANT_KIND or not isinstance(q, ActFakeQuant) or not q.enabled or q.observer is not None:
                continue
            rng = static_range(module) if q.range == "static" else None
            per_token = dynamic_dims(module, torch.zeros(1, 1, 1)) == (-1,)
            out.append((name, InputQDQ(q.bits, q.symmetric, q.range, *(rng or (None, None)), per_token=per_token)))
    return out


def install(model: nn.Module, found: list[tuple[str, InputQDQ]]) -> None:
    """Register each :class:`InputQDQ` as the forward pre-hook of the module of that name in ``model``
    (the stripped slim model, or its integer-code twin)."""
    for name, hook in found:
        model.get_submodule(name).register_forward_pre_hook(hook)


__all__ = ["InputQDQ", "collect", "install"]
