"""DeepSpeed ``compression_training`` JSON -> callbacks (lightning_compress.deepspeed)."""

from __future__ import annotations

import copy
import json
import warnings

import pytest

import lightning_compress.callbacks as lc_callbacks
from lightning_compress.callbacks.act_quant import ActQuant
from lightning_compress.callbacks.weight_quant import WeightQuant
from lightning_compress.deepspeed import (
    CallbackSpec,
    build_callback,
    from_deepspeed_config,
    plan_from_deepspeed_config,
)

# The DeepSpeed documentation's examples (docs/_pages/config-json.md), one per method.
SPARSE_L1 = {
    "sparse_pruning": {
        "shared_parameters": {"enabled": True, "schedule_offset": 30, "method": "l1"},
        "different_groups": {"sp1": {"params": {"dense_ratio": 0.5}, "modules": ["attention.self"]}},
    }
}
SPARSE_SNIP = {
    "sparse_pruning": {
        "shared_parameters": {
            "enabled": True,
            "schedule_offset": 30,
            "schedule_offset_end": 90,
            "schedule_offset_stride": 15,
            "method": "snip_momentum",
            "block_pattern": "4x1",
            "dense_ratio": 0.4,
            "excluded_modules": ["classifier", "pooler"],
        },
        "different_groups": {},
    }
}
ROW = {
    "row_pruning": {
        "shared_parameters": {"enabled": True, "schedule_offset": 20, "method": "topk"},
        "different_groups": {
            "rp1": {
                "params": {"dense_ratio": 0.5},
                "modules": ["intermediate.dense"],
                "related_modules": [["layer.\\w+.output.dense"]],
            }
        },
    }
}
HEAD = {
    "head_pruning": {
        "shared_parameters": {"enabled": True, "schedule_offset": 10, "method": "topk", "num_heads": 12},
        "different_groups": {
            "rp1": {
                "params": {"dense_ratio": 0.5},
                "modules": ["attention.output.dense"],
                "related_modules": [["self.query", "self.key", "self.value"]],
            }
        },
    }
}
CHANNEL = {
    "channel_pruning": {
        "shared_parameters": {"enabled": True, "schedule_offset": 0, "method": "l1"},
        "different_groups": {"cp1": {"params": {"dense_ratio": 0.5}, "modules": ["conv"]}},
    }
}
WEIGHT = {
    "weight_quantization": {
        "shared_parameters": {
            "enabled": True,
            "quantizer_kernel": False,
            "schedule_offset": 0,
            "quantize_groups": 1,
            "quantize_verbose": False,
            "quantization_type": "symmetric",
            "rounding": "nearest",
            "quantize_weight_in_forward": True,
            "fp16_mixed_quantize": {"enabled": False, "quantize_change_ratio": 0.001},
        },
        "different_groups": {
            "wq1": {
                "params": {"start_bits": 8, "target_bits": 8, "quantization_period": 50},
                "modules": ["attention.self", "intermediate"],
            },
            "wq2": {"params": {"start_bits": 8, "target_bits": 4, "quantization_period": 50}, "modules": ["attention.output"]},
        },
    }
}
ACT = {
    "activation_quantization": {
        "shared_parameters": {
            "enabled": True,
            "quantization_type": "asymmetric",
            "range_calibration": "dynamic",
            "schedule_offset": 50,
        },
        "different_groups": {"aq1": {"params": {"bits": 8}, "modules": ["attention.output"]}},
    }
}
LAYER = {
    "layer_reduction": {
        "enabled": True,
        "keep_number_layer": 5,
        "module_name_prefix": "bert.encoder.layer",
        "teacher_layer": [2, 4, 6, 8, 10],
        "other_module_name": ["bert.pooler", "bert.embeddings", "classifier"],
    }
}


def only(specs: list[CallbackSpec]) -> CallbackSpec:
    assert len(specs) == 1, specs
    return specs[0]


def test_sparse_l1_group_becomes_local_one_shot_pruning() -> None:
    spec = only(plan_from_deepspeed_config({"compression_training": SPARSE_L1}))
    assert spec.callback == "SparsePruning"
    assert spec.kwargs == dict(
        method="l1", pattern="unstructured", start_step=30, end_step=30, frequency=1, scope="local",
        exclude=None, sparsity=0.5, modules=["attention.self"],
    )


