"""A prune event's masks are the ones the ranking before the fast event path gave (same units, same
ties), over several events, for every built-in pattern, both scopes, caps that bind, and criteria
with ties (``l1``: pruned weights score 0) and negative scores (``topk``).

The reference below is a frozen copy of that ranking (``torch.kthvalue`` and a concatenation per
round, masks built by ``Pattern.mask_from_pruned``, sparsity from ``(~mask).sum()``); it must not be
edited to follow the library."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_compress.core import kth
from lightning_compress.core.kth import kth_smallest
from lightning_compress.core.patterns import BlockPattern, NMPattern, as_2d
from lightning_compress.core.pruner import Pruner


# ---------------------------------------------------------------- frozen reference ranking
def ref_cap_units(costs: torch.Tensor, unit_elems: int, total: int, max_sparsity: float) -> int:
    return min(int(math.floor(max_sparsity * total / unit_elems + 1e-9)), costs.numel())


def ref_lowest_k(costs: torch.Tensor, k: int) -> torch.Tensor:
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


def ref_global(layers: list[tuple[torch.Tensor, int, int, float]], k: int) -> list[torch.Tensor]:
    costs = [c.float().reshape(-1) for c, _, _, _ in layers]
    caps = [ref_cap_units(c, u, t, m) for (c, u, t, m) in layers]
    result: list[torch.Tensor | None] = [None] * len(layers)
    free = list(range(len(layers)))
    k = min(k, sum(caps))
    while free:
        flat = ref_lowest_k(torch.cat([costs[i] for i in free]), k) if k > 0 else torch.zeros(
            sum(costs[i].numel() for i in free), dtype=torch.bool
        )
        parts = torch.split(flat, [costs[i].numel() for i in free])
        over = [i for i, p in zip(free, parts) if int(p.sum()) > caps[i]]
        if not over:
            for i, p in zip(free, parts):
                result[i] = p.clone()
            break
        for i in over:
            result[i] = ref_lowest_k(costs[i], caps[i])
            k -= caps[i]
        free = [i for i in free if i not in over]
    return [r if r is not None else torch.zeros(c.numel(), dtype=torch.bool) for r, c in zip(result, costs)]


def ref_select(layers: list[tuple[torch.Tensor, int, int, float]], sparsity: float, scope: str) -> list[torch.Tensor]:
    if scope == "local":
        out = []
        for c, u, t, m in layers:
            k = max(0, min(int(round(sparsity * t / u)), ref_cap_units(c, u, t, m)))
            out.append(ref_lowest_k(c.float().reshape(-1), k))
        return out
    total = sum(t for _, _, t, _ in layers)
    return ref_global(layers, int(round(sparsity * total / layers[0][1])))


def ref_event_masks(pruner: Pruner, sparsity: float) -> dict[str, torch.Tensor]:
    """The masks the old event path computes from the pruner's current scores and masks."""
    layers, auxes = [], []
    for t in pruner.targets:
        weight = t.param.detach().float()
        score = t.criterion.score(t.score, lambda: weight * t.mask.to(weight.dtype))
        s2d = as_2d(score.t() if t.transposed else score)
        layers.append((t.pattern.unit_costs(s2d), t.pattern.unit_elems(t.pattern_shape), s2d.numel(), t.max_sparsity))
        auxes.append(s2d)
    pruned = ref_select(layers, sparsity, pruner.scope)
    masks = {}
    for t, pu, aux in zip(pruner.targets, pruned, auxes):
        mask = t.pattern.mask_from_pruned(pu, t.pattern_shape, aux)
        masks[t.name] = (mask.t().contiguous() if t.transposed else mask).clone()
    return masks


