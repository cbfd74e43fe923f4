"""``torch.export`` of a plain model with dynamic batch (and sequence / spatial) dimensions where the
model allows them.

Every dimension of every input tensor is first marked ``Dim.AUTO``: ``torch.export`` keeps symbolic
the ones the model's code lets vary (batch, sequence length, image size) and specialises the others
to the example's size (a feature dimension read by a Linear), so a call with another batch size or
sequence length runs, and one with a size the model cannot take is refused by the program's shape
guards (never silently wrong).  When that export fails, only dim 0 (the batch) is marked, then none.

A model with ``config.use_cache`` (a transformers decoder: Llama, GPT-2, ...) is exported with it off:
the program returns the model's outputs without the key/value cache object, which ``torch.export``
cannot return; the logits / hidden states are the same.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _dynamic(value: Any, all_dims: bool) -> Any:
    if isinstance(value, torch.Tensor):
        if value.dim() < 1:
            return None
        return {d: torch.export.Dim.AUTO for d in range(value.dim() if all_dims else 1)}
    if isinstance(value, dict):
        return {k: _dynamic(v, all_dims) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_dynamic(v, all_dims) for v in value)
    return None


def _dynamic_batch(value: Any) -> Any:
    return _dynamic(value, all_dims=False)


def export_program(model: nn.Module, args: tuple, kwargs: dict | None = None) -> torch.export.ExportedProgram:
    """``torch.export.export(model, args, kwargs)`` with every dim of every input tensor marked
    ``Dim.AUTO`` (batch and sequence length of any size run where the model allows); when that fails,
    dim 0 only; a model that cannot have a symbolic batch is exported for the example's shapes."""
    kwargs = dict(kwargs or {})
    spec = kwargs if kwargs and not args else args
    config = model.__dict__.get("config")
    cache = getattr(config, "use_cache", None)
    if cache:
        config.use_cache = False
    try:
        for all_dims in (True, False):
            try:
                return torch.export.export(model, args, kwargs, dynamic_shapes=_dynamic(spec, all_dims))
            except Exception:  # noqa: PERF203  (symbolic sizes the model cannot take: try fewer)
                continue
        return torch.export.export(model, args, kwargs)
    finally:
        if cache:
            config.use_cache = cache
