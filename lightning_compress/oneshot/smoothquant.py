"""SmoothQuant (Xiao et al. 2023): migrate activation outliers into the weights before W8A8.

For a normalization layer (LayerNorm / RMSNorm) whose output feeds linear layers ``L_1..L_k``
directly, per input channel ``j``: ``s_j = max|X_j|^alpha / max_i max_o |W_i[o, j]|^(1 - alpha)``
(``max|X_j|`` over all calibration tokens; ``s_j = 1`` where either side is 0; clamped to
``[1e-5, 1e5]``).  The norm's ``weight`` (and ``bias``) is divided by ``s`` and every consumer's input
column ``j`` multiplied by ``s_j``, so the block computes the same function; afterwards the activations
are flatter and the weights take the difference.  Pure PyTorch; only norms of the form
``y = normalize(x) * weight (+ bias)`` can take the fold (the caller checks the result numerically).
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_compress.oneshot.linear_view import is_conv1d, weight_out_in


@torch.no_grad()
def smoothing_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """``s`` ``[in]`` from the activation max per input channel and the consumers' ``[out, in]`` weights."""
    wmax = torch.stack([w.abs().amax(0) for w in weights]).amax(0).float()
    a = act_absmax.float()
    s = a.clamp_min(1e-12).pow(alpha) / wmax.clamp_min(1e-12).pow(1 - alpha)
    s = torch.where((a > 0) & (wmax > 0), s, torch.ones_like(s))
    return s.clamp(1e-5, 1e5)


@torch.no_grad()
def fold_smoothing(norm: nn.Module, consumers: list[nn.Module], s: torch.Tensor) -> None:
    """Divide ``norm``'s affine parameters by ``s`` and scale every consumer's input columns by ``s``."""
    w = norm.weight
    w.data.copy_((w.data.float() / s.to(w.device)).to(w.dtype))
    b = getattr(norm, "bias", None)
    if isinstance(b, torch.Tensor):
        b.data.copy_((b.data.float() / s.to(b.device)).to(b.dtype))
    for lin in consumers:
        p = lin.weight
        sd = s.to(p.device)
        if is_conv1d(lin):  # [in, out]
            p.data.copy_((p.data.float() * sd.unsqueeze(1)).to(p.dtype))
        else:
            p.data.copy_((p.data.float() * sd.unsqueeze(0)).to(p.dtype))


def can_fold(norm: nn.Module, in_features: int) -> str | None:
    """None if ``norm`` has a per-channel ``weight`` of ``in_features`` (a fold target), else why not."""
    w = getattr(norm, "weight", None)
    if not isinstance(w, torch.Tensor) or tuple(getattr(w, "ds_shape", w.shape)) != (in_features,):
        return f"{type(norm).__name__} has no per-channel weight of size {in_features}"
    if "Gemma" in type(norm).__name__:
        return f"{type(norm).__name__} scales by (1 + weight), which dividing the weight does not fold into"
    return None


__all__ = ["can_fold", "fold_smoothing", "smoothing_scales", "weight_out_in"]
