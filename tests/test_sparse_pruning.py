"""SparsePruning / SnipMomentumPruning under a plain CPU Trainer (one process)."""

from __future__ import annotations

import csv

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_compress import SnipMomentumPruning, SparsePruning
from lightning_compress.core import masking
from tests.models import TinyCNN, TinyMLP, cpu_trainer, image_loader, mlp_loader


def fit(cb, steps=12, model=None, loader=None, **trainer_kwargs):
    pl.seed_everything(0)
    model = model or TinyMLP()
    trainer = cpu_trainer(max_steps=steps, callbacks=[cb], **trainer_kwargs)
    trainer.fit(model, loader or mlp_loader())
    return model, trainer


def pruned_layers(model):
    return {n: m for n, m in model.named_modules() if masking.is_wrapped(m)}


@pytest.mark.parametrize("method", ["l1", "topk", "snip", "snip_momentum"])
@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.7), ("4x1", 0.75), ("2:4", 0.5), ("1x4", 0.5)])
def test_final_sparsity_and_structure(method, pattern, sparsity):
    cb = SparsePruning(sparsity=sparsity, method=method, pattern=pattern, end_step=8, frequency=2)
    model, _ = fit(cb)
    # default targets: every Linear but the last (classifier)
    assert sorted(pruned_layers(model)) == ["net.0", "net.2"]
    assert cb.sparsity_stats()["sparsity"] == pytest.approx(sparsity, abs=4 / (16 * 32 + 32 * 32))
    for t in cb.targets:
        mask = t.mask
        if pattern == "2:4":
            assert bool((mask.reshape(-1, 4).sum(1) == 2).all())
        if pattern == "4x1":
            blocks = mask.reshape(mask.shape[0] // 4, 4, mask.shape[1])
            assert bool((blocks.all(1) | (~blocks).all(1)).all())
        if pattern == "1x4":
            blocks = mask.reshape(mask.shape[0], -1, 4)
            assert bool((blocks.all(2) | (~blocks).all(2)).all())


def test_masked_forward_equals_baked_weights_and_keys_unchanged():
    keys_before = list(TinyMLP().state_dict().keys())
    cb = SnipMomentumPruning(sparsity=0.8, pattern="4x1", end_step=6)
    model, _ = fit(cb, steps=8)
    assert list(model.state_dict().keys()) == keys_before
    x = torch.randn(5, 16)
    with torch.no_grad():
        masked = model(x)
        baked = TinyMLP()
        baked.load_state_dict(model.state_dict())
        for t in cb.targets:
            baked.get_submodule(t.name).weight.mul_(t.mask)
        assert torch.allclose(masked, baked(x), atol=1e-6)
        # and the raw weight is untouched: the mask acts in forward
        raw = TinyMLP()
        raw.load_state_dict(model.state_dict())
        assert not torch.allclose(raw(x), masked)


def test_pruned_weights_get_zero_gradient():
    cb = SparsePruning(sparsity=0.5, method="l1", start_step=0, end_step=0)
    model, _ = fit(cb, steps=2)
    x, y = next(iter(mlp_loader()))
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for t in cb.targets:
        assert bool((t.param.grad[~t.mask] == 0).all())


def test_events_count_optimizer_steps_under_accumulation():
    cb = SparsePruning(sparsity=0.5, method="snip_momentum", start_step=0, end_step=6, frequency=2)
    _, trainer = fit(cb, steps=8, accumulate_grad_batches=2, loader=mlp_loader(n=128))
    assert trainer.global_step == 8
    # events at optimizer steps 0 (deferred to 1: needs one scored step), 2, 4, 6; never per batch
    assert [h["step"] for h in cb.history] == [1, 2, 4, 6]
    assert cb.history[-1]["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_oneshot_l1_at_step_zero_and_cubic_schedule():
    cb = SparsePruning(sparsity=0.6, method="l1", schedule="cubic", start_step=0, end_step=4, frequency=1)
    fit(cb, steps=6)
    assert [h["step"] for h in cb.history] == [0, 1, 2, 3, 4]
    s = [h["sparsity"] for h in cb.history]
    assert s == sorted(s) and s[-1] == pytest.approx(0.6, abs=1e-3)
    # cubic starts fast: more than the linear share after the first of five events
    assert s[0] > 0.6 / 5


def test_groups_have_their_own_sparsity_and_are_logged(tmp_path):
    cb = SparsePruning(
        method="l1",
        end_step=3,
        groups={"first": {"modules": [r"^net\.0$"], "sparsity": 0.25}, "second": {"modules": [r"^net\.2$"], "sparsity": 0.75}},
    )
    logger = CSVLogger(tmp_path, name="run")
    fit(cb, steps=5, logger=logger)
    stats = cb.sparsity_stats()
    assert stats["sparsity/first"] == pytest.approx(0.25, abs=1e-3)
    assert stats["sparsity/second"] == pytest.approx(0.75, abs=1e-3)
    rows = list(csv.DictReader(open(logger.log_dir + "/metrics.csv")))
    logged = [float(r["SparsePruning/sparsity"]) for r in rows if r.get("SparsePruning/sparsity")]
    assert len(logged) == 4 and logged[-1] == pytest.approx(stats["sparsity"])


def test_conv_layers_and_local_scope():
    cb = SparsePruning(sparsity=0.5, pattern="2x1", scope="local", method="l1", end_step=2)
    model, _ = fit(cb, steps=3, model=TinyCNN(), loader=image_loader())
    assert sorted(pruned_layers(model)) == ["conv1", "conv2"]
    for t in cb.targets:
        assert (~t.mask).float().mean().item() == pytest.approx(0.5, abs=0.02)


def test_global_scope_respects_layer_cap():
    cb = SparsePruning(sparsity=0.9, method="l1", end_step=0, max_sparsity_per_layer=0.92)
    fit(cb, steps=1)
    for t in cb.targets:
        assert (~t.mask).float().mean().item() <= 0.92 + 1e-6


def test_resume_mid_schedule_equals_uninterrupted(tmp_path):
    class StopAt(pl.Callback):  # an interruption mid-fit (a shorter max_steps would be a schedule that cannot finish)
        def __init__(self, step):
            self.step = step

        def on_train_batch_end(self, trainer, *args):
            if self.step is not None and trainer.global_step >= self.step:
                trainer.should_stop = True

    def run(steps, ckpt=None, save=None, stop_at=None):
        pl.seed_everything(0)
        cb = SnipMomentumPruning(sparsity=0.75, pattern="4x1", start_step=1, end_step=8, frequency=1)
        model = TinyMLP()
        # one batch per epoch: a resumed run sees exactly the batches the uninterrupted one saw
        trainer = cpu_trainer(max_steps=steps, callbacks=[cb, StopAt(stop_at)])
        trainer.fit(model, mlp_loader(n=8, batch_size=8), ckpt_path=ckpt)
        if save:
            trainer.save_checkpoint(save)
        return model, cb

    full_model, full_cb = run(10)
    run(10, save=tmp_path / "mid.ckpt", stop_at=4)
    resumed_model, resumed_cb = run(10, ckpt=str(tmp_path / "mid.ckpt"))
    for a, b in zip(full_cb.targets, resumed_cb.targets):
        assert torch.equal(a.mask, b.mask), a.name
        assert torch.allclose(a.score.score, b.score.score)
    for (k, v), (k2, v2) in zip(full_model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.allclose(v, v2, atol=1e-6), k


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sparsity=1.0), r"SparsePruning: `sparsity`=1.0 must be in \[0, 1\)"),
        (dict(sparsity=-0.1), r"`sparsity`=-0.1 must be in \[0, 1\)"),
        (dict(start_step=10, end_step=5), r"`end_step`=5 is before `start_step`=10"),
        (dict(method="random"), r"`method`='random' is unknown"),
        (dict(schedule="step"), r"`schedule`='step' is unknown"),
        (dict(pattern="3y1"), r"`pattern`='3y1' is not understood"),
        (dict(pattern="4:2"), r"N=4 > M=2"),
        (dict(pattern="2:4", sparsity=0.75), r"more than pattern '2:4' can reach \(0.5\)"),
        (dict(frequency=0), r"`frequency`=0 must be >= 1"),
        (dict(scope="per-layer"), r"`scope`='per-layer'"),
    ],
)
def test_bad_arguments_raise_at_init(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparsePruning(**kwargs)


def setup_error(cb, model=None):
    trainer = cpu_trainer(max_steps=1, callbacks=cb if isinstance(cb, list) else [cb])
    model = model or TinyMLP()
    seen = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, *a):
            seen.append(1)

    trainer.callbacks.append(Spy())
    with pytest.raises(ValueError) as err:
        trainer.fit(model, mlp_loader())
    assert not seen, "the error must come before any training step"
    return str(err.value)


