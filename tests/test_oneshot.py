"""One-shot compression (lightning_compress.oneshot) on tiny random-weight Llama / Qwen2 / GPT-2 decoders."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_compress.core import masking
from lightning_compress.core.quantize import unpack_model
from lightning_compress.export import clean, clean_for_storage
from lightning_compress.oneshot import GPTQ, RTN, Magnitude, SmoothQuant, SparseGPT, Wanda, oneshot, whole_model_bytes
from lightning_compress.oneshot.linear_view import linears, weight_out_in
from tests.oneshot_models import calib, tiny

FAMILIES = ["llama", "qwen2", "gpt2"]


def stack_of(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def weights(model):
    """``{name: [out, in] effective weight}`` of every linear layer in the decoder stack."""
    return {f"{i}.{n}": weight_out_in(m) for i, b in enumerate(stack_of(model)) for n, m in linears(b).items()}


def mean_error(report):
    return sum(r.output_error for r in report.layers) / len(report.layers)


@pytest.fixture(scope="module")
def data():
    return calib()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", [SparseGPT, Wanda])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_exact_sparsity_and_pattern(family, method, pattern, data):
    model = tiny(family)
    sparsity = 0.5 if pattern == "unstructured" else None
    oneshot(model, [method(sparsity, pattern)], data, measure_error=False)
    ws = weights(model)
    assert len(ws) == 2 * (4 if family == "gpt2" else 7)
    for name, w in ws.items():
        zero = w == 0
        if pattern == "unstructured":
            assert int(zero.sum()) == round(0.5 * w.numel()), name
        else:
            n, m = map(int, pattern.split(":"))
            kept = (~zero).reshape(w.shape[0], -1, m).sum(-1)
            assert bool((kept == n).all()), name  # every group of m consecutive inputs keeps exactly n
        module = dict((f"{i}.{k}", v) for i, b in enumerate(stack_of(model)) for k, v in linears(b).items())[name]
        assert masking.find_transform(module, "weight", "sparse_mask") is not None  # rides on a SparsePruning-style mask


@pytest.mark.parametrize("family", FAMILIES)
def test_calibrated_pruning_beats_magnitude(family, data):
    errs = {}
    for cls in (Magnitude, Wanda, SparseGPT):
        for pattern in ("unstructured", "2:4"):
            model = tiny(family)
            rep = oneshot(model, [cls(0.5 if pattern == "unstructured" else None, pattern)], data)
            errs[cls.__name__, pattern] = mean_error(rep)
    for pattern in ("unstructured", "2:4"):
        assert errs["SparseGPT", pattern] < errs["Magnitude", pattern], errs
        assert errs["Wanda", pattern] < errs["Magnitude", pattern], errs


@pytest.mark.parametrize("family", FAMILIES)
def test_gptq_beats_rtn(family, data):
    for bits, gs, act_order in ((3, 32, False), (4, None, True)):
        e_rtn = mean_error(oneshot(tiny(family), [RTN(bits, gs)], data))
        e_gptq = mean_error(oneshot(tiny(family), [GPTQ(bits, gs, act_order=act_order)], data))
        assert e_gptq < 0.8 * e_rtn, (bits, gs, e_gptq, e_rtn)


def _on_grid(module) -> bool:
    """The stored weight is a fixed point of its quantizer: GPTQ wrote values that lie on the grid."""
    stored = module.weight.detach().float()
    return torch.equal(masking.effective_param(module, "weight").detach().float(), stored)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sparsegpt_then_gptq_keeps_sparsity_and_grid(family, data):
    model = tiny(family)
    oneshot(model, [SparseGPT(None, "2:4"), GPTQ(4, group_size=32)], data)
    for i, b in enumerate(stack_of(model)):
        for n, m in linears(b).items():
            w = weight_out_in(m)
            kept = (w != 0).reshape(w.shape[0], -1, 4).sum(-1)
            assert bool((kept <= 2).all()), n
            assert int((w == 0).sum()) >= w.numel() // 2
            assert _on_grid(m), n
            assert masking.find_transform(m, "weight", "weight_quant") is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_clean_equals_compressed(family, data):
    model = tiny(family)
    oneshot(model, [Wanda(None, "2:4"), GPTQ(4, 32, symmetric=False)], data)
    x = data[0]
    with torch.no_grad():
        ref = model(x).logits
        slim = clean(copy.deepcopy(model))
        assert not any(masking.is_wrapped(m) for m in slim.modules())
        assert torch.equal(slim(x).logits, ref)


def test_packed_storage_of_gptq_weights(data):
    model = tiny("llama")
    oneshot(model, [SparseGPT(0.5), GPTQ(4, 32)], data)
    eff = {n: masking.effective_param(m, "weight").detach().clone() for n, m in model.named_modules() if masking.is_wrapped(m)}
    slim, packed, stored = clean_for_storage(model)
    deq = unpack_model(packed)
    assert len(deq) == 14
    for name, w in eff.items():
        assert torch.equal(deq[f"{name}.weight"], w), name
    assert packed["model.layers.0.mlp.down_proj.weight.qweight"].dtype == torch.uint8  # 2 codes a byte


def test_smoothquant_w8a8(data):
    model = tiny("llama")
    ref_model = copy.deepcopy(model)
    method = SmoothQuant(0.5)
    rep = oneshot(model, [method], data)
    # q/k/v share input_layernorm, gate/up post_attention_layernorm: both folds found from the forward
    assert rep.smoothed["model.layers.0.input_layernorm"] == [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
    assert rep.smoothed["model.layers.1.post_attention_layernorm"] == ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]
    q = model.model.layers[0].self_attn.q_proj
    kinds = {k for _, k in masking.owners(q, "weight")} | {k for _, k in masking.owners(q)}
    assert kinds == {"weight_quant", "act_quant"}
    with torch.no_grad():
        a, b = model(data[0]).logits, ref_model(data[0]).logits
    assert float((a - b).pow(2).mean() / b.pow(2).mean()) < 1e-3
    # the smoothing itself changed nothing: without the quantizers the model is the dense one
    masking.strip(model)
    with torch.no_grad():
        assert torch.allclose(model(data[0]).logits, b, atol=1e-4, rtol=1e-4)


def test_sequential_memory_below_whole_model(data):
    model = tiny("llama", layers=4)
    whole = whole_model_bytes(copy.deepcopy(model), data)
    rep = oneshot(model, [SparseGPT(0.5)], data)
    assert [r.name for r in rep.layers] == [f"model.layers.{i}" for i in range(4)]
    assert all(r.seconds > 0 and r.held_bytes > r.stats_bytes > 0 for r in rep.layers)
    non_stack = sum(p.numel() * 4 for n, p in model.named_parameters() if ".layers." not in n)
    assert rep.peak_held_bytes + non_stack < whole / 2, (rep.peak_held_bytes, non_stack, whole)
    assert "| model.layers.3 |" in rep.table()


def test_finetune_keeps_oneshot_mask(data):
    model = tiny("llama")
    oneshot(model, [Wanda(0.5)], data)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x in data[:2]:
        out = model(x, labels=x)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    for n, w in weights(model).items():
        assert int((w == 0).sum()) == w.numel() // 2, n


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"SparseGPT: `sparsity`=0.3 contradicts pattern '2:4'"):
        SparseGPT(0.3, "2:4")
    with pytest.raises(ValueError, match=r"Wanda: `pattern`='4x1' is not supported"):
        Wanda(0.5, "4x1")
    with pytest.raises(ValueError, match=r"Magnitude: `sparsity`=1.0"):
        Magnitude(1.0)
    with pytest.raises(ValueError, match=r"GPTQ: `bits`=9 is not supported"):
        GPTQ(9)
    with pytest.raises(ValueError, match=r"GPTQ: `group_size`=0"):
        GPTQ(4, group_size=0)
    with pytest.raises(ValueError, match=r"SmoothQuant: `alpha`=1.5"):
        SmoothQuant(1.5)
    model = tiny("llama")
    with pytest.raises(ValueError, match="two 'prune' methods"):
        oneshot(model, [Wanda(0.5), SparseGPT(0.5)], calib(1))
    with pytest.raises(ValueError, match="pruning must come first"):
        oneshot(model, [GPTQ(4), SparseGPT(0.5)], calib(1))
    with pytest.raises(ValueError, match="SmoothQuant"):
        oneshot(model, [SmoothQuant(), GPTQ(4)], calib(1))
    with pytest.raises(ValueError, match=r"GPTQ: `group_size`=48 does not divide the input dimension 64"):
        oneshot(model, [GPTQ(4, 48)], calib(1))
    with pytest.raises(ValueError, match="gave no batches"):
        oneshot(model, [Wanda(0.5)], [])
    assert not any(masking.is_wrapped(m) for m in model.modules())  # nothing half-done
