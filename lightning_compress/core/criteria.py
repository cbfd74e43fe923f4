"""Scores that rank weights for pruning (higher score = more important = kept longer).

Every score is an fp32 tensor of the weight's shape.  Updates happen once per optimizer step (at
the gradient-accumulation boundary, with the reduced gradient), never per micro-batch.

* ``l1`` / ``magnitude``: ``|W * mask|`` at the prune event (no state; already-pruned weights score 0,
  so masks only grow).
* ``snip``: ``|W * dL/dW|`` of the last optimizer step.
* ``snip_momentum``: ``S <- 0.9 * S + |W * dL/dW|`` every optimizer step (Intel Neural Compressor's
  criterion; pruned weights get zero gradient through the mask, so their score decays to 0).
* ``topk``: learned movement scores (Sanh et al. 2020): ``S <- S - W * dL/dW'`` every optimizer step,
  where ``W' = W * mask`` is the effective weight and the gradient reaches pruned weights through a
  straight-through estimator (so they can come back).  Scale-free, so no score learning rate.  Before
  any step has been scored, ``topk`` falls back to magnitude.
"""

from __future__ import annotations

from typing import Literal

import torch

Method = Literal["l1", "magnitude", "topk", "snip", "snip_momentum"]
METHODS = ("l1", "magnitude", "topk", "snip", "snip_momentum")
GRADIENT_METHODS = ("snip", "snip_momentum")
MOMENTUM = 0.9


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"`method`={method!r} is unknown; choose one of {METHODS}.")
    return "l1" if method == "magnitude" else method


class TopKMaskSTE(torch.autograd.Function):
    """``W * mask`` forward; backward gives ``W`` the masked gradient and accumulates the
    straight-through movement signal ``dL/dW' * W`` into ``acc`` (fp32, shape of W)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight, mask)
        ctx.acc = acc
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        weight, mask = ctx.saved_tensors
        with torch.no_grad():
            ctx.acc.add_((grad * weight).to(ctx.acc.dtype))
        return grad * mask, None, None


class ScoreState:
    """Per-weight score state for one criterion (fp32; created lazily)."""

    def __init__(self, method: str, shape: torch.Size, device: torch.device | str = "cpu") -> None:
        self.method = check_method(method)
        self.shape = shape
        self.score: torch.Tensor | None = None
        self.steps = 0
        # topk: movement signal accumulated by TopKMaskSTE over the micro-batches of one step
        self.acc: torch.Tensor | None = (
            torch.zeros(shape, dtype=torch.float32, device=device) if self.method == "topk" else None
        )

    @property
    def needs_grad(self) -> bool:
        return self.method in GRADIENT_METHODS

    def update(self, weight: torch.Tensor | None, grad: torch.Tensor | None) -> None:
        """One optimizer step's update. ``weight``/``grad``: full fp32 tensors (gradient methods)."""
        if self.method == "l1":
            return
        if self.method == "topk":
            assert self.acc is not None
            if not torch.isfinite(self.acc).all():
                self.acc.zero_()
                return
            if self.score is None:
                self.score = torch.zeros_like(self.acc)
            self.score.sub_(self.acc)
            self.acc.zero_()
            self.steps += 1
            return
        if weight is None or grad is None or not torch.isfinite(grad).all():
            return
        signal = (weight * grad).abs_()
        if self.score is None or self.method == "snip":
            self.score = signal
        else:
            self.score.mul_(MOMENTUM).add_(signal)
        self.steps += 1

    def value(self, effective_weight: torch.Tensor) -> torch.Tensor:
        """Score used at a prune event. ``effective_weight`` = full fp32 ``W * mask``."""
        if self.method == "l1" or self.score is None:
            return effective_weight.abs()
        return self.score.to(effective_weight.device)

    def ready(self) -> bool:
        """Gradient criteria need one scored optimizer step before they can rank."""
        return not self.needs_grad or self.steps > 0

    def state_dict(self) -> dict:
        return {"method": self.method, "score": None if self.score is None else self.score.cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.score = None if state.get("score") is None else state["score"].clone()
        self.steps = int(state.get("steps", 0))
