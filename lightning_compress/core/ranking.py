"""Which units to prune: one ranking per layer (``"local"``) or one over all layers of a group
(``"global"``, one threshold, each layer capped at its ``max_sparsity``).  Works on flat unit costs
from any :class:`~lightning_compress.core.patterns.Pattern` or unit group (lower cost = pruned first).

The ``k`` lowest units are found in O(n) from the exact ``k``-th smallest cost
(:func:`lightning_compress.core.kth.kth_smallest`) and the units strictly below it, ties at it
taken in index order (first wins).  A prune event costs a few passes over the unit costs and a
handful of host syncs (counts), none per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lightning_compress.core.kth import kth_smallest

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


@dataclass
class RankBuffers:
    """A group's reusable prune-event buffers: its layers' unit costs end to end (``costs``, fp32)
    and the pruned-unit result (``pruned``, bool), ``sizes[i]`` units for layer ``i``.  Made from one
    event's :class:`LayerScores` (:meth:`like`), used by the next ones (``select_pruned_units(...,
    flat_costs=b.costs, pruned_out=b.pruned)`` with the layers' costs written into :meth:`cost_slots`)."""

    costs: torch.Tensor
    pruned: torch.Tensor
    sizes: list[int]

    @classmethod
    def like(cls, layers: list[LayerScores]) -> "RankBuffers":
        sizes = [layer.costs.numel() for layer in layers]
        device = layers[0].costs.device
        n = sum(sizes)
        return cls(torch.empty(n, dtype=torch.float32, device=device), torch.empty(n, dtype=torch.bool, device=device), sizes)

    def cost_slots(self) -> list[torch.Tensor]:
        return list(torch.split(self.costs, self.sizes))


def _cap_units(layer: LayerScores) -> int:
    return min(int(math.floor(layer.max_sparsity * layer.total_elems / layer.unit_elems + 1e-9)), layer.costs.numel())


def _lowest_k(costs: torch.Tensor, k: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask of the ``k`` lowest entries of a flat fp32 tensor, ties broken by index (first wins),
    in O(n) (no sort).  ``out``: a bool tensor of ``costs``' shape to write into (else a new one)."""
    n = costs.numel()
    if out is None:
        out = torch.empty(n, dtype=torch.bool, device=costs.device)
    if k <= 0 or k >= n:
        return out.fill_(k > 0)
    thr, below, equal = kth_smallest(costs, k)
    if below + equal == k:  # every tie at the threshold is taken
        return torch.le(costs, thr, out=out)
    torch.lt(costs, thr, out=out)
    ties = torch.nonzero(costs == thr).view(-1)[: k - below]
    out[ties] = True
    return out


def _counts(parts: list[torch.Tensor]) -> list[int]:
    """True entries of each bool part, with one host sync."""
    if not parts:
        return []
    return [int(c) for c in torch.stack([torch.count_nonzero(p) for p in parts]).tolist()]


def _laid_out(parts: list[torch.Tensor], flat: torch.Tensor) -> bool:
    """``parts`` are ``flat``'s consecutive slices, in order, covering it."""
    if flat.dtype != torch.float32 or not flat.is_contiguous() or any(p.device != flat.device for p in parts):
        return False
    offset = 0
    for p in parts:
        if p.data_ptr() != flat.data_ptr() + 4 * offset:
            return False
        offset += p.numel()
    return offset == flat.numel()


def _global_one_unit_size(
    layers: list[LayerScores], k: int, device: torch.device, flat_costs: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Global ranking when every unit zeroes the same number of weights: the ``k`` lowest units over
    all layers, each layer capped.  Water-filling: one O(n) threshold; layers that would go over
    their cap keep exactly their ``cap`` lowest units and leave the pool; repeat on the rest (the
    threshold only rises, so a capped layer stays capped).  Same result as a full sort with caps.
    ``flat_costs``: the layers' costs already laid end to end (used instead of concatenating them);
    ``out``: a flat bool buffer of that length for the first round's result."""
    costs = [layer.costs.float().reshape(-1).to(device) for layer in layers]
    if flat_costs is not None and not _laid_out(costs, flat_costs):
        flat_costs = out = None
    caps = [_cap_units(layer) for layer in layers]
    result: list[torch.Tensor | None] = [None] * len(layers)
    free = list(range(len(layers)))
    k = min(k, sum(caps))
    while free:
        sizes = [costs[i].numel() for i in free]
        if flat_costs is not None and len(free) == len(layers):
            joined, buf = flat_costs, out
        else:
            joined, buf = torch.cat([costs[i] for i in free]), None
        parts = torch.split(_lowest_k(joined, k, buf), sizes)
        over = [i for i, p, c in zip(free, parts, _counts(list(parts))) if c > caps[i]]
        if not over:
            for i, p in zip(free, parts):
                result[i] = p
            break
        for i in over:
            result[i] = _lowest_k(costs[i], caps[i])
            k -= caps[i]
        free = [i for i in free if i not in over]
    return [r if r is not None else torch.zeros(c.numel(), dtype=torch.bool, device=device) for r, c in zip(result, costs)]


def select_pruned_units(
    layers: list[LayerScores], sparsity: float, scope: str, rounding: str = "nearest", *,
    flat_costs: torch.Tensor | None = None, pruned_out: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Which units to prune so that the pruned fraction of all weights is ``sparsity``.

    ``scope="local"``: each layer reaches ``sparsity`` by its own ranking; its count of pruned units
    ``sparsity * units`` is rounded to the nearest integer (``rounding="nearest"``) or down
    (``"floor"``: ``ceil((1 - sparsity) * units)`` stay, as DeepSpeed's TopKBinarizer keeps).
    ``scope="global"``: one ranking over all layers (one threshold), each layer capped at its
    ``max_sparsity``; the total is exact to within one unit.

    ``flat_costs`` / ``pruned_out`` (optional, a caller's reusable buffers): the layers' fp32 costs
    laid end to end in one flat tensor (each layer's ``costs`` is its slice, in order) and a flat bool
    tensor of the same length; the ranking then reads ``flat_costs`` instead of concatenating and
    writes the result into ``pruned_out`` (the returned tensors are then views of it).

    Returns one flat bool tensor per layer (True = pruned).
    """
    out: list[torch.Tensor] = []
    if scope == "local":
        sizes = [lay.costs.numel() for lay in layers]
        slots = list(torch.split(pruned_out, sizes)) if pruned_out is not None and sum(sizes) == pruned_out.numel() else [None] * len(layers)
        for layer, slot in zip(layers, slots):
            exact = sparsity * layer.total_elems / layer.unit_elems
            k = int(math.floor(exact + 1e-9)) if rounding == "floor" else int(round(exact))
            k = max(0, min(k, _cap_units(layer)))
            out.append(_lowest_k(layer.costs.float().reshape(-1), k, slot))
        return out
    if scope != "global":
        raise ValueError(f"`scope`={scope!r} must be 'global' or 'local'.")
    if not layers:
        return out
    device = layers[0].costs.device
    total = sum(layer.total_elems for layer in layers)
    target = sparsity * total
    if len({layer.unit_elems for layer in layers}) == 1:
        return _global_one_unit_size(layers, int(round(target / layers[0].unit_elems)), device, flat_costs, pruned_out)
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

__all__ = ["LayerScores", "RankBuffers", "select_pruned_units"]
