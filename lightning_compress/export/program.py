"""``torch.export`` of a plain model with a dynamic batch dimension where the model allows it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _dynamic_batch(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return {0: torch.export.Dim.AUTO} if value.dim() >= 1 else None
    if isinstance(value, dict):
        return {k: _dynamic_batch(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_dynamic_batch(v) for v in value)
    return None


def export_program(model: nn.Module, args: tuple, kwargs: dict | None = None) -> torch.export.ExportedProgram:
    """``torch.export.export(model, args, kwargs)`` with dim 0 of every input tensor marked
    ``Dim.AUTO`` (a batch of any size runs); a model that cannot have a symbolic batch is exported
    for the example's shapes instead."""
    kwargs = dict(kwargs or {})
    dyn: Any = _dynamic_batch(kwargs) if kwargs and not args else _dynamic_batch(args)
    try:
        return torch.export.export(model, args, kwargs, dynamic_shapes=dyn)
    except Exception:  # a model that cannot have a symbolic batch: export the example's shapes
        return torch.export.export(model, args, kwargs)
