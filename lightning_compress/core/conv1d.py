"""Hugging Face ``Conv1D`` (GPT-2's projections) as a first-class layer type.

``transformers.pytorch_utils.Conv1D(nf, nx)`` computes ``x @ W + b`` with ``W`` of shape
``[in, out]`` = ``[nx, nf]``: a Linear whose weight is stored transposed.  Quantizers and patterns see
it as ``[out, in]`` (its transpose), exactly like a Linear, so a GPT-2 model needs no conversion
(DeepSpeed's GPT-2 example first ran ``convert_conv1d_to_linear``; the result is the same).

Recognised by duck typing (no import of ``transformers``): a module whose class, or a base class, is
named ``Conv1D`` and that has an ``nf`` attribute and a 2-D ``weight`` of shape ``[nx, nf]``.
Pure PyTorch.
"""

from __future__ import annotations

import torch
from torch import nn


def is_conv1d(module: nn.Module) -> bool:
    """True for a Hugging Face style ``Conv1D`` (weight ``[in, out]``)."""
    if not any(c.__name__ == "Conv1D" for c in type(module).__mro__):
        return False
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        return False
    shape = tuple(getattr(w, "ds_shape", w.shape))  # ZeRO-3 keeps the full shape there
    return len(shape) == 2 and getattr(module, "nf", None) == shape[1]


def conv1d_types(model: nn.Module) -> tuple[type[nn.Module], ...]:
    """The ``Conv1D`` classes used in ``model`` (to add to a tuple of targetable module types)."""
    seen: dict[type, None] = {}
    for m in model.modules():
        if is_conv1d(m):
            seen[type(m)] = None
    return tuple(seen)


def out_in_shape(module: nn.Module) -> tuple[int, ...]:
    """A weight's shape as ``[out, in...]`` (a ``Conv1D``'s transposed, any other's as stored)."""
    w = module.weight
    shape = tuple(getattr(w, "ds_shape", w.shape))
    return (shape[1], shape[0]) if is_conv1d(module) else shape


__all__ = ["conv1d_types", "is_conv1d", "out_in_shape"]
