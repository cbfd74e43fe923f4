"""The linear layers one-shot methods work on, seen as ``[out, in]`` matrices.

``nn.Linear`` keeps its weight as ``[out, in]``; Hugging Face GPT-2's ``Conv1D`` keeps it transposed,
``[in, out]`` (``y = x @ W + b``).  Every algorithm of :mod:`lightning_compress.oneshot` works on the
``[out, in]`` view (rows = output features, columns = input features, the axis the Hessian
``X^T X`` and the N:M groups run along); :func:`weight_out_in` reads it and :func:`to_module_layout`
turns an ``[out, in]`` tensor (new weights, a mask) back into the module's own layout.

:class:`TransposedWeightFakeQuant` is the weight quantizer for ``Conv1D``: the same grid as
:class:`~lightning_compress.core.fake_quant.WeightFakeQuant` (rows = output features, groups along
the input), applied to the transposed weight.  It is deliberately *not* a ``WeightFakeQuant``
subclass: the low-bit packer lays codes out row-major over the stored weight and would mis-pack a
transposed one, so ``clean`` bakes these weights as (on-grid) floats and packing skips them.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from lightning_compress.core import masking
from lightning_compress.core.fake_quant import fake_quant_weight
from lightning_compress.core.quant_grid import QuantSpec


def is_conv1d(module: nn.Module) -> bool:
    """True for a Hugging Face ``Conv1D`` (GPT-2 family; weight ``[in, out]``)."""
    cls = masking.original_class(module)
    return cls.__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a ``Conv1D``: the layers one-shot methods compress."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linears(block: nn.Module) -> dict[str, nn.Module]:
    """``{name relative to block: module}`` of every linear layer in ``block``, in module order."""
    return {n: m for n, m in block.named_modules() if n and is_linear(m)}


def out_in_shape(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of a linear layer (the full shape under ZeRO-3)."""
    w = module.weight
    shape = tuple(getattr(w, "ds_shape", w.shape))
    return (shape[1], shape[0]) if is_conv1d(module) else (shape[0], shape[1])


def weight_out_in(module: nn.Module, effective: bool = True) -> torch.Tensor:
    """A float32 copy of the weight as ``[out, in]``; ``effective``: as forward sees it (masks and
    quantizers applied), else the stored parameter."""
    w = masking.effective_param(module, "weight") if effective else module.weight
    w = w.detach().float().clone()
    return w.t().contiguous() if is_conv1d(module) else w


def to_module_layout(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """An ``[out, in]`` tensor in the module's own weight layout."""
    return t.t().contiguous() if is_conv1d(module) else t


@torch.no_grad()
def write_weight(module: nn.Module, w_out_in: torch.Tensor) -> None:
    """Store an ``[out, in]`` weight into the module's parameter (its dtype and layout)."""
    p = module.weight
    p.data.copy_(to_module_layout(module, w_out_in).to(dtype=p.dtype, device=p.device))


class TransposedWeightFakeQuant:
    """Weight transform for ``Conv1D``: :func:`fake_quant_weight` of the ``[out, in]`` view (fixed
    ``ranges`` per row of that view's :func:`~lightning_compress.core.quant_grid.as_rows`)."""

    def __init__(self, spec: QuantSpec, ranges: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.spec = spec
        self.bits = spec.bits
        self.enabled = True
        self.ranges = ranges

    @property
    def current_spec(self) -> QuantSpec:
        return replace(self.spec, bits=self.bits)

    def __call__(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        return fake_quant_weight(weight.t(), self.current_spec, self.ranges).t()

    def __repr__(self) -> str:
        return f"TransposedWeightFakeQuant(bits={self.bits}, spec={self.spec})"


__all__ = [
    "TransposedWeightFakeQuant", "is_conv1d", "is_linear", "linears", "out_in_shape", "to_module_layout",
    "weight_out_in", "write_weight",
]
