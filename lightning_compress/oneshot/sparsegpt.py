"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned
in One-Shot"), Algorithm 1, pure PyTorch.

On the ``[out, in]`` weight ``W`` with the layer Hessian ``H = 2 X X^T / n`` (+ ``damp * mean(diag H)``
on the diagonal): ``U`` = upper Cholesky factor of ``H^-1``.  Columns are visited left to right in
blocks of ``blocksize``.  At the start of each block (unstructured) the mask of the block is chosen
from the OBS saliency ``W_ij^2 / U_jj^2`` (lowest pruned); for N:M the mask of each group of ``m``
columns is chosen when its first column is reached (the ``n`` highest saliencies kept).  Column ``j``
is then fixed (pruned entries set to 0), and its error ``(w_j - q_j) / U_jj`` is spread over the
remaining columns of the block (``W[:, j:] -= err U[j, j:]``); after the block the accumulated errors
update all later columns at once (the lazy batched update).

Exact counts: an unstructured block of ``c`` columns prunes ``round(s * (c_end * out)) - round(s *
(c_start * out))`` weights, so the whole layer prunes exactly ``round(s * numel)``; N:M groups keep
exactly ``n`` of ``m``.  Returns the updated weights (pruned entries exactly 0) and the keep-mask.
"""

from __future__ import annotations

import torch

from lightning_compress.oneshot.hessian_inverse import prepare_hessian, upper_cholesky_of_inverse


@torch.no_grad()
def sparsegpt_prune(
    w: torch.Tensor,
    h: torch.Tensor | None,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    *,
    blocksize: int = 128,
    damp: float = 0.01,
    factor: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(new weight [out, in] float32, keep-mask bool [out, in])`` for ``w`` ``[out, in]`` and ``h`` ``[in, in]``.
    ``factor``: ``(U, dead)`` already computed from ``h`` and ``damp``
    (:meth:`~lightning_compress.oneshot.stats.LinearStats.inverse_factor`; ``h`` then unused)."""
    W = w.detach().float().clone()
    rows, cols = W.shape
    if nm is not None:
        n_keep, m = nm
        if cols % m:
            raise ValueError(f"oneshot: SparseGPT pattern {n_keep}:{m} needs the input dimension ({cols}) to be a multiple of {m}")
        if blocksize % m:
            blocksize = max(m, blocksize - blocksize % m)
    if factor is None:
        assert h is not None
        H, dead = prepare_hessian(h, W, damp)
        U = upper_cholesky_of_inverse(H)
        del H
    else:
        U, dead = factor
        W[:, dead.to(W.device)] = 0
    keep = torch.ones_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d1 = torch.diag(U1)
        if nm is None:
            keep1 = torch.ones_like(W1, dtype=torch.bool)
            k = int(round(sparsity * i2 * rows)) - int(round(sparsity * i1 * rows))
            if k > 0:
                sal = (W1.pow(2) / d1.reshape(1, -1).pow(2)).reshape(-1)
                keep1.view(-1)[sal.topk(k, largest=False).indices] = False
            keepf = keep1.to(W1.dtype)
        else:
            keep1 = torch.zeros_like(W1, dtype=torch.bool)
            keepf = torch.zeros_like(W1)
        for i in range(count):
            if nm is not None and i % nm[1] == 0:
                sal = W1[:, i : i + nm[1]].pow(2) / d1[i : i + nm[1]].reshape(1, -1).pow(2)
                idx = sal.topk(nm[0], dim=1).indices
                keep1[:, i : i + nm[1]].scatter_(1, idx, True)
                keepf[:, i : i + nm[1]].scatter_(1, idx, 1.0)
            wcol = W1[:, i]
            # err = (w - w * keep) / d: the pruned entries' full value, 0 for the kept ones
            err = (wcol - wcol * keepf[:, i]) / U1[i, i]
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)  # the OBS update of the block's later columns
            Err1[:, i] = err
        W[:, i1:i2] = W1 * keepf  # column i of W1 is final once visited: kept values, pruned 0
        keep[:, i1:i2] = keep1
        if i2 < cols:
            W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1.0)
    W[~keep] = 0
    return W, keep


__all__ = ["sparsegpt_prune"]