def test_regex_that_matches_nothing_names_argument_and_fix():
    msg = setup_error(SparsePruning(modules=[r"encoder\.layer"]))
    assert "`modules` regex 'encoder\\\\.layer' matches no Linear, Conv2d module of TinyMLP" in msg
    assert "Fix the regex" in msg and "net.0" in msg


def test_exclude_that_matches_nothing():
    msg = setup_error(SparsePruning(exclude=["decoder"]))
    assert "`exclude` regex 'decoder' matches no module" in msg


def test_pattern_that_does_not_divide_a_weight():
    msg = setup_error(SparsePruning(pattern="2:4"), model=TinyCNN())
    assert "module 'conv1'" in msg and "M=4 must divide the input dimension 27" in msg and "exclude" in msg


def test_two_sparsity_callbacks_on_one_weight():
    msg = setup_error([SparsePruning(sparsity=0.5), SnipMomentumPruning(sparsity=0.5, modules=[r"net\.2"])])
    assert "net.2.weight already has a 'sparse_mask' transform" in msg and "exclude" in msg


def test_module_in_two_groups():
    cb = SparsePruning(groups={"a": {"modules": ["net"]}, "b": {"modules": [r"net\.2"]}})
    assert "module 'net.2' is in groups 'a' and 'b'" in setup_error(cb)


def test_groups_with_unknown_key():
    with pytest.raises(ValueError, match=r"group 'a' has unknown keys \['dense_ratio'\]"):
        SparsePruning(groups={"a": {"modules": ["net"], "dense_ratio": 0.5}})
