"""Gradient criteria: ``snip`` and ``snip_momentum`` (Intel Neural Compressor's criterion).

* ``snip``: ``|W * dL/dW|`` of the last optimizer step.
* ``snip_momentum``: ``S <- 0.9 * S + |W * dL/dW|`` every optimizer step, in one pass (pruned weights
  get zero gradient through the mask, so their score decays to 0).

``W`` and ``dL/dW`` are the full fp32 weight and the full reduced gradient at the accumulation boundary.
"""

from __future__ import annotations

import torch

from lightning_compress.core.criteria.base import Criterion, ScoreState, register_criterion

MOMENTUM = 0.9


@register_criterion("snip")
class Snip(Criterion):
    """Score = ``|W * dL/dW|`` of the last optimizer step."""

    needs_grad = True

    def signal(self, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return torch.mul(weight, grad).abs_()


@register_criterion("snip_momentum")
class SnipMomentum(Snip):
    """Score ``S <- momentum * S + |W * dL/dW|`` per optimizer step (``momentum`` = 0.9)."""

    def __init__(self, momentum: float = MOMENTUM) -> None:
        self.momentum = float(momentum)

    def __repr__(self) -> str:
        return f"SnipMomentum(momentum={self.momentum})"

    def accumulate(self, state: ScoreState, signal: torch.Tensor) -> None:
        if state.score is None:
            state.score = signal
        else:
            # S <- 0.9 * S + |W * g| in one pass
            torch.add(signal, state.score, alpha=self.momentum, out=state.score)
        state.steps += 1


__all__ = ["MOMENTUM", "Snip", "SnipMomentum"]
