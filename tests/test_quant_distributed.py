"""WeightQuant + ActQuant under DeepSpeed ZeRO 2/3 with 2 CPU processes (scenarios in distributed/scenarios_quant.py)."""

from __future__ import annotations

import types

import pytest
import torch

from lightning_compress.callbacks.act_quant import ActQuant
from lightning_compress.callbacks.weight_quant import WeightQuant
from lightning_compress.core.quantize import fake_quant_weight, unpack_state
from tests.distributed.scenarios_quant import PROBE_X
from tests.models import TinyMLP


def check_ranks_agree(r0, r1, exact_storage=True):
    assert r0["global_step"] == r1["global_step"] == 6
    # bits schedule by optimizer step: 8 bits for steps 0-1, 4 bits from step 2 on
    assert r0["bits_by_step"] == r1["bits_by_step"] == {0: 8, 1: 8, 2: 4, 3: 4, 4: 4, 5: 4}
    assert set(r0["effective"]) == {"net.0", "net.2"}
    for name in r0["effective"]:
        assert torch.equal(r0["effective"][name], r1["effective"][name]), f"quantized weights differ across ranks: {name}"
        for key in r0["packed"][name]:
            assert torch.equal(r0["packed"][name][key], r1["packed"][name][key])
        # packed storage == the weight forward used (bf16: up to the bf16 rounding); 4-bit group-wise grid
        if exact_storage:
            assert torch.equal(unpack_state(r0["packed"][name]), r0["effective"][name])
        else:
            unpacked = unpack_state(r0["packed"][name]).to(torch.bfloat16).float()
            mismatch = (unpacked != r0["effective"][name]).float().mean().item()
            assert mismatch == 0.0, f"{name}: {mismatch:.2%} of the packed bf16 weights differ from forward's"
        assert r0["packed"][name]["meta"][1].item() == 4
    # static ranges were learned and synchronised
    assert r0["ranges"] == r1["ranges"] and all(v is not None for v in r0["ranges"].values())
    assert torch.equal(r0["output"], r1["output"])


@pytest.mark.parametrize("stage", [2, 3])
def test_weight_act_quant_equal_across_ranks(dist_results, stage):
    r0, r1 = dist_results(f"quant_weight_act_zero{stage}")
    check_ranks_agree(r0, r1)
    # the training-path weight cache: ZeRO-2 quantizes each weight once per optimizer step (the second
    # micro-batch of each step is served from the cache: 2 weights x 6 steps); ZeRO-3 never caches
    assert r0["cache_hits"] == r1["cache_hits"] == (12 if stage == 2 else 0)
    # a fresh single-process model with the same weights, quantizers and ranges gives the same output
    model = TinyMLP().eval()
    model.load_state_dict(r0["weights"])
    wq = WeightQuant(bits=4, start_bits=8, period=2, granularity="group", group_size=8)
    aq = ActQuant(bits=8, range="static", symmetric=False)
    fake = types.SimpleNamespace(global_step=0)
    wq.load_state_dict(r0["wq_state"])
    wq.setup(fake, model, "fit")
    aq.setup(fake, model, "fit")
    aq.load_state_dict(r0["aq_state"])
    with torch.no_grad():
        assert torch.allclose(model(PROBE_X), r0["output"], atol=1e-5)
        w = model.net[0].weight
        assert torch.equal(fake_quant_weight(w, wq._quantizers["net.0"].current_spec), r0["effective"]["net.0"])


def test_weight_act_quant_zero2_cache_bit_identical(dist_results):
    """ZeRO-2, accumulation over 2 micro-batches: with and without the training-path weight cache the
    trained parameters, quantized weights, packed storage, static ranges and outputs are the same bits."""
    cached, uncached = dist_results("quant_weight_act_zero2")[0], dist_results("quant_weight_act_zero2_uncached")[0]
    assert uncached["cache_hits"] == 0 and cached["cache_hits"] > 0
    for key in ("weights", "effective"):
        assert cached[key].keys() == uncached[key].keys()
        for k in cached[key]:
            assert torch.equal(cached[key][k].view(torch.int32), uncached[key][k].view(torch.int32)), (key, k)
    for name in cached["packed"]:
        for k in cached["packed"][name]:
            assert torch.equal(cached["packed"][name][k], uncached["packed"][name][k])
    assert cached["ranges"] == uncached["ranges"]
    assert torch.equal(cached["output"].view(torch.int32), uncached["output"].view(torch.int32))


def test_weight_act_quant_zero2_bf16(dist_results):
    r0, r1 = dist_results("quant_weight_act_zero2_bf16")
    check_ranks_agree(r0, r1, exact_storage=False)
    assert r0["output"].isfinite().all()
    assert r0["cache_hits"] == 12  # bf16 parameters: the cache serves them too
