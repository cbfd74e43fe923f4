"""Strict arguments (issue 11, item 4/7) and step arguments as fractions of the fit (issue 18, item 2).

* named probes: every bad input listed in the issue, per callback / driver / function: a TypeError (type)
  or ValueError (value) naming the owner and the argument, raised in ``__init__``, ``setup`` or
  ``on_train_start`` (before any batch);
* a hypothesis fuzz of every callback's constructor (a few hundred draws): a working callback (attached
  to a tiny model, schedule resolved, a forward runs) or a TypeError / ValueError naming an argument;
* fractions: resolution rules, the type deciding (``1`` vs ``1.0``), drivers refusing floats.
"""

from __future__ import annotations

import math
import re

import lightning.pytorch as pl
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import lightning_compress as lc
from lightning_compress.core import args as A
from lightning_compress.core.act_quantizer import ActQuantizer
from lightning_compress.core.pruner import Pruner
from lightning_compress.core.weight_quantizer import WeightQuantizer
from tests.models import TinyMLP, cpu_trainer, image_loader, mlp_loader
from tests.structured_models import TinyMHA, TinyResNet

PRUNERS = ["SparsePruning", "SnipMomentumPruning", "RowPruning", "ChannelPruning", "HeadPruning"]
ALL = [*PRUNERS, "WeightQuant", "ActQuant", "LayerReductionKD", "RedundancyClean"]
DRIVERS = {"Pruner": Pruner, "WeightQuantizer": WeightQuantizer, "ActQuantizer": ActQuantizer}


def make(name: str, **kw):  # noqa: ANN003,ANN201
    if name == "RedundancyClean":
        kw.setdefault("output_dir", "unused_out")
    if name == "LayerReductionKD":
        kw.setdefault("keep_layers", 1)
    return getattr(lc, name)(**kw)


def raises(error: type[Exception], owner: str, argument: str, *extra: str):  # noqa: ANN201
    """pytest.raises matching ``<owner>: `<argument>...`` (and every ``extra`` fragment)."""
    pattern = re.escape(owner) + r": .*`" + re.escape(argument)
    for e in extra:
        pattern += ".*" + re.escape(e)
    return pytest.raises(error, match=pattern)


def model_for(name: str) -> pl.LightningModule:
    return {"ChannelPruning": TinyResNet, "HeadPruning": TinyMHA}.get(name, TinyMLP)()


def loader_for(name: str):  # noqa: ANN201
    if name == "ChannelPruning":
        return image_loader(n=32, batch_size=8)
    if name == "HeadPruning":
        g = torch.Generator().manual_seed(0)
        ds = torch.utils.data.TensorDataset(torch.randn(32, 5, 8, generator=g), torch.randint(0, 2, (32,), generator=g))
        return torch.utils.data.DataLoader(ds, batch_size=8)
    return mlp_loader(n=32, batch_size=8)


def fit(callbacks, name: str = "SparsePruning", steps: int = 4):  # noqa: ANN001,ANN201
    trainer = cpu_trainer(max_steps=steps, callbacks=list(callbacks))
    model = model_for(name)
    trainer.fit(model, loader_for(name))
    return trainer, model


class NoBatch(pl.Callback):
    """Fails the test when a training batch starts: the error must come before."""

    def on_train_batch_start(self, *a, **k):  # noqa: ANN002,ANN003
        raise AssertionError("training started: the argument error came late")


# ---------------------------------------------------------------------------------------- the bullets
@pytest.mark.parametrize("name", PRUNERS)
def test_sparsity_string_is_a_type_error(name):
    with raises(TypeError, name, "sparsity", "'0.5'", "is a str, not a number"):
        make(name, sparsity="0.5")


@pytest.mark.parametrize("name", [*PRUNERS, "WeightQuant"])
def test_start_step_1_7_is_a_type_error_not_step_1(name):
    with raises(TypeError, name, "start_step", "1.7", "fraction"):
        make(name, start_step=1.7)


@pytest.mark.parametrize("name", PRUNERS)
def test_frequency_true_is_a_type_error(name):
    with raises(TypeError, name, "frequency", "True", "bool"):
        make(name, frequency=True)


