"""Scores -> masks: unstructured, NxM blocks and N:M groups; local or global ranking.

Weights are seen as 2-D ``[out, in]``: a Linear weight as it is, a Conv weight ``[out, in, kh, kw]``
as ``[out, in*kh*kw]`` (row = one output channel; columns in ``in, kh, kw`` order, so an ``"N:M"`` group
or a block's M columns run along kernel positions first, then input channels).

* ``"NxM"`` (``"4x1"``): a block is N consecutive output rows x M consecutive input columns; a block
  is kept or zeroed whole.  ``"1x1"`` / ``"unstructured"``: single weights.  N must divide ``out``
  and M must divide ``in`` (no padding: a block that does not fit is an error at setup).
* ``"N:M"`` (``"2:4"``): of every M consecutive weights along the input dimension, N are *kept*
  (the hardware convention of ``torch.sparse.to_sparse_semi_structured``).  Sparsity of a fully
  pruned layer is ``(M - N) / M``.  Progressive schedules prune whole groups to N:M in order of the
  score they lose (sum of the ``M - N`` smallest scores), so an intermediate sparsity ``s`` means a
  fraction ``s * M / (M - N)`` of groups are already N:M.

A *unit* is what is pruned at once (a block, or the M-N weakest weights of a group).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch


def as_2d(tensor: torch.Tensor) -> torch.Tensor:
    """View a weight as ``[out, in*prod(kernel)]`` (Linear: unchanged)."""
    if tensor.dim() == 1:
        return tensor.view(-1, 1)
    return tensor.reshape(tensor.shape[0], -1)


def shape_2d(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    shape = tuple(shape)
    if len(shape) == 1:
        return shape[0], 1
    return shape[0], int(math.prod(shape[1:]))


@dataclass(frozen=True)
class BlockPattern:
    """``"NxM"``: N output rows x M input columns."""

    n: int
    m: int

    @property
    def name(self) -> str:
        return "unstructured" if (self.n, self.m) == (1, 1) else f"{self.n}x{self.m}"

    @property
    def max_sparsity(self) -> float:
        return 1.0

    def check(self, shape: tuple[int, ...], where: str) -> None:
        out, inp = shape_2d(shape)
        if out % self.n or inp % self.m:
            raise ValueError(
                f"`pattern`={self.name!r} does not fit {where} with weight shape {tuple(shape)} "
                f"(seen as [out={out}, in={inp}]): {self.n} must divide {out} and {self.m} must divide {inp}. "
                f"Choose a pattern whose block divides it, or leave this module out with `exclude`."
            )

    def unit_elems(self) -> int:
        return self.n * self.m

    def unit_costs(self, score2d: torch.Tensor) -> torch.Tensor:
        """Mean score of each block, flattened row-major over ``[out/N, in/M]``."""
        out, inp = score2d.shape
        if (self.n, self.m) == (1, 1):
            return score2d.reshape(-1)
        return score2d.reshape(out // self.n, self.n, inp // self.m, self.m).mean(dim=(1, 3)).reshape(-1)

    def num_units(self, shape: tuple[int, ...]) -> int:
        out, inp = shape_2d(shape)
        return (out // self.n) * (inp // self.m)

    def mask_from_pruned(
        self, pruned_units: torch.Tensor, shape: tuple[int, ...], score2d: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Bool keep-mask of ``shape`` from a flat bool ``pruned_units`` vector."""
        out, inp = shape_2d(shape)
        keep = ~pruned_units.reshape(out // self.n, inp // self.m)
        if (self.n, self.m) != (1, 1):
            keep = keep.repeat_interleave(self.n, 0).repeat_interleave(self.m, 1)
        return keep.reshape(shape)


@dataclass(frozen=True)
class NMPattern:
    """``"N:M"``: keep N of every M consecutive weights along the input dimension."""

    n: int
    m: int

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

    def unit_elems(self) -> int:
        return self.m - self.n

    def num_units(self, shape: tuple[int, ...]) -> int:
        out, inp = shape_2d(shape)
        return out * inp // self.m

    def unit_costs(self, score2d: torch.Tensor) -> torch.Tensor:
        """Per group: the sum of its ``M - N`` smallest scores (what pruning the group loses)."""
        groups = score2d.reshape(-1, self.m)
        return groups.topk(self.m - self.n, dim=1, largest=False).values.sum(dim=1)

    def mask_from_pruned(
        self, pruned_units: torch.Tensor, shape: tuple[int, ...], score2d: torch.Tensor | None = None
    ) -> torch.Tensor:
        assert score2d is not None, "N:M masks need the scores to pick the N kept weights"
        groups = score2d.reshape(-1, self.m)
        drop = groups.topk(self.m - self.n, dim=1, largest=False).indices
        keep = torch.ones_like(groups, dtype=torch.bool)
        keep.scatter_(1, drop, False)
        keep[~pruned_units] = True
        return keep.reshape(shape)


Pattern = BlockPattern | NMPattern

_BLOCK_RX = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
_NM_RX = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern: str) -> Pattern:
    """Parse ``"unstructured"``, ``"NxM"`` or ``"N:M"``.

    Raises:
        ValueError: unknown form, zero sizes, or ``N >= M`` for ``N:M``.
    """
    if not isinstance(pattern, str):
        raise ValueError(f"`pattern` must be a string like '4x1', '2:4' or 'unstructured', got {pattern!r}.")
    p = pattern.strip().lower()
    if p in ("unstructured", "1x1", "element", "elementwise"):
        return BlockPattern(1, 1)
    m = _BLOCK_RX.match(p)
    if m:
        n, mm = int(m.group(1)), int(m.group(2))
        if n < 1 or mm < 1:
            raise ValueError(f"`pattern`={pattern!r}: block sizes must be >= 1 (e.g. '4x1').")
        return BlockPattern(n, mm)
    m = _NM_RX.match(p)
    if m:
        n, mm = int(m.group(1)), int(m.group(2))
        if mm < 1 or n < 0:
            raise ValueError(f"`pattern`={pattern!r}: M must be >= 1 (e.g. '2:4').")
        if n > mm:
            raise ValueError(
                f"`pattern`={pattern!r}: N={n} > M={mm}. 'N:M' keeps N of every M weights, so N must be <= M "
                f"(did you mean '{mm}:{n}'?)."
            )
        if n == mm:
            raise ValueError(f"`pattern`={pattern!r} keeps every weight (N == M); use N < M, e.g. '2:4'.")
        return NMPattern(n, mm)
    raise ValueError(
        f"`pattern`={pattern!r} is not understood. Use 'unstructured' (or '1x1'), a block 'NxM' such as "
        f"'4x1' (N output rows x M input columns), or 'N:M' such as '2:4' (keep N of every M)."
    )


