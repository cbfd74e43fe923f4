"""What one-shot calibration keeps in memory: keep-masks stored one bit per weight (exact, unpacked once
training starts), statistics shared by the layers fed one input (q/k/v, gate/up), no weight quantizer's
evaluation copy left behind, and GPTQ's prepared column grid bit-identical to the library's own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_compress.core import masking
from lightning_compress.core.bit_packing import pack_bits
from lightning_compress.core.quant_grid import affine_params, fake_quant_rows
from lightning_compress.oneshot import GPTQ, SparseGPT, Wanda, oneshot
from lightning_compress.oneshot.gptq import _ColumnGrid
from lightning_compress.oneshot.linear_view import linears, weight_out_in
from lightning_compress.oneshot.methods import current_keep
from lightning_compress.oneshot.packed_mask import BITS_BUFFER, FULL_BUFFER, pack_keep, unpack_keep
from lightning_compress.oneshot.stats import collect_stats
from tests.oneshot_models import calib, tiny


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5), (64, 128), (13, 17)])
def test_pack_unpack_roundtrip(shape):
    g = torch.Generator().manual_seed(sum(shape))
    keep = torch.rand(shape, generator=g) > 0.5
    bits = pack_keep(keep)
    assert bits.dtype == torch.uint8 and bits.numel() == (keep.numel() + 7) // 8
    assert torch.equal(bits, pack_bits(keep.reshape(-1).to(torch.uint8), 1))  # the library's 1-bit layout
    assert torch.equal(unpack_keep(bits, shape), keep)


def _modules(model):
    return {f"{i}.{n}": m for i, b in enumerate(model.model.layers) for n, m in linears(b).items()}


def test_masks_stored_packed_and_exact():
    model = tiny("llama")
    data = calib()
    oneshot(model, [Wanda(0.5)], data, measure_error=False)
    mods = _modules(model)
    keeps = {}
    for name, m in mods.items():
        assert m._buffers.get(FULL_BUFFER) is None, name  # no bool mask while nobody trains
        bits = m._buffers[BITS_BUFFER]
        assert bits.dtype == torch.uint8 and bits.numel() == (m.weight.numel() + 7) // 8
        keep = current_keep(m)
        w = weight_out_in(m)
        assert torch.equal(keep, w != 0), name  # random weights: no kept weight is zero by chance
        keeps[name] = keep.clone()
    # a kept weight that becomes zero by chance stays kept, and a pruned weight stays pruned, through
    # evaluation and through fine-tuning (the mask is the stored one, never derived from the weights)
    victim = mods["0.self_attn.q_proj"]
    kept = keeps["0.self_attn.q_proj"]
    r, c = (kept.nonzero()[0]).tolist()
    with torch.no_grad():
        victim.weight[r, c] = 0.0
    assert torch.equal(current_keep(victim), kept)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for x in data[:2]:
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    assert float(victim.weight.detach()[r, c]) != 0.0  # trained again: it is a kept weight
    for name, m in mods.items():
        assert m._buffers[FULL_BUFFER].dtype == torch.bool  # unpacked once for training
        assert torch.equal(current_keep(m), keeps[name]), name
        assert int((weight_out_in(m)[~keeps[name]] != 0).sum()) == 0, name  # pruned stay zero


def test_qkv_and_gate_up_share_statistics():
    model = tiny("llama")
    block = model.model.layers[0]
    x = model.model.embed_tokens(calib(1)[0])
    pos = model.model.rotary_emb(x, torch.arange(x.shape[1])[None])
    targets = linears(block)

    def run():
        yield block(x, position_embeddings=pos)

    stats = collect_stats(block, targets, run, hessian=True)
    s = stats.linears
    assert s["self_attn.q_proj"] is s["self_attn.k_proj"] is s["self_attn.v_proj"]
    assert s["mlp.gate_proj"] is s["mlp.up_proj"]
    assert s["self_attn.o_proj"] is not s["self_attn.q_proj"] and s["mlp.down_proj"] is not s["mlp.gate_proj"]
    assert stats.nbytes() == sum(t.nbytes() for t in {id(v): v for v in s.values()}.values())
    u1 = s["self_attn.q_proj"].inverse_factor(0.01)
    assert s["self_attn.k_proj"].inverse_factor(0.01) is u1  # factorized once for the three


class _Forks(nn.Module):
    """Feeds ``a`` and ``b`` the same tensor on even calls, different tensors on odd ones."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.a(x) + self.b(x if self.calls % 2 else x * 2.0)


@pytest.mark.parametrize("first_same", [True, False])
def test_sharing_that_breaks_gives_separate_exact_statistics(first_same):
    torch.manual_seed(0)
    block = _Forks()
    xs = [torch.randn(4, 8) for _ in range(3)]
    block.calls = 0 if first_same else 1

    def run():
        for x in xs:
            yield block(x)

    s = collect_stats(block, {"a": block.a, "b": block.b}, run, hessian=True).linears
    assert s["a"] is not s["b"]
    # what each layer really saw, accumulated on its own
    block.calls = 0 if first_same else 1
    seen = {"a": [], "b": []}
    hs = [block.a.register_forward_pre_hook(lambda m, a: seen["a"].append(a[0])),
          block.b.register_forward_pre_hook(lambda m, a: seen["b"].append(a[0]))]
    for x in xs:
        block(x)
    for h in hs:
        h.remove()
    for n in "ab":
        xtx = sum(t.t() @ t for t in seen[n])
        assert s[n].n == 12
        assert torch.allclose(s[n].xtx, xtx, rtol=1e-6, atol=1e-6), n


def test_gptq_leaves_no_evaluation_copy():
    model = tiny("llama")
    oneshot(model, [GPTQ(4, 32)], calib(), measure_error=False)
    for name, m in _modules(model).items():
        q = masking.find_transform(m, "weight", "weight_quant").fn
        assert q._cache is None, name


@pytest.mark.parametrize("bits,symmetric", [(3, True), (4, False), (8, True), (8, False), (5, True)])
def test_column_grid_matches_fake_quant_rows(bits, symmetric):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(64, 16, generator=g)
    lo, hi = w.amin(1), w.amax(1)
    grid = _ColumnGrid(lo, hi, bits, symmetric)
    scale, zp = affine_params(lo, hi, bits, symmetric)
    cols = [w[:, 0], w[:, 1] * 3.0, (w[:, 2] / scale).round() * scale, (w[:, 3] / scale).floor() * scale + scale / 2]
    for col in cols:  # inside, clipped, on the grid, exact ties
        want = fake_quant_rows(col.unsqueeze(1).contiguous(), scale, zp, bits, symmetric).squeeze(1)
        assert torch.equal(grid(col), want)


def test_sparsegpt_masks_packed_on_gpt2_conv1d():
    model = tiny("gpt2")
    oneshot(model, [SparseGPT(0.5)], calib(), measure_error=False)
    for b in model.transformer.h:
        for n, m in linears(b).items():
            w = weight_out_in(m)
            assert int((w == 0).sum()) == w.numel() // 2, n
            assert torch.equal(current_keep(m), w != 0), n
            assert m._buffers[BITS_BUFFER].numel() == (w.numel() + 7) // 8
