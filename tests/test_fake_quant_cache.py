"""The training-path weight cache (``core/fake_quant_cache.py``): with gradient accumulation the weight
is fake-quantized once per optimizer step, and training gives the same bits as recomputing it at every
forward (parameters, learned static ranges), fp32 and bf16 autocast; it is dropped at every optimizer
step and refused where it could not be exact or fresh."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_compress.core import fake_quant_cache, fake_quant_fused, masking
from lightning_compress.core.act_quant import HI, LO
from lightning_compress.core.act_quantizer import ActQuantizer
from lightning_compress.core.fake_quant import WeightFakeQuant
from lightning_compress.core.quant_grid import QuantSpec, affine_params, as_rows, qrange
from lightning_compress.core.weight_quantizer import WeightQuantizer, attach_weight_quantizers
from tests.test_fake_quant_fused import _same

K = 4  # micro-batches per optimizer step
STEPS = 3


def _bert() -> tuple[nn.Module, list[WeightFakeQuant], object]:
    """A tiny BERT: W8 channel on attention, W4 group on the FFN input, W3 asymmetric per tensor with
    percentile ranges fixed at attach time (values beyond the clip bounds: the three-mask backward) on
    the FFN output, A8 static on the encoder."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(cfg)
    qs = list(WeightQuantizer(model, bits=8, modules=[r"attention"]).quantizers.values())
    qs += WeightQuantizer(model, bits=4, granularity="group", group_size=16, modules=[r"intermediate"]).quantizers.values()
    outs = {n: m for n, m in model.named_modules() if n.endswith("output.dense") and "attention" not in n}
    qs += attach_weight_quantizers(outs, QuantSpec(3, "tensor", symmetric=False), "clip-test", "test",
                                   observer="percentile", calibrate=True).values()
    ActQuantizer(model, bits=8, range="static", modules=[r"bert\.encoder"])
    ids = torch.randint(0, 64, (K * STEPS, 2, 12), generator=torch.Generator().manual_seed(5))

    def loss(model: nn.Module, i: int) -> torch.Tensor:
        return model(input_ids=ids[i], labels=ids[i, :, 0] % 2).loss

    return model, qs, loss


def _convnet() -> tuple[nn.Module, list[WeightFakeQuant], object]:
    """Conv2d W8 channel, Conv2d ternary, a Hugging Face ``Conv1D`` (stored ``[in, out]``: the transposed
    path) W4 DeepSpeed grid per row block, Linear W8 asymmetric; A8 static on the convolutions."""
    from transformers.pytorch_utils import Conv1D

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3)
            self.proj, self.head = Conv1D(16, 8), nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.c2(torch.relu(self.c1(x))).mean((2, 3))
            return self.head(torch.relu(self.proj(h)))

    model = Net()
    qs = list(WeightQuantizer(model, bits=8, modules=["c1"]).quantizers.values())
    qs += WeightQuantizer(model, bits=2, modules=["c2"]).quantizers.values()
    qs += WeightQuantizer(model, bits=4, granularity="row_block", groups=4, scheme="deepspeed", modules=["proj"]).quantizers.values()
    qs += WeightQuantizer(model, bits=8, symmetric=False, modules=["head"]).quantizers.values()
    ActQuantizer(model, bits=8, range="static", modules=["c1", "c2"])
    x = torch.randn(K * STEPS, 4, 3, 6, 6, generator=torch.Generator().manual_seed(6))
    y = torch.randint(0, 3, (K * STEPS, 4), generator=torch.Generator().manual_seed(7))

    def loss(model: nn.Module, i: int) -> torch.Tensor:
        return nn.functional.cross_entropy(model(x[i]).float(), y[i])

    return model, qs, loss


def _train(build, cached: bool, autocast: bool, monkeypatch) -> tuple[dict[str, torch.Tensor], int]:
    """STEPS AdamW steps of K micro-batches each; (parameters + static ranges, cache hits)."""
    monkeypatch.setattr(fake_quant_cache, "ENABLED", cached)
    torch.manual_seed(0)
    model, qs, loss_fn = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    hits = fake_quant_cache.HITS[0]
    for s in range(STEPS):
        for k in range(K):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = loss_fn(model, s * K + k) / K
            loss.backward()
        opt.step()
        assert all(q._train is None for q in qs)  # dropped at the step
        opt.zero_grad()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.update({f"{n}.{a}": getattr(m, a).clone() for n, m in model.named_modules() for a in (LO, HI) if hasattr(m, a)})
    return state, fake_quant_cache.HITS[0] - hits, len(qs)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("build", [_bert, _convnet], ids=["bert", "conv"])
def test_accumulation_bit_identical(monkeypatch, build, autocast):
    """Cached and recomputed: the same parameter and range bits after 3 AdamW steps of 4 micro-batches;
    the cached run quantized each weight once per step (K - 1 forwards per step answered from the cache)."""
    ref, ref_hits, n = _train(build, False, autocast, monkeypatch)
    got, hits, _ = _train(build, True, autocast, monkeypatch)
    assert ref_hits == 0 and hits == n * STEPS * (K - 1)
    assert got.keys() == ref.keys() and any(LO in k for k in ref)
    for k in ref:
        assert _same(got[k], ref[k]), k