@pytest.mark.parametrize("name", ["WeightQuant", "ActQuant"])
@pytest.mark.parametrize("value", ["no", 0, 1, None])
def test_symmetric_must_be_a_bool(name, value):
    with raises(TypeError, name, "symmetric", "must be a bool"):
        make(name, symmetric=value)


def test_other_booleans_must_be_bools():
    with raises(TypeError, "RedundancyClean", "save", "must be a bool"):
        make("RedundancyClean", save="no")
    with raises(TypeError, "RedundancyClean", "fold_batchnorm"):
        make("RedundancyClean", fold_batchnorm=1)
    with raises(TypeError, "quantize", "symmetric"):
        lc.quantize(TinyMLP().net, symmetric="no")
    with raises(TypeError, "quantize", "act_symmetric"):
        lc.quantize(TinyMLP().net, act_symmetric="yes")
    with raises(TypeError, "quantize", "inplace"):
        lc.quantize(TinyMLP().net, inplace=0)
    with raises(TypeError, "zeroquant", "inplace"):
        lc.zeroquant(TinyMLP().net, inplace=1)


@pytest.mark.parametrize("name", [*PRUNERS, "WeightQuant", "ActQuant"])
def test_empty_modules_is_an_error_everywhere(name):
    with raises(ValueError, name, "modules", "is empty"):
        make(name, modules=[])


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_empty_modules_is_an_error_in_the_drivers(driver):
    with raises(ValueError, driver, "modules", "is empty"):
        DRIVERS[driver](TinyMLP().net, modules=[])


def test_empty_modules_is_an_error_in_quantize_and_zeroquant():
    with raises(ValueError, "quantize", "modules", "is empty"):
        lc.quantize(TinyMLP().net, modules=[])
    with raises(ValueError, "zeroquant", "modules", "is empty"):
        lc.zeroquant(TinyMLP().net, modules=[])
    with raises(ValueError, "zeroquant", "int4_modules", "is empty"):
        lc.zeroquant(TinyMLP().net, group_size=16, int4_modules=[])
    with raises(ValueError, "SparsePruning", "groups['a'].modules", "is empty"):
        make("SparsePruning", groups={"a": {"modules": []}})


@pytest.mark.parametrize("name", [*PRUNERS, "WeightQuant", "ActQuant"])
def test_exclude_everything_is_an_error_at_setup(name):
    cb = make(name, exclude=[".*"])
    with raises(ValueError, name, "exclude", "['.*']"):
        fit([cb, NoBatch()], name)


def test_exclude_everything_is_an_error_in_the_drivers():
    for driver in sorted(DRIVERS):
        with raises(ValueError, driver, "exclude"):
            DRIVERS[driver](TinyMLP().net, exclude=[".*"])
    with raises(ValueError, "quantize", "exclude"):
        lc.quantize(TinyMLP().net, exclude=[".*"])


@pytest.mark.parametrize("pattern", ["0:4", "0:1"])
def test_nm_pattern_keeping_nothing_is_an_error(pattern):
    with raises(ValueError, "SparsePruning", "pattern", "keeps no weight"):
        make("SparsePruning", pattern=pattern)
    with raises(ValueError, "Pruner", "pattern"):
        Pruner(None, pattern=pattern)


@pytest.mark.parametrize("name", PRUNERS)
def test_end_step_beyond_the_fit_is_an_error_at_train_start(name):
    cb = make(name, sparsity=0.5, end_step=1000)
    with raises(ValueError, name, "end_step", "1000", "last optimizer step (3: 4 optimizer steps)"):
        fit([cb, NoBatch()], name, steps=4)


def test_start_step_beyond_the_fit_is_an_error_at_train_start():
    with raises(ValueError, "SparsePruning", "start_step", "last optimizer step (3"):
        fit([make("SparsePruning", start_step=10), NoBatch()])
    with raises(ValueError, "WeightQuant", "start_step", "last optimizer step is 3"):
        fit([make("WeightQuant", start_step=10), NoBatch()])
    with raises(ValueError, "WeightQuant", "period", "last optimizer step is 3"):
        fit([make("WeightQuant", bits=4, start_bits=8, period=5), NoBatch()])


