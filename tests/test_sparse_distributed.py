"""Sparse pruning under DeepSpeed ZeRO 2/3 with 2 CPU processes (scenarios in distributed/scenarios_sparse.py)."""

from __future__ import annotations

import pytest
import torch

from tests.distributed.scenarios_sparse import PROBE_X
from tests.models import TinyMLP


def check_common(results, sparsity):
    r0, r1 = results
    assert r0["masks"].keys() == r1["masks"].keys() == {"net.0", "net.2"}
    for name in r0["masks"]:
        assert torch.equal(r0["masks"][name], r1["masks"][name]), f"masks differ across ranks for {name}"
    assert r0["stats"]["sparsity"] == pytest.approx(sparsity, abs=1e-2)
    # forward with masks == forward with the zeros baked into the weights
    model = TinyMLP()
    model.load_state_dict(r0["weights"])
    with torch.no_grad():
        for name, mask in r0["masks"].items():
            model.get_submodule(name).weight.mul_(mask)
        assert torch.allclose(model(PROBE_X), r0["output"], atol=1e-5)
    return r0


@pytest.mark.parametrize("stage", [2, 3])
def test_snip_momentum_4x1_with_deepspeed_accumulation(dist_results, stage):
    r0 = check_common(dist_results(f"sparse_snip_momentum_4x1_zero{stage}"), 0.75)
    for mask in r0["masks"].values():
        blocks = mask.reshape(mask.shape[0] // 4, 4, -1)
        assert bool((blocks.all(1) | (~blocks).all(1)).all())
    # 12 micro-batches, 6 optimizer steps: the schedule counts the latter
    assert r0["micro_batches"] == 12 and r0["boundaries"] == 6 and r0["global_step"] == 6
    # events at steps 0 (deferred to 1: snip needs a scored step), 2 and 4
    assert [h["step"] for h in r0["history"]] == [1, 2, 4]


def test_l1_2to4_zero3(dist_results):
    r0 = check_common(dist_results("sparse_l1_2to4_zero3"), 0.5)
    for mask in r0["masks"].values():
        assert bool((mask.reshape(-1, 4).sum(1) == 2).all())


@pytest.mark.parametrize("stage", [2, 3])
def test_topk_learned_scores(dist_results, stage):
    r0 = check_common(dist_results(f"sparse_topk_zero{stage}"), 0.6)
    assert [h["step"] for h in r0["history"]] == [1, 2, 3, 4]


@pytest.mark.parametrize("stage", [2, 3])
def test_resume_mid_schedule_equals_uninterrupted_under_deepspeed(dist_results, stage):
    for r in dist_results(f"sparse_resume_zero{stage}"):
        full, resumed = r["full"], r["resumed"]
        for name in full["masks"]:
            assert torch.equal(full["masks"][name], resumed["masks"][name]), name
            assert torch.allclose(full["scores"][name], resumed["scores"][name], rtol=1e-5, atol=1e-7), name
        for k in full["weights"]:
            assert torch.allclose(full["weights"][k], resumed["weights"][k], atol=1e-6), k
        assert torch.allclose(full["output"], resumed["output"], atol=1e-6)


def test_ddp_masks_equal_across_ranks(dist_results):
    r0, r1 = dist_results("sparse_ddp_snip_topk")
    for method in ("snip_momentum", "topk"):
        assert r0[method]["stats"]["sparsity"] == pytest.approx(0.6, abs=1e-2)
        for name, mask in r0[method]["masks"].items():
            assert torch.equal(mask, r1[method]["masks"][name]), (method, name)
