"""``clean`` removes the pruned heads of ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer``
(issue 10: they used to be zeroed and kept): the slim module is a ``NarrowMultiheadAttention`` with
``num_heads * head_dim`` projection rows, and computes what the head-pruned model computed, for every
way ``nn.MultiheadAttention`` is called (batch_first or not, unbatched, bool / float / per-head masks,
key padding, causal hint, attention weights averaged or per head) and on the eval fast paths of
``nn.TransformerEncoder`` (with and without nested tensors)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_compress.callbacks import HeadPruning, RowPruning
from lightning_compress.core.narrow_mha import NarrowMultiheadAttention
from lightning_compress.export import clean


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _prune(model, *cbs):
    for cb in cbs:
        cb.attach(model)
        for g in cb.pruner.groups:
            cb.prune_group(g, g.sparsity)
    return model.eval()


@pytest.mark.parametrize("batch_first", [True, False])
def test_narrow_mha_matches_the_head_pruned_module_for_every_call(batch_first):
    torch.manual_seed(0)
    mha = _prune(nn.MultiheadAttention(32, 4, batch_first=batch_first), HeadPruning(sparsity=0.5))
    x = torch.randn(2, 5, 32) if batch_first else torch.randn(5, 2, 32)
    x1 = x[0] if batch_first else x[:, 0]
    pad = torch.tensor([[False] * 4 + [True], [False] * 5])
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    calls = [{}, {"need_weights": False}, {"attn_mask": torch.randn(8, 5, 5)}, {"attn_mask": causal.float() * -1e4},
             {"key_padding_mask": pad}, {"attn_mask": causal, "key_padding_mask": pad, "average_attn_weights": False},
             {"attn_mask": causal, "is_causal": True, "need_weights": False}]
    with torch.no_grad():
        ref = [mha(x, x, x, **c) for c in calls] + [mha(x1, x1, x1)]
        slim = clean(mha)
        got = [slim(x, x, x, **c) for c in calls] + [slim(x1, x1, x1)]
    assert type(slim) is NarrowMultiheadAttention and slim.num_heads == 2 and tuple(slim.in_proj_weight.shape) == (48, 32)
    for c, (r, g) in zip([*calls, "unbatched"], zip(ref, got)):
        assert g[0].shape == r[0].shape and _rel(g[0], r[0]) <= 1e-5, c
        assert (g[1] is None) == (r[1] is None), c
        if r[1] is not None:
            assert g[1].shape == r[1].shape and _rel(g[1], r[1]) <= 1e-5, c


@pytest.mark.parametrize("nested", [False, True])
def test_transformer_encoder_head_and_row_pruned_is_smaller_and_equal(nested):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    enc = _prune(nn.TransformerEncoder(layer, 2, enable_nested_tensor=nested),
                 HeadPruning(sparsity=0.5), RowPruning(sparsity=0.5))
    x = torch.randn(2, 5, 32)
    pad = torch.tensor([[False] * 3 + [True] * 2, [False] * 5])
    before = sum(p.numel() for p in enc.parameters())
    with torch.no_grad():
        ref, ref_pad = enc(x), enc(x, src_key_padding_mask=pad)
        slim = clean(enc)
        out, out_pad = slim(x), slim(x, src_key_padding_mask=pad)
    after = sum(p.numel() for p in slim.parameters())
    assert all(type(m.self_attn) is NarrowMultiheadAttention for m in slim.layers)
    assert after < 0.6 * before
    assert _rel(out, ref) <= 1e-5
    # the nested-tensor path returns zeros at padded positions, and so does the narrow module there
    assert _rel(out_pad, ref_pad) <= 1e-5