def test_sparse_snip_momentum_shared_parameters() -> None:
    spec = only(plan_from_deepspeed_config({"train_batch_size": 8, "compression_training": SPARSE_SNIP}))
    assert spec.kwargs == dict(
        method="snip_momentum", pattern="4x1", start_step=30, end_step=90, frequency=15, scope="global",
        exclude=["classifier", "pooler"], sparsity=0.6,
    )
    (cb,) = from_deepspeed_config({"compression_training": SPARSE_SNIP})
    assert isinstance(cb, lc_callbacks.SparsePruning)
    assert (cb.method, cb.start_step, cb.end_step, cb.frequency, cb.scope) == ("snip_momentum", 30, 90, 15, "global")
    assert cb.groups[0].sparsity == pytest.approx(0.6)
    assert cb.groups[0].exclude == ["classifier", "pooler"]


def test_sparse_several_groups_become_callback_groups() -> None:
    cfg = copy.deepcopy(SPARSE_L1)
    cfg["sparse_pruning"]["different_groups"]["sp2"] = {"params": {"dense_ratio": 0.25}, "modules": ["intermediate"]}
    spec = only(plan_from_deepspeed_config(cfg))  # the bare section is accepted too
    assert spec.kwargs["groups"] == {
        "sp1": {"sparsity": 0.5, "modules": ["attention.self"]},
        "sp2": {"sparsity": 0.75, "modules": ["intermediate"]},
    }
    assert spec.kwargs["sparsity"] is None
    (cb,) = from_deepspeed_config(cfg)
    assert {g.name: g.sparsity for g in cb.groups} == {"sp1": 0.5, "sp2": 0.75}
    assert {g.name: g.modules for g in cb.groups} == {"sp1": ["attention.self"], "sp2": ["intermediate"]}


@pytest.mark.parametrize(
    ("block_pattern", "ours"), [("2:4", "2:4"), ("1:4", "3:4"), ("3:8", "5:8"), ("4x1", "4x1"), ("1x16", "1x16")]
)
def test_block_pattern_translation(block_pattern: str, ours: str) -> None:
    cfg = copy.deepcopy(SPARSE_SNIP)
    cfg["sparse_pruning"]["shared_parameters"]["block_pattern"] = block_pattern
    cfg["sparse_pruning"]["shared_parameters"]["dense_ratio"] = 0.5 if ":" in block_pattern else 0.4
    assert only(plan_from_deepspeed_config(cfg)).kwargs["pattern"] == ours


def test_star_module_scope_means_default_targets() -> None:
    cfg = copy.deepcopy(SPARSE_L1)
    cfg["sparse_pruning"]["different_groups"]["sp1"]["modules"] = ["*"]
    assert only(plan_from_deepspeed_config(cfg)).kwargs["modules"] is None


def test_row_pruning_group_with_related_modules() -> None:
    spec = only(plan_from_deepspeed_config(ROW))
    assert spec.callback == "RowPruning"
    assert spec.path == "compression_training.row_pruning.different_groups.rp1"
    # topk: DeepSpeed's mask is the top-k of the scores at every step after the offset (constant ratio);
    # ceil(dense_ratio * rows) rows stay (rounding="floor" of the pruned count); the j-th producer pairs
    # with the j-th consumer (related_pairing="index")
    assert spec.kwargs == dict(
        sparsity=0.5, method="topk", start_step=20, end_step=None, schedule="constant", frequency=1,
        modules=["intermediate.dense"], rounding="floor",
        related_modules={"intermediate.dense": ["layer.\\w+.output.dense"]}, related_pairing="index",
    )
    (cb,) = from_deepspeed_config(ROW)
    assert isinstance(cb, lc_callbacks.RowPruning)
    assert cb.related_modules == {"intermediate.dense": ["layer.\\w+.output.dense"]}
    assert (cb.method, cb.start_step, cb.end_step, cb.related_pairing) == ("topk", 20, None, "index")
    assert [(g.sparsity, g.modules) for g in cb.groups] == [(0.5, ["intermediate.dense"])]


