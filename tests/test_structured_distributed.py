"""Structured pruning + RedundancyClean under DeepSpeed ZeRO 2/3, 2 CPU ranks (scenarios_structured.py)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_compress.callbacks.redundancy_clean import RedundancyClean
from lightning_compress.callbacks.row_pruning import RowPruning
from tests.distributed.scenarios_structured import PROBE_MLP
from tests.models import TinyMLP, cpu_trainer, mlp_loader


def check_ranks(results):
    r0, r1 = results
    for cb, masks in r0["masks"].items():
        for name, m in masks.items():
            assert torch.equal(m, r1["masks"][cb][name]), f"{cb} masks differ across ranks for {name}"
            assert 0 < int(m.sum()) < m.numel()
    for r in results:
        assert not r["wrapped"]
        torch.testing.assert_close(r["slim_output"], r["masked_output"], atol=1e-5, rtol=1e-4)
    assert r0["slim_state"].keys() == r1["slim_state"].keys()
    for k in r0["slim_state"]:
        if "running_" in k or "num_batches" in k:
            continue  # BatchNorm statistics are per rank (no SyncBatchNorm); rank 0's are saved
        torch.testing.assert_close(r0["slim_state"][k], r1["slim_state"][k])
    assert "model.safetensors" in r0["files"] and "report.json" in r0["files"]
    return r0


@pytest.fixture(scope="module")
def single_process_mlp(tmp_path_factory):
    """The same run on one process: batch 8 = the two ranks' batches of 4 (DistributedSampler interleaves)."""
    pl.seed_everything(0)
    model = TinyMLP()
    rows = RowPruning(sparsity=0.5, end_step=2)
    rc = RedundancyClean(tmp_path_factory.mktemp("single"), formats=("safetensors",), latency_runs=0)
    cpu_trainer(max_steps=4, callbacks=[rows, rc]).fit(model, mlp_loader(n=64, batch_size=8))
    return rows.masks(), rc.slim_model


@pytest.mark.parametrize("stage", [2, 3])
def test_rows_equal_single_process(dist_results, single_process_mlp, stage):
    r0 = check_ranks(dist_results(f"structured_rows_mlp_zero{stage}"))
    masks, slim = single_process_mlp
    for name, m in masks.items():
        assert torch.equal(r0["masks"]["RowPruning"][name], m), name
    for k, v in slim.state_dict().items():
        torch.testing.assert_close(r0["slim_state"][k], v, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(r0["slim_output"], slim(PROBE_MLP), atol=1e-5, rtol=1e-4)


def test_channels_resnet_zero3(dist_results):
    r0 = check_ranks(dist_results("structured_channels_resnet_zero3"))
    assert r0["slim_state"]["stem.weight"].shape[0] == 4 and r0["slim_state"]["fc.weight"].shape[1] == 8


def test_bert_heads_rows_zero3(dist_results):
    r0 = check_ranks(dist_results("structured_bert_heads_rows_zero3"))
    assert r0["slim_state"]["bert.encoder.layer.0.attention.self.query.weight"].shape == (16, 32)
    assert r0["slim_state"]["bert.encoder.layer.1.intermediate.dense.weight"].shape == (32, 32)
