"""State tensors of a model for saving: shared tensors once, contiguous CPU copies."""

from __future__ import annotations

import torch
from torch import nn


def unique_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``model.state_dict()``, each shared tensor (tied embeddings) once, under its
    first key; not copied."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, tuple]] = set()
    for k, v in model.state_dict().items():
        if not isinstance(v, torch.Tensor):
            continue
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.numel() else (id(v), 0, ())
        if key in seen:
            continue
        seen.add(key)
        out[k] = v
    return out


def state_for_safetensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with shared tensors stored once (tied embeddings) and contiguous CPU tensors."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in unique_tensors(model).items()}