def test_row_related_modules_one_list_per_module() -> None:
    cfg = copy.deepcopy(ROW)
    group = cfg["row_pruning"]["different_groups"]["rp1"]
    group["modules"] = ["fc1", "fc3"]
    group["related_modules"] = [["fc2"], ["fc4"]]
    assert only(plan_from_deepspeed_config(cfg)).kwargs["related_modules"] == {"fc1": ["fc2"], "fc3": ["fc4"]}
    group["related_modules"] = [["fc2"], ["fc4"], ["fc5"]]
    with pytest.raises(ValueError, match=r"rp1\.related_modules`: 3 lists for 2 modules"):
        plan_from_deepspeed_config(cfg)


def test_head_pruning_group() -> None:
    spec = only(plan_from_deepspeed_config(HEAD))
    assert spec.callback == "HeadPruning"
    assert spec.kwargs["sparsity"] == 0.5 and spec.kwargs["method"] == "topk"
    assert (spec.kwargs["start_step"], spec.kwargs["end_step"], spec.kwargs["schedule"]) == (10, None, "constant")
    assert spec.kwargs["rounding"] == "floor"  # ceil(dense_ratio * heads) stay, as DeepSpeed
    # DeepSpeed names the output projection; HeadPruning takes the self-attention (q/k/v found by itself)
    assert spec.kwargs["modules"] == ["attention.self"]
    assert "related_modules" not in spec.kwargs
    assert spec.kwargs["num_heads"] == 12 and "num_heads" in spec.optional
    with pytest.warns(UserWarning, match=r"head_pruning\.different_groups\.rp1`: num_heads=12 not passed: HeadPruning reads"):
        (cb,) = from_deepspeed_config(HEAD)
    assert isinstance(cb, lc_callbacks.HeadPruning)
    assert [(g.sparsity, g.modules) for g in cb.groups] == [(0.5, ["attention.self"])]


def test_channel_pruning_group() -> None:
    spec = only(plan_from_deepspeed_config(CHANNEL))
    assert spec.callback == "ChannelPruning"
    assert spec.kwargs == dict(sparsity=0.5, method="l1", start_step=0, end_step=0, modules=["conv"], rounding="floor")
    (cb,) = from_deepspeed_config(CHANNEL)
    assert isinstance(cb, lc_callbacks.ChannelPruning)
    assert [(g.sparsity, g.modules) for g in cb.groups] == [(0.5, ["conv"])]
    cfg = copy.deepcopy(CHANNEL)
    cfg["channel_pruning"]["different_groups"]["cp1"]["related_modules"] = [["bn"]]
    with pytest.warns(UserWarning, match=r"related_modules=\['bn'\] not passed: ChannelPruning finds"):
        from_deepspeed_config(cfg)


def test_weight_quantization_groups_and_bit_schedule() -> None:
    specs = plan_from_deepspeed_config(WEIGHT)
    assert [s.callback for s in specs] == ["WeightQuant", "WeightQuant"]
    assert specs[0].kwargs == dict(
        bits=8, symmetric=True, modules=["attention.self", "intermediate"], start_step=0, granularity="tensor",
        scheme="deepspeed",
    )
    # quantize_weight_in_forward: true -> DeepSpeed's forward quantizer uses target_bits from the start
    assert specs[1].kwargs == dict(
        bits=4, symmetric=True, modules=["attention.output"], start_step=0, granularity="tensor", scheme="deepspeed",
    )
    # false (MoQ, DeepSpeed's default): one bit less at p, 2p, 4p, 8p
    cfg = copy.deepcopy(WEIGHT)
    cfg["weight_quantization"]["shared_parameters"]["quantize_weight_in_forward"] = False
    assert plan_from_deepspeed_config(cfg)[1].kwargs == dict(
        bits=4, symmetric=True, modules=["attention.output"], start_step=0, granularity="tensor", scheme="deepspeed",
        start_bits=8, period=50,
    )


