"""Reading back what :func:`lightning_compress.export.save_slim` wrote."""

from __future__ import annotations

import os

import torch
from torch import nn

from lightning_compress.core.quantize import unpack_model

PACKED_PREFIX = "lc_packed."


def load_slim_state(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A float ``state_dict`` from a ``model.safetensors`` written by :func:`save_slim` (packed low-bit
    weights, stored under ``lc_packed.<module>.<param>.<key>``, dequantized to ``dtype``), for
    ``slim_model.load_state_dict``."""
    from safetensors.torch import load_file

    raw = load_file(str(path))
    packed = {k[len(PACKED_PREFIX):]: v for k, v in raw.items() if k.startswith(PACKED_PREFIX)}
    state = {k: v for k, v in raw.items() if not k.startswith(PACKED_PREFIX)}
    state.update(unpack_model(packed, dtype))
    return state


def load_program(path: str | os.PathLike) -> nn.Module:
    """The runnable module of a ``model.pt2`` written by :func:`save_slim`
    (``torch.export.load(path).module()``): no model class code needed."""
    return torch.export.load(str(path)).module()