def test_period_without_start_bits_is_an_error():
    with raises(ValueError, "WeightQuant", "period", "has no effect without a bits schedule"):
        make("WeightQuant", bits=4, period=10)
    with raises(ValueError, "WeightQuant", "period", "has no effect"):
        make("WeightQuant", bits=8, start_bits=8, period=10)
    with raises(ValueError, "WeightQuantizer", "period", "must be a positive number of optimizer steps when"):
        WeightQuantizer(None, bits=4, start_bits=8)


def test_formats_empty_or_unknown_is_an_error():
    with raises(ValueError, "RedundancyClean", "formats", "is empty"):
        make("RedundancyClean", formats=[])
    with raises(ValueError, "RedundancyClean", "formats[0]", "'pdf'"):
        make("RedundancyClean", formats=["pdf"])
    with raises(TypeError, "RedundancyClean", "formats", "not a list"):
        make("RedundancyClean", formats=3)


def test_two_redundancy_clean_on_one_folder_is_an_error_at_setup(tmp_path):
    a = lc.RedundancyClean(tmp_path / "slim", formats=["safetensors"], latency_runs=0)
    b = lc.RedundancyClean(str(tmp_path / "x" / ".." / "slim"), formats=["safetensors"], latency_runs=0)
    with raises(ValueError, "RedundancyClean", "output_dir", "two RedundancyClean callbacks write this folder"):
        fit([lc.SparsePruning(), a, b, NoBatch()])
    assert not (tmp_path / "slim").exists()


@pytest.mark.parametrize("name", PRUNERS)
def test_bad_regex_is_a_value_error_naming_the_argument(name):
    for arg in ("modules", "exclude"):
        with raises(ValueError, name, f"{arg}[0]", "not a valid regular expression"):
            make(name, **{arg: ["("]})
    with raises(ValueError, name, "groups['g'].modules[0]", "not a valid regular expression"):
        make(name, groups={"g": {"modules": ["("]}})


def test_bad_regex_elsewhere():
    with raises(ValueError, "RowPruning", "related_modules", "not a valid regular expression"):
        lc.RowPruning(related_modules={"(": ["net.2"]})
    with raises(ValueError, "RowPruning", "related_modules['net.0'][0]", "not a valid"):
        lc.RowPruning(related_modules={"net.0": ["("]})
    with raises(ValueError, "zeroquant", "int4_modules[0]", "not a valid"):
        lc.zeroquant(TinyMLP().net, group_size=16, int4_modules=["("])
    for name in ("WeightQuant", "ActQuant"):
        with raises(ValueError, name, "exclude[0]", "not a valid"):
            make(name, exclude=["("])


def test_string_numbers_are_type_errors_not_conversions():
    with raises(TypeError, "ActQuant", "momentum", "is a str"):
        make("ActQuant", momentum="0.9")
    with raises(TypeError, "WeightQuant", "bits", "is a str"):
        make("WeightQuant", bits="8")
    with raises(TypeError, "WeightQuant", "bits", "is a float"):
        make("WeightQuant", bits=8.0)
    with raises(TypeError, "LayerReductionKD", "temperature", "is a bool"):
        make("LayerReductionKD", temperature=True)
    with raises(TypeError, "LayerReductionKD", "weights['logits']", "is a str"):
        make("LayerReductionKD", weights={"logits": "1"})
    with raises(TypeError, "RedundancyClean", "latency_runs", "is a float"):
        make("RedundancyClean", latency_runs=2.5)
    with raises(TypeError, "SparsePruning", "max_sparsity_per_layer", "is a str"):
        make("SparsePruning", max_sparsity_per_layer="0.9")
    with raises(TypeError, "quantize", "num_batches", "is a bool"):
        lc.quantize(TinyMLP().net, num_batches=True)


