"""The one reducer from per-weight tensors to unit scores (rows, heads, channels of a
:class:`~lightning_compress.core.surgery.UnitGroup`).

For a group, :func:`unit_reduce` takes ``tensor_of(param)`` (a per-weight score or signal of the
parameter's full shape, e.g. ``|W|`` or ``W * dL/dW``) for the first parameter (the weight) of every
``"out"`` member except BatchNorms, sums each member's slices of one unit (along the member's ``dim``;
``width`` consecutive indices per unit, ``tiles`` repeats for packed q/k/v) and divides by the number
of elements per unit: the **mean over the unit's producer weight slices**, in float64 on the CPU.
Structured pruning feeds criteria through it: their per-weight signal is reduced to units before it is
folded into the unit score, and their weight score (magnitude) likewise.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lightning_compress.core.surgery import UnitGroup, physical_dim


def unit_reduce(group: UnitGroup, tensor_of: Callable[[nn.Parameter], torch.Tensor | None]) -> torch.Tensor:
    """Float64 ``[num_units]``: mean of ``tensor_of(weight)`` over each unit's producer weight slices
    (a member whose ``tensor_of`` is None is skipped)."""
    total = torch.zeros(group.num_units, dtype=torch.float64)
    count = 0
    for m in group.members:
        if m.role != "out" or isinstance(m.module, nn.modules.batchnorm._BatchNorm):
            continue
        p = m.module._parameters.get(m.params[0])
        if p is None:
            continue
        t = tensor_of(p)  # type: ignore[arg-type]
        if t is None:
            continue
        d = physical_dim(m.module, p, m.dim)  # a Conv1D's weight is stored [in, out]
        t = t.double().cpu()
        per_row = t.reshape(t.shape[0], -1).sum(dim=1) if d == 0 else t.transpose(0, d).reshape(t.shape[d], -1).sum(1)
        span = m.tiles * group.num_units * m.width  # a concatenation's member: its slice from ``offset``
        total += per_row[m.offset:m.offset + span].reshape(m.tiles, group.num_units, m.width).sum(dim=(0, 2))
        count += t.numel() // t.shape[d] * span // group.num_units
    return total / max(count, 1)


__all__ = ["unit_reduce"]