@dataclass
class LayerScores:
    """One layer's contribution to a ranking.

    Args:
        costs: flat unit costs (lower = pruned first).
        unit_elems: weights zeroed per unit.
        total_elems: weights in the layer.
        max_sparsity: cap on the layer's sparsity (fraction of its weights).
    """

    costs: torch.Tensor
    unit_elems: int
    total_elems: int
    max_sparsity: float


def _cap_units(layer: LayerScores) -> int:
    return min(int(math.floor(layer.max_sparsity * layer.total_elems / layer.unit_elems + 1e-9)), layer.costs.numel())


def _lowest_k(costs: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` lowest entries of a flat tensor, ties broken by index (first wins),
    in O(n) with ``kthvalue`` instead of a sort."""
    n = costs.numel()
    out = torch.zeros(n, dtype=torch.bool, device=costs.device)
    if k <= 0:
        return out
    if k >= n:
        out[:] = True
        return out
    thr = torch.kthvalue(costs, k).values
    out = costs < thr
    missing = k - int(out.sum())
    if missing > 0:
        ties = torch.nonzero(costs == thr).view(-1)[:missing]
        out[ties] = True
    return out


def _global_one_unit_size(layers: list[LayerScores], k: int, device: torch.device) -> list[torch.Tensor]:
    """Global ranking when every unit zeroes the same number of weights: the ``k`` lowest units over
    all layers, each layer capped.  Water-filling: one O(n) threshold; layers that would go over
    their cap keep exactly their ``cap`` lowest units and leave the pool; repeat on the rest (the
    threshold only rises, so a capped layer stays capped).  Same result as a full sort with caps."""
    costs = [layer.costs.float().reshape(-1).to(device) for layer in layers]
    caps = [_cap_units(layer) for layer in layers]
    result: list[torch.Tensor | None] = [None] * len(layers)
    free = list(range(len(layers)))
    k = min(k, sum(caps))
    while free:
        flat = _lowest_k(torch.cat([costs[i] for i in free]), k) if k > 0 else torch.zeros(
            sum(costs[i].numel() for i in free), dtype=torch.bool, device=device
        )
        parts = torch.split(flat, [costs[i].numel() for i in free])
        over = [i for i, p in zip(free, parts) if int(p.sum()) > caps[i]]
        if not over:
            for i, p in zip(free, parts):
                result[i] = p.clone()
            break
        for i in over:
            result[i] = _lowest_k(costs[i], caps[i])
            k -= caps[i]
        free = [i for i in free if i not in over]
    return [r if r is not None else torch.zeros(c.numel(), dtype=torch.bool, device=device) for r, c in zip(result, costs)]


def select_pruned_units(layers: list[LayerScores], sparsity: float, scope: str) -> list[torch.Tensor]:
    """Which units to prune so that the pruned fraction of all weights is ``sparsity``.

    ``scope="local"``: each layer reaches ``sparsity`` by its own ranking.
    ``scope="global"``: one ranking over all layers (one threshold), each layer capped at its
    ``max_sparsity``; the total is exact to within one unit.

    Returns one flat bool tensor per layer (True = pruned).
    """
    out: list[torch.Tensor] = []
    if scope == "local":
        for layer in layers:
            k = int(round(sparsity * layer.total_elems / layer.unit_elems))
            k = max(0, min(k, _cap_units(layer)))
            out.append(_lowest_k(layer.costs.float().reshape(-1), k))
        return out
    if scope != "global":
        raise ValueError(f"`scope`={scope!r} must be 'global' or 'local'.")
    if not layers:
        return out
    device = layers[0].costs.device
    total = sum(layer.total_elems for layer in layers)
    target = sparsity * total
    if len({layer.unit_elems for layer in layers}) == 1:
        return _global_one_unit_size(layers, int(round(target / layers[0].unit_elems)), device)
    # units of different sizes (structured groups of different widths): a full sort; per layer only
    # its `cap` cheapest units are candidates, ranked globally, taken until closest to the target
    cand_costs, cand_layer, cand_index = [], [], []
    for i, layer in enumerate(layers):
        costs = layer.costs.float().reshape(-1).to(device)
        cap = _cap_units(layer)
        idx = torch.argsort(costs, stable=True)[:cap]
        cand_costs.append(costs[idx])
        cand_index.append(idx)
        cand_layer.append(torch.full((idx.numel(),), i, dtype=torch.long, device=device))
    all_costs = torch.cat(cand_costs)
    all_layer = torch.cat(cand_layer)
    all_index = torch.cat(cand_index)
    order = torch.argsort(all_costs, stable=True)
    elems = torch.tensor([layer.unit_elems for layer in layers], dtype=torch.float64, device=device)
    cum = elems[all_layer[order]].cumsum(0)
    # number of units whose cumulative weight count is closest to the target
    n_take = int(torch.searchsorted(cum, torch.tensor([target], dtype=cum.dtype, device=device)).item())
    if n_take < cum.numel():
        below = cum[n_take - 1].item() if n_take > 0 else 0.0
        if abs(cum[n_take].item() - target) < abs(below - target):
            n_take += 1
    chosen = order[:n_take]
    for i, layer in enumerate(layers):
        pruned = torch.zeros(layer.costs.numel(), dtype=torch.bool, device=device)
        sel = all_layer[chosen] == i
        pruned[all_index[chosen][sel]] = True
        out.append(pruned)
    return out