def test_unrelated_crashes_are_now_named():
    with raises(TypeError, "SparsePruning", "modules", "not a list of regexes"):
        make("SparsePruning", modules=5)
    with raises(TypeError, "SparsePruning", "groups", "not a mapping"):
        make("SparsePruning", groups="a")
    with raises(TypeError, "SparsePruning", "start_step", "NoneType"):
        make("SparsePruning", start_step=None)
    with raises(TypeError, "LayerReductionKD", "layers", "not a string"):
        make("LayerReductionKD", layers=3)
    with raises(TypeError, "RedundancyClean", "output_dir", "not a path"):
        lc.RedundancyClean(None)
    with raises(TypeError, "RedundancyClean", "example_input", "not a forward input"):
        lc.RedundancyClean("out", example_input=True)
    with raises(ValueError, "zeroquant", "group_size"):
        lc.zeroquant(TinyMLP().net, group_size=0)


@pytest.mark.parametrize("driver", ["Pruner", "WeightQuantizer"])
def test_drivers_take_integer_steps_only(driver):
    with raises(TypeError, driver, "start_step", "counts optimizer steps as integers", "resolve_step"):
        DRIVERS[driver](None, start_step=0.5)
    with raises(TypeError, driver, "start_step", "bool"):
        DRIVERS[driver](None, start_step=True)


# ---------------------------------------------------------------------------------------- fractions of the fit
def test_resolve_step_rules():
    assert A.resolve_step(0.6, 10) == 6
    assert A.resolve_step(1.0, 10) == 9  # a point in time: the last step at which a batch still starts
    assert A.resolve_step(1, 10) == 1  # an int is optimizer steps, whatever the fit
    assert A.resolve_step(0.01, 10, duration=True) == 1  # a length is at least one step
    assert A.resolve_step(0.5, 3) == 1 and A.resolve_step(0.5, 3, duration=True) == 1
    assert A.check_step(1.0, "end_step", "X") == 1.0 and A.check_step(1, "end_step", "X") == 1
    for bad in (0.0, -0.5, 1.5, math.nan, math.inf):
        with pytest.raises(TypeError, match=r"X: `end_step`=.* float outside \(0, 1\]"):
            A.check_step(bad, "end_step", "X")


def test_fractional_schedule_reaches_its_target_at_any_budget():
    for steps in (3, 7):
        cb = lc.SparsePruning(sparsity=0.5, end_step=0.6, frequency=0.2)
        assert cb.end_step == 0.6 and cb.frequency == 0.2  # as given until the fit resolves them
        fit([cb], steps=steps)
        assert cb.end_step == math.floor(0.6 * steps) and cb.frequency == max(1, math.floor(0.2 * steps))
        assert abs(cb.sparsity_stats()["sparsity"] - 0.5) < 0.02, (steps, cb.sparsity_stats())


def test_the_type_decides_one_versus_one_point_zero():
    step_one, whole_fit = lc.SparsePruning(sparsity=0.5, end_step=1), lc.SparsePruning(sparsity=0.5, end_step=1.0)
    fit([step_one], steps=6)
    fit([whole_fit], steps=6)
    assert step_one.end_step == 1 and whole_fit.end_step == 5
    assert [h["step"] for h in whole_fit.history][-1] == 5


def test_end_step_none_equals_one_point_zero():
    a, b = lc.SparsePruning(sparsity=0.5, end_step=None), lc.SparsePruning(sparsity=0.5, end_step=1.0)
    fit([a], steps=5)
    fit([b], steps=5)
    assert a.end_step is None and b.end_step == 4 == a.pruner.resolved_end == b.pruner.resolved_end
    assert a.history == b.history


def test_weight_quant_fractional_schedule():
    cb = lc.WeightQuant(bits=4, start_bits=8, period=0.5, start_step=0.25)
    assert (cb.start_step, cb.period) == (0.25, 0.5)
    seen = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, *a):  # noqa: ANN001,ANN002
            seen.append(cb.current_bits)

    fit([cb, Spy()], steps=8)
    assert (cb.start_step, cb.period) == (2, 4)
    assert seen == [None, None, 8, 8, 8, 8, 4, 4]
    assert cb.state_dict()["period"] == 4


