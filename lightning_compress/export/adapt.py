"""Fit a model and its example input to an exporter's calling convention.

* :func:`split_example`: an example input (a tensor, a tuple of positional inputs, or a dict of
  keyword inputs) as ``(args, kwargs)``.
* :func:`tensor_outputs`: the model behind positional tensor inputs and one tensor output, the form
  the ONNX exporters of :mod:`lightning_compress.export.onnx` write.  This is the only place that
  knows how a Hugging Face model is called and what it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def split_example(example: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of an example input: a dict is keyword inputs, a tuple positional inputs,
    anything else the one positional input."""
    if isinstance(example, dict):
        return (), dict(example)
    if isinstance(example, tuple):
        return example, {}
    return (example,), {}


class _TensorOutputs(nn.Module):
    """``model`` called with positional tensors (as keywords named ``input_names`` for a Hugging
    Face model), returning its first tensor output."""

    def __init__(self, model: nn.Module, input_names: Sequence[str] | None) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names) if input_names else None

    def forward(self, *args: torch.Tensor) -> Any:
        if self.input_names is not None and self.by_keyword:
            out = self.model(**dict(zip(self.input_names, args)))
        else:
            out = self.model(*args)
        if isinstance(out, torch.Tensor):
            return out
        if hasattr(out, "logits"):
            return out.logits
        if isinstance(out, dict):
            return next(iter(out.values()))
        if isinstance(out, (tuple, list)):
            return out[0]
        return out

    @property
    def by_keyword(self) -> bool:
        return hasattr(self.model, "config") and hasattr(self.model.config, "model_type")


def tensor_outputs(model: nn.Module, input_names: Sequence[str] | None = None) -> nn.Module:
    """``model`` adapted to positional tensor inputs and one tensor output (in eval mode).

    A Hugging Face model (it has ``config.model_type``) is called with keywords: the i-th positional
    input becomes ``input_names[i]`` (e.g. ``["input_ids", "attention_mask"]``); any other model is
    called positionally.  The output is the model's tensor, the ``.logits`` of a Hugging Face
    ``ModelOutput``, the first value of a dict, or the first element of a tuple / list.
    """
    return _TensorOutputs(model, input_names).eval()
