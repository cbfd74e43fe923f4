"""The damped inverse Hessian both OBS methods (SparseGPT, GPTQ) start from.

Float32 throughout, as the GPTQ / SparseGPT reference code and llm-compressor: the ``[in, in]``
matrix is copied once, damped in place and factorized in place (:func:`factor_of`), so besides the
statistics at most two ``[in, in]`` matrices are alive at a time (1536 inputs: 9 MiB each).  Only when
the float32 Cholesky factorization fails (a matrix that damping left numerically indefinite) is it
retried in float64 from a fresh copy (the factor returned is float32 either way).
"""

from __future__ import annotations

import torch


def damped_hessian(h: torch.Tensor, damp: float, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H, dead)``: a float32 copy of ``scale * h`` where dead inputs (``H_jj == 0``: the feature was
    always zero) get ``H_jj = 1``, then ``damp * mean(diag H)`` added to the diagonal.  ``h`` is not
    modified; the caller zeroes the weight columns ``dead`` (they never mattered)."""
    H = h.to(dtype=torch.float32, copy=True)
    if scale != 1.0:
        H.mul_(scale)
    diag = H.diagonal()
    dead = diag == 0
    if bool(dead.any()):
        diag[dead] = 1.0
    diag.add_(damp * diag.mean())
    return H, dead


def prepare_hessian(h: torch.Tensor, w: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`damped_hessian` of ``h`` with ``w[:, dead] = 0`` done in place; returns ``(H, dead)``."""
    H, dead = damped_hessian(h.to(w.device), damp)
    w[:, dead] = 0
    return H, dead


def upper_cholesky_of_inverse(h: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """``U`` upper triangular with ``U^T U = H^-1`` (float32), as in the GPTQ / SparseGPT reference code:
    row ``i`` of ``U`` (from column ``i`` on) is the OBS update direction once columns ``< i`` are fixed.
    ``overwrite``: ``h`` (float32) may be overwritten (its Cholesky factor is computed in its storage,
    so one more ``[in, in]`` matrix is alive at a time, not two); then a float64 retry needs ``h``
    again and is not made (``RuntimeError``; the caller rebuilds ``h`` and calls without ``overwrite``)."""
    last: Exception | None = None
    for dtype in (torch.float32, torch.float64):
        try:
            if overwrite and h.dtype == dtype:
                lower = torch.linalg.cholesky(h, out=h)
            else:
                lower = torch.linalg.cholesky(h if h.dtype == dtype else h.to(dtype))
            hinv = torch.cholesky_inverse(lower)
            del lower
            return torch.linalg.cholesky(hinv, upper=True, out=hinv).to(torch.float32)
        except RuntimeError as e:  # torch.linalg.LinAlgError subclasses RuntimeError
            last = e
            if overwrite:
                raise _Overwritten(str(e)) from None
    raise RuntimeError(
        f"oneshot: the calibration Hessian is not positive definite even after damping ({last}); raise `damp` "
        f"(e.g. 0.1) or give more calibration tokens."
    ) from None


class _Overwritten(RuntimeError):
    """The float32 factorization of an overwritten matrix failed (the caller retries from a fresh copy)."""


def factor_of(h: torch.Tensor, damp: float, scale: float = 1.0, act_order: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(U, dead, perm)`` of :func:`damped_hessian` of ``scale * h`` (``act_order``: rows and columns
    permuted by decreasing diagonal first): one copy of ``h`` and one more ``[in, in]`` matrix alive
    at a time; a float32 failure retries from a fresh copy in float64."""
    for overwrite in (True, False):
        H, dead = damped_hessian(h, damp, scale)
        perm = None
        if act_order:
            perm = torch.argsort(torch.diagonal(H), descending=True)
            H = H[perm][:, perm]
        try:
            return upper_cholesky_of_inverse(H, overwrite=overwrite), dead, perm
        except _Overwritten:
            del H
    raise AssertionError("unreachable")


__all__ = ["damped_hessian", "factor_of", "prepare_hessian", "upper_cholesky_of_inverse"]
