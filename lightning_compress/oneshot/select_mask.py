"""Keep-masks from scores (True = keep), shared by the one-shot pruners.  All on ``[out, in]`` views.

* :func:`row_mask`: per output row, the ``round(sparsity * in)`` lowest-scoring weights pruned
  (Wanda's comparison group).
* :func:`layer_mask`: over the whole matrix, the ``round(sparsity * numel)`` lowest pruned.
* :func:`nm_mask`: in every group of ``m`` consecutive input columns of a row, the ``n`` highest
  kept (``"2:4"`` keeps 2 of 4, DESIGN section 2).

Ties are broken by position (``torch.topk`` order), so the counts are always exact.
"""

from __future__ import annotations

import torch


def _check_nm(shape: tuple[int, ...], n: int, m: int) -> None:
    if shape[-1] % m:
        raise ValueError(f"oneshot: an N:M pattern with M={m} needs the input dimension ({shape[-1]}) to be a multiple of {m}")


def row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    k = int(round(sparsity * score.shape[1]))
    keep = torch.ones_like(score, dtype=torch.bool)
    if k > 0:
        idx = score.topk(k, dim=1, largest=False).indices
        keep.scatter_(1, idx, False)
    return keep


def layer_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    k = int(round(sparsity * score.numel()))
    keep = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
    if k > 0:
        keep[score.reshape(-1).topk(k, largest=False).indices] = False
    return keep.reshape(score.shape)


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    _check_nm(tuple(score.shape), n, m)
    rows, cols = score.shape
    groups = score.reshape(rows, cols // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, groups.topk(n, dim=2).indices, True)
    return keep.reshape(rows, cols)


def mask_for(score: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, per_row: bool) -> torch.Tensor:
    """The keep-mask of ``score`` for an unstructured ``sparsity`` (per row or per layer) or an N:M pattern."""
    if nm is not None:
        return nm_mask(score, *nm)
    return row_mask(score, sparsity) if per_row else layer_mask(score, sparsity)


__all__ = ["layer_mask", "mask_for", "nm_mask", "row_mask"]
