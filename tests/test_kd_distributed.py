"""LayerReductionKD under DeepSpeed ZeRO 2/3 with 2 CPU processes (scenarios in distributed/scenarios_kd.py)."""

from __future__ import annotations

import math

import pytest
import torch


def check(results, stage: int, stack: str, config_layers=None):
    assert len(results) == 2
    for r in results:
        # the teacher stays whole on every rank: never partitioned, never in the engine, frozen, on the rank's device
        assert r["teacher_ds_id"] is False and r["teacher_in_engine"] is False
        assert r["teacher_shapes"] == r["full_shapes"] and r["teacher_numel_ok"]
        assert r["teacher_requires_grad"] is False and r["teacher_training"] is False
        assert r["teacher_device"] == "cpu"
        assert not any(r["teacher_grads"])
        for k, v in r["teacher_before"].items():
            assert torch.equal(r["teacher_after"][k], v), f"teacher weight {k} changed"
        # the student is what DeepSpeed got (partitioned under ZeRO-3)
        assert r["student_ds_id"] is (stage == 3)
        assert r["engine_is_deepspeed"] == "DeepSpeedEngine"
        assert r["keep"] == [1, 3] and r["student_depth"] == 2 and r["stack_name"] == stack
        assert r["config_layers"] == config_layers
        # training ran; loss finite; KD terms logged and the loss contains them
        assert r["global_step"] == 3 and len(r["losses"]) == 3
        assert all(math.isfinite(x) for x in r["losses"])
        for t in r["terms"]:
            assert {"kd/logits", "kd/hidden", "kd/labels", "kd/loss"} <= set(t)
            assert t["kd/hidden"] > 0 and all(math.isfinite(v) for v in t.values())
    return results


@pytest.mark.parametrize("stage", [2, 3])
def test_kd_layer_reduction_deepspeed(dist_results, stage):
    results = check(dist_results(f"kd_layer_reduction_zero{stage}"), stage, "model.blocks")
    if stage == 3:  # with SparsePruning on the same Trainer: the reduced student is pruned, the teacher is not
        for r in results:
            assert r["teacher_wrapped"] is False
            assert "model.blocks.1.fc" in r["pruned"] and not any(k.startswith("model.blocks.2") for k in r["pruned"])
            assert r["pruned"]["model.blocks.1.fc"] < 1.0


def test_kd_tiny_bert_zero3(dist_results):
    results = check(dist_results("kd_bert_zero3"), 3, "model.bert.encoder.layer", config_layers=2)
    for r in results:
        for t in r["terms"]:
            assert t["kd/attention"] > 0