# ---------------------------------------------------------------- models and a training-like loop
class Mixed(nn.Module):
    """Linear, Hugging Face Conv1D (weight [in, out]) and Conv2d layers, a classifier left out."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.conv = nn.Conv2d(4, 8, 2)  # [8, 4, 2, 2] -> [8, 16]
        self.fc1 = nn.Linear(32, 64)
        self.c1d = Conv1D(48, 64)  # weight [64, 48]: as a Linear [48, 64]
        self.fc2 = nn.Linear(48, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = x[:, :16].reshape(-1, 4, 2, 2)
        h = torch.cat([self.conv(img).flatten(1), x[:, 16:]], dim=1)  # 8 + 24 = 32
        h = torch.relu(self.c1d(torch.relu(self.fc1(h))))
        return self.head(torch.relu(self.fc2(h)))


def run_events(method: str, pattern: str, scope: str, cap: float, sparsity: float, events: int = 6, seed: int = 0) -> int:
    """Train ``events`` optimizer steps with a prune event after each, comparing every event's masks
    with the reference; returns how many events changed masks."""
    torch.manual_seed(seed)
    model = Mixed()
    pruner = Pruner(model, sparsity=sparsity, method=method, pattern=pattern, start_step=0, end_step=events,
                    frequency=1, scope=scope, max_sparsity_per_layer=cap)
    pruner.resolve_end_step()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 40), torch.randint(0, 4, (16,))
    changed = 0
    for step in range(events + 1):
        group = pruner.groups[0]
        due = group.schedule.events_due(step)
        ready = due > group.events_done and all(pruner.criterion.ready(t.score) for t in group.targets)
        want = ref_event_masks(pruner, group.schedule.target(due)) if ready else None
        if pruner.step(step):
            changed += 1
            got = pruner.masks()
            for name, mask in want.items():
                assert torch.equal(got[name], mask), f"event at step {step}: {name} differs from the reference ranking"
            zeros = sum(int((~m).sum()) for m in want.values())
            assert pruner.sparsity() == zeros / sum(m.numel() for m in want.values())
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        pruner.update_scores(step=step)
        opt.step()
        opt.zero_grad()
    return changed


@pytest.fixture(params=["radix", "kthvalue"])
def kth_path(request, monkeypatch):
    """Run each case through the radix select (every size) and through ``torch.kthvalue`` (small sizes)."""
    monkeypatch.setattr(kth, "RADIX_MIN", 1 if request.param == "radix" else 1 << 30)
    return request.param


@pytest.mark.parametrize(
    "method,pattern,scope,cap,sparsity",
    [
        ("snip_momentum", "4x1", "global", 0.98, 0.9),
        ("snip_momentum", "4x1", "global", 0.6, 0.7),  # caps bind: water-filling rounds
        ("snip_momentum", "unstructured", "local", 0.98, 0.8),
        ("snip_momentum", "2:4", "global", 0.98, 0.5),
        ("l1", "4x1", "global", 0.98, 0.8),  # pruned weights score 0: ties at the threshold
        ("l1", "1x2", "local", 0.98, 0.75),
        ("topk", "unstructured", "global", 0.98, 0.6),  # negative scores
    ],
)
def test_event_masks_equal_reference_ranking(kth_path, method, pattern, scope, cap, sparsity):
    assert run_events(method, pattern, scope, cap, sparsity) >= 5


def test_ties_at_the_threshold_are_taken_in_index_order(kth_path):
    costs = torch.tensor([3.0, 1.0, 2.0, 1.0, 1.0, 0.0, 1.0, 5.0] * 3)
    for k in range(1, costs.numel()):
        from lightning_compress.core.ranking import _lowest_k

        assert torch.equal(_lowest_k(costs, k), ref_lowest_k(costs, k)), k


def test_unit_costs_into_and_mask_into_are_bitwise_the_plain_methods():
    g = torch.Generator().manual_seed(1)
    for pattern, shape in [(BlockPattern(4, 1), (16, 12)), (BlockPattern(2, 3), (8, 9)), (BlockPattern(1, 1), (5, 7)), (NMPattern(2, 4), (6, 8))]:
        score = torch.rand(shape, generator=g) ** 3
        want = pattern.unit_costs(score)
        got = pattern.unit_costs_into(score, torch.empty(want.numel()))
        assert torch.equal(got.view(torch.int32), want.contiguous().view(torch.int32))
        pruned = torch.rand(want.numel(), generator=g) < 0.5
        mask = pattern.mask_from_pruned(pruned, shape, score)
        assert torch.equal(pattern.mask_into(pruned, shape, score, torch.empty(shape, dtype=torch.bool)), mask)
        out_t = torch.empty(shape[::-1], dtype=torch.bool).t()  # a transposed (Conv1D) mask view
        assert torch.equal(pattern.mask_into(pruned, shape, score, out_t), mask)


def test_prune_buffers_live_until_the_last_event():
    torch.manual_seed(0)
    model = Mixed()
    pruner = Pruner(model, sparsity=0.5, method="l1", pattern="4x1", start_step=0, end_step=2, frequency=1)
    pruner.resolve_end_step()
    pruner.step(0)
    assert pruner.groups[0].buffers is not None
    pruner.step(2)
    assert pruner.groups[0].buffers is None
    pruner.remove()


_SPECIAL = st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-40, -1e-40, 3.4e38, -3.4e38, float("inf"), float("-inf"), float("nan")])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(_SPECIAL, st.floats(-1e6, 1e6, width=32)), min_size=1, max_size=80), st.data())
def test_kth_smallest_equals_kthvalue(values, data):
    kth.RADIX_MIN, saved = 1, kth.RADIX_MIN
    try:
        x = torch.tensor(values, dtype=torch.float32)
        k = data.draw(st.integers(1, x.numel()))
        thr, below, equal = kth_smallest(x, k)
        want = torch.kthvalue(x, k).values
        assert (torch.isnan(thr) and torch.isnan(want)) or thr == want
        assert (below, equal) == (int((x < want).sum()), int((x == want).sum()))
    finally:
        kth.RADIX_MIN = saved


def test_flat_buffers_that_are_not_the_layers_own_are_ignored(kth_path):
    from lightning_compress.core.ranking import LayerScores, RankBuffers, select_pruned_units

    g = torch.Generator().manual_seed(3)
    costs = [torch.rand(40, generator=g), torch.rand(24, generator=g)]
    layers = [LayerScores(c, 4, 4 * c.numel(), 0.98) for c in costs]
    want = ref_select([(c, 4, 4 * c.numel(), 0.98) for c in costs], 0.6, "global")
    bufs = RankBuffers.like(layers)  # right size, but the layers' costs are not its slices
    got = select_pruned_units(layers, 0.6, "global", flat_costs=bufs.costs.fill_(0.0), pruned_out=bufs.pruned)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    slots = bufs.cost_slots()
    for c, s in zip(costs, slots):
        s.copy_(c)
    laid = [LayerScores(s, 4, 4 * s.numel(), 0.98) for s in slots]
    got = select_pruned_units(laid, 0.6, "global", flat_costs=bufs.costs, pruned_out=bufs.pruned)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