def test_weight_quant_fractions_restore_from_a_checkpoint_state():
    cb = lc.WeightQuant(bits=4, start_bits=8, period=0.5)
    cb.load_state_dict({"step": 5, "bits": 4, "levels": [8, 4], "start_step": 0, "period": 2})
    assert (cb.start_step, cb.period) == (0, 2)
    model = TinyMLP()
    cb.attach(model)
    assert cb.current_bits == 4


def test_weight_quant_unresolved_fractions_hold_full_precision_outside_fit():
    cb = lc.WeightQuant(bits=8, start_step=0.5)
    model = TinyMLP()
    cb.attach(model)
    assert all(not q.enabled for q in cb._quantizers.values())


def test_fractions_need_a_known_number_of_steps():
    cb = lc.SparsePruning(end_step=0.5)
    with raises(ValueError, "SparsePruning", "end_step", "need the number of optimizer steps of this fit, which is unknown"):
        cb.resolve_schedule(None)
    with raises(ValueError, "WeightQuant", "start_step", "unknown"):
        lc.WeightQuant(start_step=0.5).resolve_schedule(None)
    cb = lc.SparsePruning(start_step=0, end_step=3)  # integers: fine without knowing the fit
    assert cb.resolve_schedule(None) == 3


def test_fraction_order_is_checked_early():
    with raises(ValueError, "SparsePruning", "end_step", "before `start_step`"):
        lc.SparsePruning(start_step=0.6, end_step=0.3)


def test_deepspeed_configs_stay_absolute():
    cbs = lc.from_deepspeed_config({"compression_training": {"sparse_pruning": {
        "shared_parameters": {"enabled": True, "method": "l1", "schedule_offset": 2, "schedule_offset_end": 6,
                              "schedule_offset_stride": 2, "dense_ratio": 0.5},
        "different_groups": {"g": {"params": {"dense_ratio": 0.5}, "modules": ["net"]}},
    }}})
    (cb,) = cbs  # the importer maps DeepSpeed's semantics onto integer optimizer steps, never fractions
    assert cb.start_step == 2 and all(isinstance(v, int) for v in cb.step_args.values() if v is not None)


# ---------------------------------------------------------------------------------------- fuzz
ARGS = {
    "SparsePruning": ["sparsity", "method", "pattern", "schedule", "start_step", "end_step", "frequency", "scope",
                      "max_sparsity_per_layer", "modules", "exclude", "groups"],
    "SnipMomentumPruning": ["sparsity", "pattern", "schedule", "start_step", "end_step", "frequency", "scope",
                            "max_sparsity_per_layer", "modules", "exclude", "groups"],
    "RowPruning": ["sparsity", "method", "schedule", "start_step", "end_step", "frequency", "scope",
                   "max_sparsity_per_layer", "modules", "exclude", "groups", "related_modules", "related_pairing"],
    "ChannelPruning": ["sparsity", "method", "schedule", "start_step", "end_step", "frequency", "scope",
                       "max_sparsity_per_layer", "modules", "exclude", "groups", "linear", "example_input"],
    "HeadPruning": ["sparsity", "method", "schedule", "start_step", "end_step", "frequency", "scope",
                    "max_sparsity_per_layer", "modules", "exclude", "groups"],
    "WeightQuant": ["bits", "start_bits", "period", "granularity", "group_size", "symmetric", "modules", "exclude",
                    "start_step", "groups", "scheme"],
    "ActQuant": ["bits", "range", "symmetric", "modules", "exclude", "momentum", "start_step"],
    "LayerReductionKD": ["teacher", "keep_layers", "layers", "copy_modules", "temperature", "weights", "teacher_layers"],
    "RedundancyClean": ["output_dir", "formats", "example_input", "latency_runs", "save", "fold_batchnorm"],
}
_names = st.sampled_from(["net", "net.0", "net.2", "conv", "attn", "layer", ".*", "(", "", "fc"])
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 2000), st.floats(-2.0, 3.0),
    st.sampled_from([0.0, 0.5, 0.99, 1.0, 2.0, math.nan]),
    st.sampled_from(["", "0.5", "8", "l1", "topk", "exp", "cos", "local", "global", "2:4", "0:4", "4x1", "unstructured",
                     "group", "channel", "tensor", "static", "dynamic", "safetensors", "onnx", "(", "no"]),
    st.sampled_from([1, 2, 3, 4, 8, 16]),
)
_values = st.one_of(
    _scalars, st.lists(_names, max_size=3), st.lists(_scalars, max_size=2),
    st.dictionaries(st.sampled_from(["g", "a"]), st.dictionaries(st.sampled_from(["modules", "sparsity", "x"]), _scalars, max_size=2), max_size=2),
    st.dictionaries(st.sampled_from(["logits", "hidden", "nope"]), _scalars, max_size=2),
)


