"""Magnitude pruning, the baseline: score ``|W_ij|`` of the ``[out, in]`` weight, pruned per layer
(unstructured: the lowest ``round(sparsity * numel)`` of the whole matrix) or per N:M group.  No
calibration data; the weights are not updated."""

from __future__ import annotations

import torch

from lightning_compress.oneshot.select_mask import mask_for


@torch.no_grad()
def magnitude_mask(w: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
    """Keep-mask (bool, True = kept) of ``w`` ``[out, in]``."""
    return mask_for(w.abs().float(), sparsity, nm, per_row=False)


__all__ = ["magnitude_mask"]
