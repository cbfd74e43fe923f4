"""``"N:M"`` (``"2:4"``): of every M consecutive weights along the input dimension, N are *kept* (the
hardware convention of ``torch.sparse.to_sparse_semi_structured``).  Sparsity of a fully pruned layer
is ``(M - N) / M``.  Progressive schedules prune whole groups to N:M in order of the score they lose
(sum of the ``M - N`` smallest scores), so an intermediate sparsity ``s`` means a fraction
``s * M / (M - N)`` of groups are already N:M.  A unit is the M-N weakest weights of a group."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from lightning_compress.core.patterns.base import Pattern, register_pattern, shape_2d

_NM_RX = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@register_pattern
@dataclass(frozen=True)
class NMPattern(Pattern):
    """``"N:M"``: keep N of every M consecutive weights along the input dimension."""

    n: int
    m: int

    grammar = "'N:M' such as '2:4' (keep N of every M)"

    @classmethod
    def parse(cls, text: str) -> "NMPattern | None":
        match = _NM_RX.match(text)
        if not match:
            return None
        n, m = int(match.group(1)), int(match.group(2))
        if m < 1:
            raise ValueError("M must be >= 1 (e.g. '2:4').")
        if n < 1:
            raise ValueError(f"N={n} keeps no weight of each group of {m}; keep at least 1 (e.g. '1:{m}' or '2:4').")
        if n > m:
            raise ValueError(
                f"N={n} > M={m}. 'N:M' keeps N of every M weights, so N must be <= M (did you mean '{m}:{n}'?)."
            )
        if n == m:
            raise ValueError("keeps every weight (N == M); use N < M, e.g. '2:4'.")
        return cls(n, m)

    @property
    def name(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def max_sparsity(self) -> float:
        return (self.m - self.n) / self.m

    def check(self, shape: tuple[int, ...], where: str) -> None:
        _, inp = shape_2d(shape)
        if inp % self.m:
            raise ValueError(
                f"`pattern`={self.name!r} does not fit {where} with weight shape {tuple(shape)}: "
                f"M={self.m} must divide the input dimension {inp}. Choose another M, or leave this "
                f"module out with `exclude`."
            )

    def unit_elems(self, shape: tuple[int, ...] | None = None) -> int:
        return self.m - self.n

    def unit_costs(self, score2d: torch.Tensor) -> torch.Tensor:
        """Per group: the sum of its ``M - N`` smallest scores (what pruning the group loses)."""
        groups = score2d.reshape(-1, self.m)
        return groups.topk(self.m - self.n, dim=1, largest=False).values.sum(dim=1)

    def mask_from_pruned(
        self, pruned_units: torch.Tensor, shape: tuple[int, ...], score2d: torch.Tensor | None = None
    ) -> torch.Tensor:
        if score2d is None:
            raise ValueError("NMPattern.mask_from_pruned: `score2d` is required (it picks the N kept weights of each group).")
        groups = score2d.reshape(-1, self.m)
        drop = groups.topk(self.m - self.n, dim=1, largest=False).indices
        keep = torch.ones_like(groups, dtype=torch.bool)
        keep.scatter_(1, drop, False)
        keep[~pruned_units] = True
        return keep.reshape(shape)


__all__ = ["NMPattern"]