def test_weight_quantization_callbacks() -> None:
    with pytest.warns(UserWarning, match=r"wq2\.params\.start_bits`=8 is not used: with quantize_weight_in_forward=true"):
        cb1, cb2 = from_deepspeed_config(WEIGHT)
    assert isinstance(cb1, WeightQuant) and isinstance(cb2, WeightQuant)
    assert (cb1.bits, cb1.start_bits, cb1.modules) == (8, 8, ["attention.self", "intermediate"])
    assert [cb2.bits_at(s) for s in (0, 400)] == [4, 4]
    cfg = copy.deepcopy(WEIGHT)
    cfg["weight_quantization"]["shared_parameters"]["quantize_weight_in_forward"] = False
    cb2 = from_deepspeed_config(cfg)[1]
    # DeepSpeed's MoQ: 7 bits at 50, 6 at 100, 5 at 200, 4 at 400 (the period doubles after each drop)
    assert [cb2.bits_at(s) for s in (0, 49, 50, 99, 100, 199, 200, 399, 400)] == [8, 8, 7, 7, 6, 6, 5, 5, 4]
    cfg["weight_quantization"]["different_groups"]["wq2"]["params"].update(start_bits=8, target_bits=2)
    cb2 = from_deepspeed_config(cfg)[1]
    assert cb2.levels == [8, 7, 6, 5, 4, 3, 2]
    assert cb2.bits_at(1599) == 3 and cb2.bits_at(1600) == 2  # 6th drop at 50 * 2**5


def test_weight_quantization_groups_are_row_blocks() -> None:
    cfg = copy.deepcopy(WEIGHT)
    cfg["weight_quantization"]["shared_parameters"]["quantize_groups"] = 64
    spec = plan_from_deepspeed_config(cfg)[0]
    assert (spec.kwargs["granularity"], spec.kwargs["groups"]) == ("row_block", 64)


def test_twelve_start_bits_and_period_zero_are_accepted() -> None:
    cfg = copy.deepcopy(WEIGHT)
    cfg["weight_quantization"]["shared_parameters"]["quantize_weight_in_forward"] = False
    cfg["weight_quantization"]["different_groups"]["wq1"]["params"].update(start_bits=12, target_bits=8)
    cb1 = from_deepspeed_config(cfg)[0]
    assert cb1.levels == [12, 11, 10, 9, 8] and cb1.bits_at(0) == 12 and cb1.bits_at(400) == 8
    cfg["weight_quantization"]["different_groups"]["wq1"]["params"].update(start_bits=4, target_bits=4, quantization_period=0)
    assert from_deepspeed_config(cfg)[0].bits_at(0) == 4
    cfg["weight_quantization"]["different_groups"]["wq1"]["params"].update(start_bits=17, target_bits=8)
    with pytest.raises(ValueError, match=r"different_groups\.wq1\.params\.start_bits`: 17 bits"):
        from_deepspeed_config(cfg)


