"""OneShotCompression under DeepSpeed ZeRO-3 with 2 CPU ranks (scenarios in distributed/scenarios_oneshot.py):
the same model on both ranks, equal to a 1-process oneshot on the same batches."""

from __future__ import annotations

import torch

from lightning_compress.oneshot import oneshot
from tests.distributed.scenarios_oneshot import METHODS, PROBE
from tests.oneshot_lightning import TinyLM, first_batches


def test_validate_zero3_equals_one_process(dist_results):
    r0, r1 = dist_results("oneshot_validate_zero3")
    for key in ("weights", "effective", "masks"):
        assert r0[key].keys() == r1[key].keys()
        for k in r0[key]:
            assert torch.equal(r0[key][k], r1[key][k]), (key, k)
    assert len(r0["masks"]) == 14 and [n for n, _ in r0["layers"]] == ["model.model.layers.0", "model.model.layers.1"]
    ref = TinyLM()
    oneshot(ref, METHODS(), first_batches(2, seed=7), forward=lambda m, b: m(b))
    state = ref.state_dict()
    for k, v in r0["weights"].items():
        assert torch.allclose(v, state[k].float(), atol=1e-5, rtol=0), k
    with torch.no_grad():
        assert torch.allclose(ref(PROBE), r0["output"], atol=1e-4)


def test_fit_zero3_keeps_pattern_and_ranks_agree(dist_results):
    r0, r1 = dist_results("oneshot_fit_zero3")
    assert len(r0["masks"]) == 14
    for k in r0["masks"]:
        assert torch.equal(r0["masks"][k], r1["masks"][k]), k
    for name, w in r0["effective"].items():
        assert torch.equal(w, r1["effective"][name]), name
        if "layers" in name:
            kept = (w != 0).reshape(w.shape[0], -1, 4).sum(-1)
            assert bool((kept <= 2).all()), name  # 2:4 held through ZeRO-3 fine-tuning
    assert torch.allclose(r0["output"], r1["output"], atol=1e-5)
