"""Callback lifecycle (issue 11, items 1-3): evaluation from a checkpoint on a new Trainer, reuse on a new
model, a second fit, resume with changed arguments; one case under DeepSpeed ZeRO 2 (shared launch)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

import lightning_compress as lc
from lightning_compress.core import masking
from tests.lifecycle_models import LOADERS, MLP, Bert, ResNet, Stack, fresh
from tests.models import cpu_trainer

CALLBACKS = {
    "SparsePruning": (MLP, lambda **k: lc.SparsePruning(**{"sparsity": 0.5, **k})),
    "SnipMomentumPruning": (MLP, lambda **k: lc.SnipMomentumPruning(**{"sparsity": 0.5, **k})),
    "RowPruning": (Bert, lambda **k: lc.RowPruning(**{"sparsity": 0.5, **k})),
    "HeadPruning": (Bert, lambda **k: lc.HeadPruning(**{"sparsity": 0.5, **k})),
    "ChannelPruning": (ResNet, lambda **k: lc.ChannelPruning(**{"sparsity": 0.5, **k})),
    "WeightQuant": (MLP, lambda **k: lc.WeightQuant(**{"bits": 4, "start_bits": 8, "period": 2, **k})),
    "ActQuant": (MLP, lambda **k: lc.ActQuant(**{"bits": 4, "range": "static", **k})),
    "LayerReductionKD": (Stack, lambda **k: lc.LayerReductionKD(**{"keep_layers": 2, **k})),
}
PRUNERS = ["SparsePruning", "SnipMomentumPruning", "RowPruning", "HeadPruning", "ChannelPruning"]


def _state(cb) -> dict:
    """What decides the compressed function: masks, bits, static ranges, kept layers."""
    if isinstance(cb, lc.WeightQuant):
        return {"bits": cb.current_bits}
    if isinstance(cb, lc.ActQuant):
        return {"ranges": cb.ranges()}
    if isinstance(cb, lc.LayerReductionKD):
        return {"keep": cb.keep}
    return {"masks": cb.masks()}


def _same_state(a: dict, b: dict) -> bool:
    if "masks" in a:
        return a["masks"].keys() == b["masks"].keys() and all(torch.equal(a["masks"][k], b["masks"][k]) for k in a["masks"])
    return a == b


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """name -> (checkpoint, predictions / val loss / test loss right after training, callback state)."""
    out = {}
    d = tmp_path_factory.mktemp("lifecycle")
    for name, (model_cls, make) in CALLBACKS.items():
        pl.seed_everything(0)
        model, cb = fresh(model_cls), make()
        trainer = cpu_trainer(max_steps=5, callbacks=[cb])
        loader = LOADERS[model_cls]
        trainer.fit(model, loader())
        ckpt = d / f"{name}.ckpt"
        trainer.save_checkpoint(ckpt)
        ref = {
            "predict": torch.cat(trainer.predict(model, loader())),
            "validate": trainer.validate(model, loader(), verbose=False)[0]["loss"],
            "test": trainer.test(model, loader(), verbose=False)[0]["loss"],
        }
        out[name] = (ckpt, ref, _state(cb))
    return out


@pytest.mark.parametrize("name", list(CALLBACKS))
def test_evaluation_from_a_checkpoint_on_a_new_trainer_equals_evaluation_after_training(trained, name):
    model_cls, make = CALLBACKS[name]
    ckpt, ref, state = trained[name]
    loader = LOADERS[model_cls]
    for stage in ("validate", "test", "predict"):
        cb = make()
        trainer = cpu_trainer(callbacks=[cb])
        if stage == "predict":
            got = torch.cat(trainer.predict(fresh(model_cls), loader(), ckpt_path=ckpt))
            torch.testing.assert_close(got, ref["predict"], rtol=0, atol=1e-6)
        else:
            got = getattr(trainer, stage)(fresh(model_cls), loader(), ckpt_path=ckpt, verbose=False)[0]["loss"]
            assert got == pytest.approx(ref[stage], abs=1e-6), stage
        assert _same_state(_state(cb), state), (name, stage)  # the restore reached the masks / bits / ranges


def test_weight_quant_evaluation_from_a_checkpoint_uses_the_checkpoint_width(trained):
    assert trained["WeightQuant"][2]["bits"] == 4  # (the fixture's fit reached 4 bits: not the default 8)
    assert trained["ActQuant"][2]["ranges"]["net.0"] is not None


# ------------------------------------------------------------------------------------------ reuse
def _carries(module, owner: str) -> bool:
    params = masking.transformed_params(module)
    return any(t.owner == owner for p in params for t in masking.param_transforms(module, p)) or any(
        t.owner == owner for t in masking.input_transforms(module)
    )


@pytest.mark.parametrize("name", ["SparsePruning", "RowPruning", "ChannelPruning", "WeightQuant", "ActQuant"])
def test_reuse_on_a_new_model_re_targets_and_forgets_the_old_model(name):
    model_cls, make = CALLBACKS[name]
    loader = LOADERS[model_cls]
    cb = make(**({"sparsity": 0.8} if name in PRUNERS else {}))
    a = fresh(model_cls)
    cpu_trainer(max_steps=4, callbacks=[cb]).fit(a, loader())
    touched_a = list(cb.modules_touched.values())
    if name in PRUNERS:
        assert cb.sparsity_stats()["sparsity"] > 0.7 and cb.history and cb.pruner.resolved_end == 3
    b = fresh(model_cls)
    cpu_trainer(callbacks=[cb]).validate(b, loader(), verbose=False)
    assert cb.attached_model is b
    assert not any(_carries(m, cb.owner) for m in touched_a)  # off the old model
    assert all(any(m is mb for mb in b.modules()) for m in cb.modules_touched.values())
    assert getattr(cb, "clock", None) is None or cb.clock.seen == 0
    if name in PRUNERS:  # reports the new model: nothing pruned, no history, no resolved end
        assert cb.sparsity_stats()["sparsity"] == 0.0 and cb.history == []
        assert cb.pruner.resolved_end is None and not cb.pruner.schedule_resolved
        assert all(bool(m.all()) for m in cb.masks().values())
        cpu_trainer(max_steps=6, callbacks=[cb]).fit(b, loader())
        assert cb.pruner.resolved_end == 5  # resolved against the new model's fit
        assert cb.sparsity_stats()["sparsity"] > 0.7 and [h["step"] for h in cb.history][0] == 0
    elif name == "WeightQuant":
        assert cb.current_bits == 8  # the schedule starts again
    else:
        assert all(r is None for r in cb.ranges().values())


# ------------------------------------------------------------------------------------------ fit twice
class _Watch(pl.Callback):
    def __init__(self, cb) -> None:
        self.cb, self.seen = cb, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        cb = self.cb
        self.seen.append(cb.current_bits if isinstance(cb, lc.WeightQuant) else cb.sparsity_stats()["sparsity"])


class _StopAt(pl.Callback):
    """Stops a fit once ``step`` optimizer steps are done, once (an interruption: a fit whose max_steps
    ended before ``end_step`` would be a schedule that cannot finish, an error since issue 11)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.step is not None and trainer.global_step >= self.step:
            trainer.should_stop, self.step = True, None


