"""Every callback under FSDP1 / FSDP2, 2 CPU ranks (tests/distributed/scenarios_fsdp.py), against
1-process runs of the same recipes (a rank's batch of b + the other's = the 1-process batch of 2b)."""

from __future__ import annotations

import pytest
import torch

from lightning_compress import FSDPCompressionStrategy, ModelParallelCompressionStrategy
from lightning_compress.core import masking
from tests.distributed.scenarios_fsdp import KINDS, make_model, rank_loader, recipe, summary
from tests.models import cpu_trainer

CLOSE = dict(atol=1e-5, rtol=1e-4)


def assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def check_ranks(results, output: bool = True):
    """Masks, ranges, histories and (``output``) the sharded model's output identical on both ranks."""
    r0, r1 = results
    for k in r0:
        if k.endswith((".masks", ".ranges", ".history")) or k == "global_step" or (output and k == "output"):
            assert_same(r0[k], r1[k], k)
    assert r1["weights"] is None and r0["weights"]  # full state dict gathered on rank 0 only
    return r0


_SINGLE: dict[str, dict] = {}


def single_process(name: str) -> dict:
    """The recipe on one process, batch 2b (cached per session)."""
    if name not in _SINGLE:
        r = recipe(name)
        cbs = r["callbacks"]()
        model = make_model(r["model"], "fsdp1")
        trainer = cpu_trainer(max_steps=r["max_steps"], callbacks=cbs)
        trainer.fit(model, rank_loader(r["data"](), 2 * r["batch"]))
        model.eval()
        with torch.no_grad():
            out = model(r["probe"].clone()).float()
        _SINGLE[name] = {**summary(cbs), "output": out, "weights": {k: v.float() for k, v in model.state_dict().items()}}
    return _SINGLE[name]


def masked_forward_from_weights(r0: dict, name: str, cb_key: str) -> torch.Tensor:
    """The probe output of a fresh dense model given rank 0's gathered weights times the final masks:
    what the sharded model must compute if its masks are current (not stale) in forward."""
    r = recipe(name)
    model = make_model(r["model"], "fsdp1")
    model.load_state_dict(r0["weights"])
    masks = r0[f"{cb_key}.masks"]
    with torch.no_grad():
        for mname, mask in masks.items():
            w = model.get_submodule(mname).weight
            w.mul_(mask.to(w.dtype))
        return model.eval()(r["probe"].clone()).float()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,cb_key", [("snip_4x1", "SnipMomentumPruning"), ("l1_2to4", "SparsePruning")])
def test_sparse_equal_single_process(dist_results, kind, name, cb_key):
    r0 = check_ranks(dist_results(f"fsdp_{kind}_{name}"))
    single = single_process(name)
    assert_same(r0[f"{cb_key}.masks"], single[f"{cb_key}.masks"], "masks vs 1 process")
    final = r0[f"{cb_key}.history"][-1]["sparsity"]
    assert final == pytest.approx(0.75 if name == "snip_4x1" else 0.5)
    for k, v in single["weights"].items():
        torch.testing.assert_close(r0["weights"][k], v, **CLOSE)
    torch.testing.assert_close(r0["output"], single["output"], **CLOSE)
    # masks act on the sharded parameters in forward, with the latest event's masks
    torch.testing.assert_close(r0["output"], masked_forward_from_weights(r0, name, cb_key), **CLOSE)
    if name == "l1_2to4":
        for m in r0[f"{cb_key}.masks"].values():
            assert (m.reshape(-1, 4).sum(1) == 2).all()


