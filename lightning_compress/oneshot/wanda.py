"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models").

Score of weight ``W_ij`` (``[out, in]``): ``|W_ij| * ||X_j||_2``, with ``||X_j||_2`` the L2 norm of input
feature ``j`` over all calibration tokens.  Comparison group: each output row (unstructured: the
``round(sparsity * in)`` lowest of the row pruned), or each N:M group of a row.  The weights are not
updated.
"""

from __future__ import annotations

import torch

from lightning_compress.oneshot.select_mask import mask_for


@torch.no_grad()
def wanda_mask(w: torch.Tensor, sq: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
    """Keep-mask of ``w`` ``[out, in]`` from ``sq`` = ``sum_t x_tj^2`` per input column ``[in]``."""
    score = w.abs().float() * sq.float().clamp_min(0).sqrt().reshape(1, -1)
    return mask_for(score, sparsity, nm, per_row=True)


__all__ = ["wanda_mask"]