def _gradient(q: WeightFakeQuant, module: nn.Module, w: nn.Parameter, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    w.grad = None
    out = q(module, w)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    (out * g).sum().backward()
    return out.detach().clone(), w.grad.clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_replayed_gradient_is_the_uncached_one_on_ties_and_clips(dtype):
    """For each of the 80 weight specs of the exactness tests, ranges from the weight and (affine
    widths) fixed ranges narrower than it, sub-8-bit ones with values exactly on a clip bound (the
    half gradient): the second call, served from the cache, gives the first call's value and gradient
    bits (sign of zero included); the fixed sub-8-bit ranges exercise the three-mask backward."""
    from tests.test_qat_exact import SPECS

    base = torch.randn(8, 16, generator=torch.Generator().manual_seed(0)) * 0.1
    base[0, :4] = 0.0
    base[0, 4:6] = -1e-6  # codes of -0.0
    base[1, 3] = 1.5
    for spec in SPECS:
        for fixed in (False, True):
            if fixed and (spec.bits <= 2 or spec.scheme != "affine"):
                continue  # no calibrated ranges there
            module = nn.Linear(16, 8, bias=False).to(dtype)
            q = WeightFakeQuant(spec)
            with torch.no_grad():
                module.weight.copy_(base)
                if fixed:
                    q.calibrate(module.weight * 0.6)  # narrower than the weight: clipped values
                    scale, zp = affine_params(*q.ranges, spec.bits, spec.symmetric)
                    qmin, _ = qrange(spec.bits, spec.symmetric)
                    rows = as_rows(module.weight, spec.granularity, spec.group_size, spec.groups)  # a view
                    rows[:, 0] = ((qmin - 0.49 - zp).float() * scale).to(dtype)  # on the lower clip bound
            before = fake_quant_cache.HITS[0]
            first = _gradient(q, module, module.weight, 3)
            if fixed and spec.bits < 8:
                assert len(q._train[2][2]) == 3, spec  # (mask, keep, tie)
            second = _gradient(q, module, module.weight, 3)
            assert fake_quant_cache.HITS[0] - before == 1, spec
            assert _same(first[0], second[0]) and _same(first[1], second[1]), (spec, fixed)


def test_misses_and_refusals(monkeypatch):
    """Recomputed, never served stale: after an in-place write, another width, an optimizer step; not
    cached for a masked copy, a float scheme, ZeRO-3 parameters, the reference ops or while tracing."""
    torch.manual_seed(0)
    m = nn.Linear(16, 8)
    q = WeightFakeQuant(QuantSpec(8, "channel"))
    masking.add_param_transform(m, "weight", "t", q, kind="weight_quant", priority=masking.QUANT_PRIORITY)
    x = torch.randn(4, 16)

    def hits_of(fn) -> int:
        h = fake_quant_cache.HITS[0]
        fn()
        return fake_quant_cache.HITS[0] - h

    m(x).sum().backward()
    assert hits_of(lambda: m(x).sum().backward()) == 1
    with torch.no_grad():
        m.weight.mul_(0.5)  # _version moves
    out = q(m, m.weight)
    assert _same(out, WeightFakeQuant(QuantSpec(8, "channel"))(m, m.weight)) and q._train is not None
    q.bits = 4
    assert hits_of(lambda: q(m, m.weight)) == 0
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    opt.step()
    assert q._train is None
    monkeypatch.setattr(fake_quant_fused, "ENABLED", False)
    assert hits_of(lambda: (q(m, m.weight), q(m, m.weight))) == 0 and q._train is None
    monkeypatch.setattr(fake_quant_fused, "ENABLED", True)
    assert hits_of(lambda: (q(m, m.weight.detach() * 1.0), q(m, m.weight.detach() * 1.0))) == 0  # not the parameter
    fp8 = WeightFakeQuant(QuantSpec(8, "channel", scheme="fp8_e4m3"))
    assert hits_of(lambda: (fp8(m, m.weight), fp8(m, m.weight))) == 0 and fp8._train is None
    m.weight.ds_id = 0  # a ZeRO-3 parameter
    assert hits_of(lambda: (q(m, m.weight), q(m, m.weight))) == 0 and q._train is None
    del m.weight.ds_id
    traced_hits = hits_of(lambda: torch.jit.trace(m, x, check_trace=False)(x))
    assert traced_hits == 0


def test_frozen_weight_and_checkpointing():
    """A weight that needs no gradient is served its cached value; under activation checkpointing the
    recomputed forward hits the cache and the gradients are the uncached ones."""
    from torch.utils.checkpoint import checkpoint

    def grads(cached: bool) -> list[torch.Tensor]:
        fake_quant_cache.ENABLED = cached
        try:
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
            WeightQuantizer(model, bits=4, granularity="group", group_size=8, modules=["0", "2"])
            x = torch.randn(8, 16)
            for _ in range(2):
                checkpoint(model, x, use_reentrant=False).pow(2).sum().backward()
            return [p.grad.clone() for p in model.parameters()]
        finally:
            fake_quant_cache.ENABLED = True

    assert all(_same(a, b) for a, b in zip(grads(True), grads(False)))
    m = nn.Linear(16, 8).requires_grad_(False)
    q = WeightFakeQuant(QuantSpec(8, "channel"))
    first = q(m, m.weight)
    assert q(m, m.weight) is first and not first.requires_grad