@pytest.mark.parametrize("kind", KINDS)
def test_w8a8_equal_single_process(dist_results, kind):
    r0 = check_ranks(dist_results(f"fsdp_{kind}_w8a8"))
    single = single_process("w8a8")
    torch.testing.assert_close(r0["output"], single["output"], **CLOSE)
    for k, v in single["weights"].items():
        torch.testing.assert_close(r0["weights"][k], v, **CLOSE)
    # the forward is quantized: a dense forward with the same weights differs
    model = make_model("mlp", "fsdp1")
    model.load_state_dict(r0["weights"])
    with torch.no_grad():
        dense = model.eval()(recipe("w8a8")["probe"].clone())
    assert not torch.allclose(dense, r0["output"], atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_w8a8_static_ranges_shared(dist_results, kind):
    r0 = check_ranks(dist_results(f"fsdp_{kind}_w8a8_static"))  # ranges averaged over ranks: identical
    ranges = r0["ActQuant.ranges"]
    assert ranges and all(v is not None and v[0] < v[1] for v in ranges.values())


@pytest.mark.parametrize("kind", KINDS)
def test_layer_reduction_kd(dist_results, kind):
    from tests.distributed.scenarios_fsdp import _KDLit, kd_data

    r0, r1 = dist_results(f"fsdp_{kind}_layer_reduction_kd")
    assert r0["depth"] == r1["depth"] == 2 and r0["teacher_depth"] == 4
    assert torch.equal(r0["output"], r1["output"])
    import lightning.pytorch as pl

    from lightning_compress import LayerReductionKD

    pl.seed_everything(0)
    lit = _KDLit("none")
    losses: list[float] = []

    class Losses(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))

    kd = LayerReductionKD(keep_layers=[1, 3], weights={"logits": 1.0, "hidden": 1.0, "labels": 1.0})
    cpu_trainer(max_steps=3, callbacks=[kd, Losses()]).fit(lit, rank_loader(kd_data(), 8))
    # a 1-process batch of 8 = the two ranks' batches of 4: its loss is the mean of theirs
    assert losses == pytest.approx([(a + b) / 2 for a, b in zip(r0["losses"], r1["losses"])], abs=1e-5)
    with torch.no_grad():
        out = lit.eval()(torch.randn(3, 8, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(r0["output"], out, **CLOSE)


@pytest.mark.parametrize("kind", KINDS)
def test_bert_rows_heads_clean(dist_results, kind):
    results = dist_results(f"fsdp_{kind}_bert_rows_heads")
    r0 = check_ranks(results)
    assert results[1]["slim_none"] and not r0["slim_none"]
    single = single_process("bert_rows_heads")
    for key in ("HeadPruning.masks", "RowPruning.masks"):
        assert_same(r0[key], single[key], key)
        for m in r0[key].values():
            assert 0 < int(m.sum()) < m.numel()
    torch.testing.assert_close(r0["output"], single["output"], **CLOSE)
    torch.testing.assert_close(r0["slim_output"], r0["output"], **CLOSE)  # clean == masked
    assert not r0["slim_sharded"] and not r0["slim_wrapped"], r0["slim_classes"]
    assert r0["slim_numel"] < sum(v.numel() for v in r0["weights"].values())


@pytest.mark.parametrize("kind", KINDS)
def test_resnet_channels_clean(dist_results, kind):
    results = dist_results(f"fsdp_{kind}_resnet_channels")
    r0 = check_ranks(results, output=False)  # BatchNorm running statistics are per rank (no SyncBatchNorm)
    for m in r0["ChannelPruning.masks"].values():
        assert 0 < int(m.sum()) < m.numel()
    torch.testing.assert_close(r0["slim_output"], r0["output"], **CLOSE)  # clean == masked
    assert not r0["slim_sharded"] and not r0["slim_wrapped"], r0["slim_classes"]
    assert r0["slim_numel"] < sum(v.numel() for k, v in r0["weights"].items() if "running" not in k and "num_batches" not in k)


@pytest.mark.parametrize("scenario", ["fsdp1_resume_full", "fsdp1_resume_sharded", "fsdp2_resume_full", "fsdp2_resume_sharded"])
def test_resume_equals_uninterrupted(dist_results, scenario):
    r0, r1 = dist_results(f"fsdp_{scenario}")
    assert r0["ckpt_is_dir"] == scenario.endswith("sharded")
    for r in (r0, r1):
        full, resumed = r["full"], r["resumed"]
        assert_same(resumed["masks"], full["masks"], "masks")
        assert_same(resumed["events"], full["events"], "events")
        assert_same(resumed["wq"], full["wq"], "weight quant state")
        for k in full["scores"]:
            torch.testing.assert_close(resumed["scores"][k], full["scores"][k], **CLOSE)
        torch.testing.assert_close(resumed["output"], full["output"], **CLOSE)
    for k, v in r0["full"]["weights"].items():
        torch.testing.assert_close(r0["resumed"]["weights"][k], v, **CLOSE)
    assert_same(r0["full"]["masks"], r1["full"]["masks"], "masks across ranks")


def test_refusals(dist_results):
    r0, _ = dist_results("fsdp_refusals")
    assert "use_orig_params" in r0["use_orig_params"] and "FSDPCompressionStrategy" in r0["use_orig_params"]
    assert "tensor_parallel_size=2" in r0["tensor_parallel"] and "SnipMomentumPruning" in r0["tensor_parallel"]


def test_strategy_names_registered():
    import lightning.pytorch as pl  # noqa: F401  (the import hook registers the names)
    from lightning.pytorch.strategies import StrategyRegistry

    import lightning_compress  # noqa: F401

    for name in ("fsdp_compression", "fsdp_compression_shard_grad_op", "model_parallel_compression"):
        assert name in StrategyRegistry
    trainer = pl.Trainer(accelerator="cpu", devices=1, strategy="fsdp_compression", logger=False)
    assert isinstance(trainer.strategy, FSDPCompressionStrategy)
    trainer = pl.Trainer(accelerator="cpu", devices=1, strategy="model_parallel_compression", logger=False)
    assert isinstance(trainer.strategy, ModelParallelCompressionStrategy)
    with pytest.raises(ValueError, match="use_orig_params"):
        FSDPCompressionStrategy(use_orig_params=False)


def test_unwrap_keeps_a_class_layer_added_after_wrap():
    """FSDP2's fully_shard swaps Compressed<Linear> for FSDP<Compressed<Linear>>: unwrapping must keep the
    outer layer (here a stand-in mixin) and drop only ours."""

    class Outer:
        marker = True

    lin = torch.nn.Linear(4, 4)
    masking.add_param_transform(lin, "weight", "o", lambda m, w: w * 0, kind="mask", priority=0)
    wrapped = type(lin)
    lin.__class__ = type("FSDPWrapped", (Outer, wrapped), {})
    assert torch.equal(lin(torch.ones(1, 4)), lin.bias.detach().unsqueeze(0))
    masking.remove_owner(lin, "o")
    assert isinstance(lin, Outer) and not masking.is_wrapped(lin) and isinstance(lin, torch.nn.Linear)
    assert type(lin).__bases__ == (Outer, torch.nn.Linear)


def test_forward_finds_fsdp1_view_in_dict():
    """FSDP1 (use_orig_params) sets the unsharded view during forward as a plain instance attribute *and*
    in ``_parameters``; ``self.weight`` reads the instance attribute, so the mask must replace it there
    (else forward silently runs unmasked), and both must be put back."""
    lin = torch.nn.Linear(4, 4)
    masking.add_param_transform(lin, "weight", "o", lambda m, w: w * 0, kind="mask", priority=0)
    view = lin.weight.detach().clone()
    lin._parameters["weight"] = view
    lin.__dict__["weight"] = view
    out = lin(torch.ones(1, 4))
    assert torch.equal(out, lin.bias.detach().unsqueeze(0))
    assert lin.__dict__["weight"] is view and lin._parameters["weight"] is view