def test_activation_quantization_group() -> None:
    spec = only(plan_from_deepspeed_config(ACT))
    assert spec.callback == "ActQuant"
    assert spec.kwargs == dict(bits=8, range="dynamic", symmetric=False, modules=["attention.output"], start_step=50)
    (cb,) = from_deepspeed_config(ACT)
    assert isinstance(cb, ActQuant)
    assert (cb.bits, cb.range, cb.symmetric, cb.modules, cb.start_step) == (8, "dynamic", False, ["attention.output"], 50)
    cfg = copy.deepcopy(ACT)
    cfg["activation_quantization"]["shared_parameters"]["schedule_offset"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (cb,) = from_deepspeed_config(cfg)  # no offset: nothing to warn about


def test_layer_reduction() -> None:
    spec = only(plan_from_deepspeed_config(LAYER))
    assert spec.callback == "LayerReductionKD"
    # DeepSpeed only initialised the student: no distillation term unless asked
    no_kd = {"logits": 0.0, "hidden": 0.0, "attention": 0.0, "labels": 1.0}
    assert spec.kwargs == dict(
        keep_layers=[2, 4, 6, 8, 10], teacher_layers=[2, 4, 6, 8, 10], layers="bert.encoder.layer", weights=no_kd
    )
    assert spec.teacher_copy == ["bert.encoder.layer", "bert.pooler", "bert.embeddings", "classifier"]
    cfg = copy.deepcopy(LAYER)
    del cfg["layer_reduction"]["teacher_layer"]
    assert only(plan_from_deepspeed_config(cfg)).kwargs["keep_layers"] == 5
    # DeepSpeed's alternative spelling: numbered modules in other_module_name are the kept layers
    alt = {"layer_reduction": {"enabled": True, "keep_number_layer": 2,
                               "other_module_name": ["bert.encoder.layer.2", "bert.encoder.layer.4", "classifier"]}}
    assert only(plan_from_deepspeed_config(alt)).kwargs == dict(
        keep_layers=[2, 4], teacher_layers=[2, 4], layers="bert.encoder.layer", weights=no_kd
    )
    (cb,) = from_deepspeed_config(LAYER)
    assert isinstance(cb, lc_callbacks.LayerReductionKD)
    assert (cb.keep_layers, cb.layers) == ([2, 4, 6, 8, 10], "bert.encoder.layer")


def test_all_methods_in_deepspeed_order(tmp_path) -> None:
    section = {}
    for part in (ACT, WEIGHT, CHANNEL, HEAD, ROW, SPARSE_SNIP, LAYER):
        section.update(copy.deepcopy(part))
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "compression_training": section}))
    names = [s.callback for s in plan_from_deepspeed_config(path)]
    assert names == [
        "LayerReductionKD", "SparsePruning", "RowPruning", "HeadPruning", "ChannelPruning",
        "WeightQuant", "WeightQuant", "ActQuant",
    ]


def test_no_section_and_disabled_methods_give_nothing() -> None:
    assert from_deepspeed_config({"train_batch_size": 8, "zero_optimization": {"stage": 2}}) == []
    assert from_deepspeed_config({"compression_training": {}}) == []
    cfg = copy.deepcopy(SPARSE_SNIP)
    cfg["sparse_pruning"]["shared_parameters"]["enabled"] = False
    assert from_deepspeed_config(cfg) == []


def test_missing_enabled_warns_and_skips_like_deepspeed() -> None:
    cfg = copy.deepcopy(ROW)
    del cfg["row_pruning"]["shared_parameters"]["enabled"]
    with pytest.warns(UserWarning, match=r"row_pruning.shared_parameters` has no `enabled` key"):
        assert plan_from_deepspeed_config(cfg) == []


def test_ignored_kernel_switch_warns() -> None:
    cfg = copy.deepcopy(WEIGHT)
    cfg["weight_quantization"]["shared_parameters"]["quantizer_kernel"] = True
    with pytest.warns(UserWarning, match=r"quantizer_kernel`=True has no effect"):
        plan_from_deepspeed_config(cfg)


