"""``topk``: learned movement scores (Sanh et al. 2020).

``S <- S - W * dL/dW'`` every optimizer step, where ``W' = W * mask`` is the effective weight and the
gradient reaches pruned weights through a straight-through estimator (so they can come back): the
forward transform (:class:`TopKMaskSTE`) accumulates ``dL/dW' * W`` over the micro-batches of one step
into the state's ``"acc"`` tensor, averaged over ranks at the boundary.  Scale-free, so no score
learning rate.  Before any step has been scored it ranks by magnitude.

Structured pruning cannot host the forward transform (its masks belong to
:mod:`lightning_compress.core.surgery`): there the step's signal is ``W * dL/dW`` reduced to units.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_compress.core.criteria.base import Criterion, ScoreState, register_criterion
from lightning_compress.core.dist import all_reduce_mean_
from lightning_compress.core.masking import TransformFn, apply_mask


class TopKMaskSTE(torch.autograd.Function):
    """``W * mask`` forward; backward gives ``W`` the masked gradient and accumulates the
    straight-through movement signal ``dL/dW' * W`` into ``acc`` (fp32, shape of W)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight, mask)
        ctx.acc = acc
        return apply_mask(weight, mask)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        weight, mask = ctx.saved_tensors
        with torch.no_grad():
            ctx.acc.add_((grad * weight).to(ctx.acc.dtype))
        return apply_mask(grad, mask), None, None


@register_criterion("topk")
class TopK(Criterion):
    """Movement scores ``S <- S - W * dL/dW'`` (see the module docstring)."""

    hooks_forward = True
    always_update = True
    structured = True

    def per_weight_state(self, shape: torch.Size | tuple[int, ...], device: torch.device | str = "cpu") -> ScoreState:
        state = ScoreState(self, shape, device)
        state.extra["acc"] = torch.zeros(shape, dtype=torch.float32, device=device)
        return state

    def forward_transform(self, state: ScoreState, mask_buffer: str) -> TransformFn:
        def fn(mod: nn.Module, w: torch.Tensor) -> torch.Tensor:
            if not torch.is_grad_enabled() or not w.requires_grad:
                return apply_mask(w, getattr(mod, mask_buffer))
            acc = state.extra.get("acc")
            if acc is None or acc.device != w.device:
                acc = state.extra["acc"] = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
            return TopKMaskSTE.apply(w, getattr(mod, mask_buffer), acc)

        return fn

    def signal(self, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Movement of one step without the forward accumulator: ``W * dL/dW``."""
        return weight * grad

    def accumulate(self, state: ScoreState, signal: torch.Tensor) -> None:
        if state.score is None:
            state.score = torch.zeros_like(signal)
        state.score.sub_(signal)
        state.steps += 1

    def update(self, state: ScoreState, weight: torch.Tensor | None, grad: torch.Tensor | None) -> None:
        """Drain the forward accumulator (mean over ranks; a collective) into the score."""
        acc = state.extra.get("acc")
        if acc is None:
            return
        all_reduce_mean_(acc)
        if not torch.isfinite(acc).all():
            acc.zero_()
            return
        self.accumulate(state, acc)
        acc.zero_()


__all__ = ["TopK", "TopKMaskSTE"]
