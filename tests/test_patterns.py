"""Property tests of scores -> masks (hypothesis)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_compress.core.patterns import (
    BlockPattern,
    LayerScores,
    NMPattern,
    as_2d,
    parse_pattern,
    select_pruned_units,
)

SETTINGS = settings(max_examples=40, deadline=None)


def masks_for(pattern, scores, sparsity, scope="local", cap=1.0):
    layers = [
        LayerScores(pattern.unit_costs(as_2d(s)), pattern.unit_elems(), s.numel(), min(cap, pattern.max_sparsity))
        for s in scores
    ]
    pruned = select_pruned_units(layers, sparsity, scope)
    return [pattern.mask_from_pruned(p, tuple(s.shape), as_2d(s)) for p, s in zip(pruned, scores)]


@st.composite
def block_case(draw):
    n = draw(st.sampled_from([1, 2, 4]))
    m = draw(st.sampled_from([1, 2, 4]))
    rows = n * draw(st.integers(1, 6))
    cols = m * draw(st.integers(1, 6))
    seed = draw(st.integers(0, 10_000))
    sparsity = draw(st.floats(0.0, 0.95))
    return n, m, rows, cols, seed, sparsity


@SETTINGS
@given(block_case())
def test_block_masks_exact_sparsity_and_whole_blocks(case):
    n, m, rows, cols, seed, sparsity = case
    scores = [torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed))]
    (mask,) = masks_for(BlockPattern(n, m), scores, sparsity)
    zeros = int((~mask).sum())
    # exact within one block's worth
    assert abs(zeros - sparsity * mask.numel()) <= n * m / 2 + 1e-6
    blocks = mask.reshape(rows // n, n, cols // m, m).permute(0, 2, 1, 3).reshape(-1, n * m)
    assert bool(((blocks.all(dim=1)) | (~blocks).all(dim=1)).all()), "a block is partly kept"


@SETTINGS
@given(st.sampled_from([(1, 4), (2, 4), (1, 2), (2, 8), (4, 8)]), st.integers(1, 6), st.integers(1, 4), st.integers(0, 999))
def test_nm_masks_keep_exactly_n_of_every_m(nm, rows, groups_per_row, seed):
    n, m = nm
    scores = [torch.rand(rows, m * groups_per_row, generator=torch.Generator().manual_seed(seed))]
    pattern = NMPattern(n, m)
    (mask,) = masks_for(pattern, scores, pattern.max_sparsity)
    kept = mask.reshape(-1, m).sum(dim=1)
    assert bool((kept == n).all())
    # the kept ones are the highest-scoring of each group
    s = scores[0].reshape(-1, m)
    kept_min = torch.where(mask.reshape(-1, m), s, torch.inf).min(dim=1).values
    dropped_max = torch.where(~mask.reshape(-1, m), s, -torch.inf).max(dim=1).values
    assert bool((kept_min >= dropped_max).all())


@SETTINGS
@given(st.integers(1, 10), st.integers(0, 999), st.floats(0.05, 0.45))
def test_nm_progressive_prunes_whole_groups(groups, seed, sparsity):
    pattern = NMPattern(2, 4)
    scores = [torch.rand(4, 4 * groups, generator=torch.Generator().manual_seed(seed))]
    (mask,) = masks_for(pattern, scores, sparsity)
    kept = mask.reshape(-1, 4).sum(dim=1)
    assert bool(((kept == 2) | (kept == 4)).all())
    assert abs(int((~mask).sum()) - sparsity * mask.numel()) <= 1 + 1e-6


@SETTINGS
@given(st.integers(0, 999), st.floats(0.1, 0.9))
def test_global_ranking_uses_one_threshold(seed, sparsity):
    g = torch.Generator().manual_seed(seed)
    scores = [torch.rand(8, 8, generator=g) * 3, torch.rand(16, 4, generator=g)]
    masks = masks_for(BlockPattern(1, 1), scores, sparsity, scope="global")
    pruned = torch.cat([s[~mk] for s, mk in zip(scores, masks)])
    kept = torch.cat([s[mk] for s, mk in zip(scores, masks)])
    if pruned.numel() and kept.numel():
        assert pruned.max() <= kept.min()
    total = sum(s.numel() for s in scores)
    assert abs(sum(int((~mk).sum()) for mk in masks) - sparsity * total) <= 0.5 + 1e-6


@SETTINGS
@given(st.integers(0, 999), st.floats(0.1, 0.9))
def test_local_ranking_gives_each_layer_the_sparsity(seed, sparsity):
    g = torch.Generator().manual_seed(seed)
    scores = [torch.rand(8, 8, generator=g) * 3, torch.rand(16, 4, generator=g)]
    for s, mk in zip(scores, masks_for(BlockPattern(1, 1), scores, sparsity, scope="local")):
        assert abs(int((~mk).sum()) - sparsity * s.numel()) <= 0.5 + 1e-6


@SETTINGS
@given(st.integers(0, 999), st.floats(0.5, 0.95), st.floats(0.3, 0.9))
def test_per_layer_cap_is_respected(seed, sparsity, cap):
    g = torch.Generator().manual_seed(seed)
    # layer 0 has tiny scores: uncapped global ranking would empty it
    scores = [torch.rand(8, 8, generator=g) * 1e-3, torch.rand(8, 8, generator=g)]
    masks = masks_for(BlockPattern(1, 1), scores, sparsity, scope="global", cap=cap)
    for mk in masks:
        assert (~mk).sum().item() <= math.floor(cap * mk.numel() + 1e-9)


def test_conv_weight_seen_as_out_by_in_kh_kw():
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert as_2d(w).shape == (2, 12)
    pattern = NMPattern(2, 4)
    (mask,) = masks_for(pattern, [w], 0.5)
    # groups run over (in, kh, kw) flattened: each 4 consecutive kernel entries keep their 2 largest
    assert mask.reshape(2, 12).reshape(-1, 4).tolist() == [[False, False, True, True]] * 6


@pytest.mark.parametrize(
    "text,expected",
    [("4x1", BlockPattern(4, 1)), ("1x1", BlockPattern(1, 1)), ("unstructured", BlockPattern(1, 1)), ("2:4", NMPattern(2, 4))],
)
def test_parse_pattern(text, expected):
    assert parse_pattern(text) == expected


@pytest.mark.parametrize(
    "text,match",
    [("4:2", r"N=4 > M=2.*'2:4'"), ("4:4", "keeps every weight"), ("banana", "not understood"), ("0x4", ">= 1")],
)
def test_parse_pattern_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_pattern(text)


def test_pattern_that_does_not_fit_names_module_and_fix():
    with pytest.raises(ValueError, match=r"'4x1' does not fit layer 'fc'.*4 must divide 10.*exclude"):
        BlockPattern(4, 1).check((10, 8), "layer 'fc'")
    with pytest.raises(ValueError, match=r"M=4 must divide the input dimension 27"):
        NMPattern(2, 4).check((8, 3, 3, 3), "conv1")