#: plausible values per argument, so that about half of the draws are meant to work
PLAUSIBLE = {
    "sparsity": [0.0, 0.3, 0.5, 0.9, None], "method": ["l1", "topk", "snip_momentum"], "pattern": ["unstructured", "4x1", "2:4"],
    "schedule": ["exp", "cos", "linear", "cubic"], "start_step": [0, 1, 0.25], "end_step": [None, 3, 0.5, 1.0],
    "frequency": [1, 2, 0.25], "scope": ["global", "local"], "max_sparsity_per_layer": [0.5, 0.98, 1.0],
    "modules": [None, ["net"], ["0"], ["attn"], ["layer"], ["conv"]], "exclude": [None, [], ["net.2"], ["fc"]],
    "groups": [None, {"g": {"sparsity": 0.5}}], "related_modules": [None], "related_pairing": ["all", "index"],
    "scheme": ["affine", "deepspeed"], "teacher_layers": [None, [0]], "bits": [8, 4, 2, 1],
    "start_bits": [None, 8], "period": [None, 1, 0.25], "granularity": ["tensor", "channel"], "group_size": [None],
    "symmetric": [True, False], "range": ["dynamic", "static"], "momentum": [0.0, 0.9], "teacher": [None],
    "keep_layers": [1, 2, [0, 1]], "layers": [None, "layers"], "copy_modules": [None], "temperature": [1.0, 2],
    "weights": [None, {"logits": 1.0, "hidden": 0.5}], "output_dir": ["out_dir"], "formats": [["safetensors"], ("onnx",)],
    "example_input": [None, torch.zeros(1, 16)], "latency_runs": [0, 3], "save": [True, False], "fold_batchnorm": [True, False],
    "linear": [True, False],
}


def _names_an_argument(err: BaseException, name: str) -> bool:
    msg = str(err)
    return msg.startswith(f"{name}: ") and any(f"`{a}" in msg for a in [*ARGS[name], "modules", "exclude"])


def _check_working(cb, name: str) -> None:  # noqa: ANN001
    """An accepted callback works: it attaches to a tiny model, resolves its schedule, and a forward runs."""
    if name in ("RedundancyClean", "LayerReductionKD"):
        return  # nothing to attach without a Trainer (covered by the named tests and test_examples)
    model = model_for(name)
    x = next(iter(loader_for(name)))[0]
    try:
        cb.attach(model)
        if hasattr(cb, "resolve_schedule"):
            cb.resolve_schedule(8)
    except (TypeError, ValueError) as err:  # a setup-time refusal must name an argument too
        assert _names_an_argument(err, name), f"{name}: {type(err).__name__}: {err}"
        event("refused at attach")
        return
    assert torch.isfinite(model(x)).all()
    event("works")
    cb.remove()


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=35, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_fuzz_constructor_arguments(name, data):
    chosen = data.draw(st.lists(st.sampled_from(ARGS[name]), min_size=1, max_size=3, unique=True), label="arguments")
    kwargs = {a: data.draw(st.one_of(st.sampled_from(PLAUSIBLE[a]), _values), label=a) for a in chosen}
    try:
        cb = make(name, **kwargs)
    except (TypeError, ValueError) as err:
        assert _names_an_argument(err, name), f"{name}({kwargs}): {type(err).__name__}: {err}"
        event(f"refused: {type(err).__name__}")
        return
    event("accepted")
    _check_working(cb, name)
