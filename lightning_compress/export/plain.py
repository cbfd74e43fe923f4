"""A plain copy of a compressed model with its shapes unchanged (the input of the ONNX exporters)."""

from __future__ import annotations

import copy

from torch import nn

from lightning_compress.core import masking


def plain_copy(model: nn.Module, bake: bool = True) -> nn.Module:
    """A deep copy of ``model`` with all machinery taken off (:func:`lightning_compress.core.masking.strip`);
    ``model`` is not changed.

    ``bake=True``: every transform (masks and fake quantizers) is first baked into the weights
    (:func:`lightning_compress.core.masking.bake`), so the copy computes what ``model`` computes, with
    the same shapes (pruned units stay, as zeros), except that activation quantizers are dropped
    (input transforms cannot be baked; :func:`lightning_compress.export.clean` keeps them, see
    :mod:`lightning_compress.export.input_quant`).  ``bake=False``: the stored weights are kept, i.e.
    the uncompressed float model.
    """
    model = copy.deepcopy(model)
    if bake:
        masking.bake(model)
    return masking.strip(model)