@pytest.mark.parametrize("name", ["SparsePruning", "SnipMomentumPruning", "RowPruning", "ChannelPruning"])
def test_a_second_longer_fit_keeps_a_finished_schedule(name):
    model_cls, make = CALLBACKS[name]
    loader = LOADERS[model_cls]
    model, cb = fresh(model_cls), make(sparsity=0.8)
    cpu_trainer(max_steps=4, callbacks=[cb]).fit(model, loader())
    reached, masks, events = cb.sparsity_stats()["sparsity"], cb.masks(), len(cb.history)
    assert reached > 0.7
    watch = _Watch(cb)
    cpu_trainer(max_steps=10, callbacks=[cb, watch]).fit(model, loader())  # before: 0.8 -> 0.55 at the first events
    assert min(watch.seen) == pytest.approx(reached) and len(watch.seen) == 10
    assert cb.pruner.resolved_end == 3 and len(cb.history) == events  # finished, stays finished
    assert all(torch.equal(masks[k], v) for k, v in cb.masks().items())


def test_a_second_fit_continues_an_unfinished_schedule_and_never_unprunes():
    model = fresh(MLP)
    cb = lc.SparsePruning(sparsity=0.8, end_step=7, schedule="linear")
    cpu_trainer(max_steps=8, callbacks=[cb, _StopAt(4)]).fit(model, LOADERS[MLP]())
    first = cb.sparsity_stats()["sparsity"]
    assert [h["step"] for h in cb.history] == [0, 1, 2, 3] and 0.3 < first < 0.8
    watch = _Watch(cb)
    cpu_trainer(max_steps=6, callbacks=[cb, watch]).fit(model, LOADERS[MLP]())  # a new Trainer: global_step 0 again
    assert [h["step"] for h in cb.history] == [0, 1, 2, 3, 4, 5, 6, 7]  # steps 4.. go on, not 0.. again
    assert watch.seen == sorted(watch.seen) and watch.seen[0] >= first
    assert cb.sparsity_stats()["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert cb.clock.offset == 4 and cb.clock.seen == 10


def test_a_second_fit_of_the_same_trainer_goes_on_from_its_global_step():
    model, cb = fresh(MLP), lc.SparsePruning(sparsity=0.8, end_step=7, schedule="linear")
    trainer = cpu_trainer(max_steps=8, callbacks=[cb, _StopAt(4)])
    trainer.fit(model, LOADERS[MLP]())
    trainer.fit_loop.epoch_loop.max_steps = 8
    trainer.fit(model, LOADERS[MLP]())
    assert cb.clock.offset == 0 and [h["step"] for h in cb.history] == list(range(8))


def test_weight_quant_second_fit_never_goes_back_to_a_wider_width():
    model, cb = fresh(MLP), lc.WeightQuant(bits=4, start_bits=8, period=2)
    cpu_trainer(max_steps=4, callbacks=[cb]).fit(model, LOADERS[MLP]())
    assert cb.current_bits == 4
    watch = _Watch(cb)
    cpu_trainer(max_steps=3, callbacks=[cb, watch]).fit(model, LOADERS[MLP]())  # before: 8 bits again at step 0-1
    assert watch.seen == [4, 4, 4] and cb.quantizer.steps_done == 6


def test_resuming_a_checkpoint_of_a_second_fit_keeps_its_offset(tmp_path):
    model, cb = fresh(MLP), lc.SparsePruning(sparsity=0.8, end_step=9, schedule="linear")
    cpu_trainer(max_steps=10, callbacks=[cb, _StopAt(4)]).fit(model, LOADERS[MLP]())
    t2 = cpu_trainer(max_steps=6, callbacks=[cb, _StopAt(3)])
    t2.fit(model, LOADERS[MLP]())
    t2.save_checkpoint(tmp_path / "second.ckpt")
    saved, history = cb.masks(), [h["step"] for h in cb.history]
    cb2 = lc.SparsePruning(sparsity=0.8, end_step=9, schedule="linear")
    watch = _Watch(cb2)
    cpu_trainer(max_steps=6, callbacks=[cb2, watch, _StopAt(5)]).fit(fresh(MLP), LOADERS[MLP](), ckpt_path=tmp_path / "second.ckpt")
    assert history == list(range(7)) and cb2.clock.offset == 4
    assert [h["step"] for h in cb2.history] == [7, 8]  # global steps 3, 4 of the resumed fit = steps 7, 8
    assert watch.seen == sorted(watch.seen) and watch.seen[0] >= cb.sparsity_stats()["sparsity"] - 1e-9
    assert all(torch.equal(saved[k] | ~m, torch.ones_like(m)) for k, m in cb2.masks().items())  # pruned stays pruned


def test_end_step_none_is_resolved_against_the_first_fit_and_restored_on_resume(tmp_path):
    model, cb = fresh(MLP), lc.SparsePruning(sparsity=0.8)
    trainer = cpu_trainer(max_steps=3, callbacks=[cb])
    trainer.fit(model, LOADERS[MLP]())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    assert cb.pruner.resolved_end == 2
    cb2 = lc.SparsePruning(sparsity=0.8)
    cpu_trainer(max_steps=8, callbacks=[cb2]).fit(fresh(MLP), LOADERS[MLP](), ckpt_path=tmp_path / "a.ckpt")
    assert cb2.pruner.resolved_end == 2 and cb2.history == []  # finished before the resume: nothing re-runs
    assert cb2.sparsity_stats()["sparsity"] == pytest.approx(cb.sparsity_stats()["sparsity"])


def test_layer_reduction_kd_second_fit_after_evaluation_needs_a_teacher():
    model, cb = fresh(Stack), lc.LayerReductionKD(keep_layers=2)
    cpu_trainer(callbacks=[cb]).validate(model, LOADERS[Stack](), verbose=False)
    assert len(model.model.blocks) == 2 and cb.teacher is None
    with pytest.raises(ValueError, match="reduced by validate/test/predict before this fit.*Pass `teacher=`"):
        cpu_trainer(max_steps=1, callbacks=[cb]).fit(model, LOADERS[Stack]())


# ------------------------------------------------------------------------------------------ changed arguments
CHANGES = [
    ("SparsePruning", {"sparsity": 0.3}, "sparsity", "0.5", "0.3"),
    ("SparsePruning", {"pattern": "4x1"}, "pattern", "'unstructured'", "'4x1'"),
    ("SparsePruning", {"method": "topk"}, "method", "'l1'", "'topk'"),
    ("SparsePruning", {"modules": [r"net\.0"]}, "modules", "None", r"\['net\\\\.0'\]"),
    ("SparsePruning", {"schedule": "cos"}, "schedule", "'exp'", "'cos'"),
    ("SparsePruning", {"end_step": 2}, "end_step", "None", "2"),
    ("SnipMomentumPruning", {"pattern": "2:4"}, "pattern", "'4x1'", "'2:4'"),
    ("RowPruning", {"sparsity": 0.25}, "sparsity", "0.5", "0.25"),
    ("RowPruning", {"method": "topk"}, "method", "'l1'", "'topk'"),
    ("HeadPruning", {"sparsity": 0.25}, "sparsity", "0.5", "0.25"),
    ("ChannelPruning", {"scope": "global"}, "scope", "'local'", "'global'"),
    ("WeightQuant", {"granularity": "tensor"}, "granularity", "'channel'", "'tensor'"),
    ("WeightQuant", {"modules": [r"net\.0"]}, "modules", "None", r"\['net\\\\.0'\]"),
    ("WeightQuant", {"symmetric": False}, "symmetric", "True", "False"),
    ("ActQuant", {"bits": 8}, "bits", "4", "8"),
    ("ActQuant", {"range": "dynamic"}, "range", "'static'", "'dynamic'"),
    ("ActQuant", {"modules": [r"net\.2"]}, "modules", "None", r"\['net\\\\.2'\]"),
]


@pytest.mark.parametrize(("name", "change", "arg", "old", "new"), CHANGES, ids=[f"{c[0]}-{c[2]}" for c in CHANGES])
def test_resume_with_a_changed_argument_names_it(trained, name, change, arg, old, new):
    model_cls, make = CALLBACKS[name]
    ckpt = trained[name][0]
    with pytest.raises(ValueError, match=rf"{name}: .*`{arg}` = {old} in the checkpoint, {new} now"):
        cpu_trainer(max_steps=6, callbacks=[make(**change)]).fit(fresh(model_cls), LOADERS[model_cls](), ckpt_path=ckpt)


def test_groups_change_on_resume_and_on_evaluation_is_named(trained):
    ckpt = trained["SparsePruning"][0]
    cb = lc.SparsePruning(groups={"g": {"modules": [r"net\.0"], "sparsity": 0.5}})
    with pytest.raises(ValueError, match=r"`groups` = None in the checkpoint, \{'g'"):
        cpu_trainer(callbacks=[cb]).validate(fresh(MLP), LOADERS[MLP](), ckpt_path=ckpt, verbose=False)


def test_weight_quant_bits_change_on_resume_is_refused(trained):
    with pytest.raises(ValueError, match="WeightQuant: .*(`bits` = 4 in the checkpoint, 2 now|levels)"):
        cpu_trainer(max_steps=6, callbacks=[lc.WeightQuant(bits=2, start_bits=8, period=2)]).fit(
            fresh(MLP), LOADERS[MLP](), ckpt_path=trained["WeightQuant"][0]
        )


def test_act_quant_momentum_may_change_on_resume(trained):
    cb = lc.ActQuant(bits=4, range="static", momentum=0.5)  # another state_key, same ranges
    cpu_trainer(callbacks=[cb]).validate(fresh(MLP), LOADERS[MLP](), ckpt_path=trained["ActQuant"][0], verbose=False)
    assert cb.ranges() == trained["ActQuant"][2]["ranges"]


def test_layer_reduction_kd_changed_keep_layers_is_named(trained):
    cb = lc.LayerReductionKD(keep_layers=[0, 1])
    with pytest.raises(ValueError, match=r"kept layers \[1, 3\] but this run kept \[0, 1\]"):
        cpu_trainer(callbacks=[cb]).validate(fresh(Stack), LOADERS[Stack](), ckpt_path=trained["LayerReductionKD"][0])


def test_two_instances_resume_each_its_own_state_and_a_changed_one_is_named(tmp_path):
    def pair(s1=0.5):
        return [lc.SparsePruning(sparsity=s1, modules=[r"net\.0"]), lc.SparsePruning(sparsity=0.25, modules=[r"net\.2"])]

    cbs = pair()
    trainer = cpu_trainer(max_steps=3, callbacks=cbs)
    trainer.fit(fresh(MLP), LOADERS[MLP]())
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    again = pair()
    cpu_trainer(callbacks=again).validate(fresh(MLP), LOADERS[MLP](), ckpt_path=tmp_path / "two.ckpt", verbose=False)
    for old, new in zip(cbs, again):
        assert _same_state(_state(old), _state(new))
    with pytest.raises(ValueError, match=r"`sparsity` = 0.5 in the checkpoint, 0.4 now"):
        cpu_trainer(callbacks=pair(0.4)).validate(fresh(MLP), LOADERS[MLP](), ckpt_path=tmp_path / "two.ckpt")
    # a callback the checkpoint has no state for starts fresh (nothing to be mistaken for)
    extra = lc.WeightQuant(bits=8)
    cpu_trainer(callbacks=[*pair(), extra]).validate(fresh(MLP), LOADERS[MLP](), ckpt_path=tmp_path / "two.ckpt", verbose=False)
    assert extra.current_bits == 8


# ------------------------------------------------------------------------------------------ DeepSpeed
def test_evaluation_from_a_deepspeed_checkpoint_restores_the_masks(dist_results):
    for r in dist_results("lifecycle_eval_from_ckpt_zero2"):
        # the masks cannot come from checkpoint["state_dict"] (dropped) nor the engine's module state
        assert r["has_state_dict"] is False and r["masks_in_module"] is False and r["callback_masks"] is True
        assert r["sparsity"] == pytest.approx(0.5, abs=0.02)
        assert all(torch.equal(r["masks"][k], r["masks_restored"][k]) for k in r["masks"])
        assert r["loss_restored"] == pytest.approx(r["loss_after_fit"], abs=1e-6)
        assert abs(r["loss_dense"] - r["loss_after_fit"]) > 1e-4  # (so the comparison can tell dense from masked)
