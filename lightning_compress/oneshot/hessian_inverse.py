"""The damped inverse Hessian both OBS methods (SparseGPT, GPTQ) start from."""

from __future__ import annotations

import torch


def prepare_hessian(h: torch.Tensor, w: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Dead inputs (``H_jj == 0``: the feature was always zero) get ``H_jj = 1`` and their weight column
    zeroed (it never mattered); then ``damp * mean(diag H)`` is added to the diagonal.  Returns
    ``(H, dead)``; edits ``w`` in place."""
    h = h.to(w.device).clone().double()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0
    h += torch.eye(h.shape[0], dtype=h.dtype, device=h.device) * (damp * torch.diag(h).mean())
    return h, dead


def upper_cholesky_of_inverse(h: torch.Tensor) -> torch.Tensor:
    """``U`` upper triangular with ``U^T U = H^-1`` (float32), as in the GPTQ / SparseGPT reference code:
    row ``i`` of ``U`` (from column ``i`` on) is the OBS update direction once columns ``< i`` are fixed."""
    try:
        lower = torch.linalg.cholesky(h)
        hinv = torch.cholesky_inverse(lower)
        return torch.linalg.cholesky(hinv, upper=True).float()
    except RuntimeError as e:  # torch.linalg.LinAlgError subclasses RuntimeError
        raise RuntimeError(
            f"oneshot: the calibration Hessian is not positive definite even after damping ({e}); raise `damp` "
            f"(e.g. 0.1) or give more calibration tokens."
        ) from None


__all__ = ["prepare_hessian", "upper_cholesky_of_inverse"]