def _with(base: dict, path: list, value) -> dict:  # noqa: ANN001
    cfg = copy.deepcopy(base)
    d = cfg
    for key in path[:-1]:
        d = d[key]
    d[path[-1]] = value
    return cfg


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"compression_training": {"sparse_pruning_v2": {}}}, r"compression_training\.sparse_pruning_v2`: unknown compression method"),
        ({"compression_training": {"knowledge_distillation": {}}}, r"unknown compression method\(s\) \['knowledge_distillation'\]"),
        (_with(SPARSE_SNIP, ["sparse_pruning", "shared_parameters", "dense_ration"], 0.3),
         r"sparse_pruning\.shared_parameters\.dense_ration"),
        (_with(SPARSE_L1, ["sparse_pruning", "different_groups", "sp1", "params", "sparsity"], 0.3),
         r"sparse_pruning\.different_groups\.sp1\.params\.sparsity"),
        (_with(ROW, ["row_pruning", "different_groups", "rp1", "module"], ["x"]),
         r"row_pruning\.different_groups\.rp1\.module\b"),
        (_with(ROW, ["row_pruning", "schedule"], {}), r"row_pruning\.schedule`?"),
        (_with(LAYER, ["layer_reduction", "keep_layers"], [1]), r"layer_reduction\.keep_layers"),
        (_with(SPARSE_L1, ["sparse_pruning", "shared_parameters", "method"], "movement"),
         r"shared_parameters\.method`: 'movement' is not a sparse_pruning method"),
        (_with(ROW, ["row_pruning", "shared_parameters", "method"], "snip_momentum"), r"row_pruning method"),
        (_with(SPARSE_L1, ["sparse_pruning", "different_groups", "sp1", "params", "dense_ratio"], 0.0),
         r"sp1\.params\.dense_ratio`: dense_ratio=0\.0 must be a number in \(0, 1\]"),
        (_with(CHANNEL, ["channel_pruning", "different_groups", "cp1", "params", "dense_ratio"], 1.5),
         r"dense_ratio=1\.5"),
        (_with(SPARSE_SNIP, ["sparse_pruning", "shared_parameters", "block_pattern"], "4:4"), r"N:M needs 0 < N < M"),
        (_with(SPARSE_SNIP, ["sparse_pruning", "shared_parameters", "block_pattern"], "blocky"), r"block_pattern='blocky'"),
        (_with(SPARSE_SNIP, ["sparse_pruning", "shared_parameters", "schedule_offset_end"], 10),
         r"schedule_offset_end`: 10 is before schedule_offset=30"),
        (_with(WEIGHT, ["weight_quantization", "shared_parameters", "rounding"], "stochastic"),
         r"rounding`: 'stochastic' is not supported"),
        (_with(WEIGHT, ["weight_quantization", "shared_parameters", "fp16_mixed_quantize", "enabled"], True),
         r"fp16_mixed_quantize\.enabled"),
        (_with(WEIGHT, ["weight_quantization", "different_groups", "wq1", "params", "start_bits"], 4),
         r"wq1\.params\.start_bits`: 4 is below target_bits=8"),
        (_with(ACT, ["activation_quantization", "shared_parameters", "range_calibration"], "percentile"),
         r"range_calibration`: 'percentile' must be 'dynamic' or 'static'"),
        (_with(LAYER, ["layer_reduction", "keep_number_layer"], 4), r"keep_number_layer`: 4 differs from len\(teacher_layer\)=5"),
        ({"train_batch_size": 8, "row_pruning": ROW["row_pruning"]}, r"must sit inside `compression_training`"),
        (_with(ROW, ["row_pruning", "different_groups"], {}), r"row_pruning is enabled but has no group"),
        (_with(SPARSE_L1, ["sparse_pruning", "different_groups", "sp1", "modules"], ["(unclosed"]),
         r"sp1\.modules`: '\(unclosed' is not a valid regular expression"),
    ],
)
def test_bad_config_names_key_and_path(cfg: dict, match: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=match):
            plan_from_deepspeed_config(cfg)


def test_snip_momentum_needs_schedule_offset_end() -> None:
    cfg = copy.deepcopy(SPARSE_SNIP)
    del cfg["sparse_pruning"]["shared_parameters"]["schedule_offset_end"]
    with pytest.raises(ValueError, match=r"sparse_pruning\.shared_parameters`: snip_momentum needs schedule_offset_end"):
        plan_from_deepspeed_config(cfg)


def test_bad_file(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"does not exist"):
        from_deepspeed_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"is not valid JSON"):
        from_deepspeed_config(bad)


def test_argument_the_callback_lacks_is_an_error() -> None:
    spec = CallbackSpec("SparsePruning", {"sparsity": 0.5, "rounding": "stochastic"}, "compression_training.sparse_pruning")
    with pytest.raises(ValueError, match=r"sparse_pruning`: translates to SparsePruning\(rounding='stochastic'\), but SparsePruning has no `rounding`"):
        build_callback(spec)


def test_callback_validation_errors_carry_the_config_path() -> None:
    spec = CallbackSpec("SparsePruning", {"sparsity": 0.5, "pattern": "5:4"}, "compression_training.sparse_pruning")
    with pytest.raises(ValueError, match=r"compression_training\.sparse_pruning` -> SparsePruning: "):
        build_callback(spec)


def test_missing_callback_class_is_named() -> None:
    spec = CallbackSpec("NoSuchPruning", {}, "compression_training.x")
    with pytest.raises(ValueError, match=r"needs the callback NoSuchPruning"):
        build_callback(spec)
