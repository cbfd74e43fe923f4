"""The DeepSpeed translator registry: a new method is one translator that registers itself."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from lightning_compress.callbacks.sparse_pruning import SparsePruning
from lightning_compress.deepspeed import (
    TRANSLATORS,
    CallbackSpec,
    from_deepspeed_config,
    plan_from_deepspeed_config,
    register_translator,
)
from lightning_compress.deepspeed.config import method_section, sparsity


class ToyPruning(SparsePruning):
    """A callback no shipped translator builds."""


@pytest.fixture
def toy_translator():
    """Registers ``toy_pruning`` (``dense_ratio`` -> ``ToyPruning(sparsity)``) for one test."""

    @register_translator("toy_pruning", ToyPruning)
    def translate(section: Any, path: str) -> list[CallbackSpec]:
        sec = method_section(section, path, {"enabled", "dense_ratio"}, set())
        if sec is None:
            return []
        ratio = sparsity(sec.shared.get("dense_ratio", 1.0), f"{sec.shared_path}.dense_ratio")
        return [CallbackSpec(ToyPruning.__name__, {"sparsity": ratio, "start_step": 0, "end_step": 0}, path)]

    yield translate
    del TRANSLATORS["toy_pruning"]


def test_shipped_translators_in_deepspeed_order() -> None:
    assert list(TRANSLATORS) == [
        "layer_reduction", "sparse_pruning", "row_pruning", "head_pruning", "channel_pruning",
        "weight_quantization", "activation_quantization",
    ]
    assert TRANSLATORS["sparse_pruning"].callbacks == (SparsePruning,)


def test_toy_translator_registered_from_the_test_file(toy_translator) -> None:
    cfg = {"compression_training": {
        "toy_pruning": {"shared_parameters": {"enabled": True, "dense_ratio": 0.25}},
        "sparse_pruning": {"shared_parameters": {"enabled": True, "dense_ratio": 0.5, "schedule_offset": 0}},
    }}
    specs = plan_from_deepspeed_config(cfg)
    assert [s.callback for s in specs] == ["SparsePruning", "ToyPruning"]  # registration order
    assert specs[1].kwargs == {"sparsity": 0.75, "start_step": 0, "end_step": 0}
    assert specs[1].path == "compression_training.toy_pruning"
    sparse, toy = from_deepspeed_config(cfg)
    assert type(toy) is ToyPruning and toy.groups[0].sparsity == pytest.approx(0.75)
    # its keys are checked like any method's, with the JSON path in the message
    cfg["compression_training"]["toy_pruning"]["shared_parameters"]["dense_ration"] = 0.3
    with pytest.raises(ValueError, match=r"toy_pruning\.shared_parameters\.dense_ration"):
        plan_from_deepspeed_config(cfg)


def test_unregistered_method_is_unknown() -> None:
    with pytest.raises(ValueError, match=r"unknown compression method\(s\) \['toy_pruning'\]"):
        plan_from_deepspeed_config({"compression_training": {"toy_pruning": {}}})


def test_registering_a_section_twice_needs_override(toy_translator) -> None:
    with pytest.raises(ValueError, match=r"section 'toy_pruning' already has the translator .*override=True"):
        register_translator("toy_pruning", ToyPruning)(toy_translator)
    register_translator("toy_pruning", ToyPruning, override=True)(toy_translator)


def test_pattern_grammar_is_the_core_one() -> None:
    # "1x1" and spaced blocks are core.patterns.parse_pattern's spellings; DeepSpeed's N:M flips to kept
    for block_pattern, ours in (("1x1", "unstructured"), ("4 x 1", "4x1"), ("1:4", "3:4")):
        cfg = {"sparse_pruning": {"shared_parameters": {
            "enabled": True, "method": "snip_momentum", "schedule_offset": 0, "schedule_offset_end": 10,
            "block_pattern": block_pattern}}}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            (spec,) = plan_from_deepspeed_config(cfg)
        assert spec.kwargs["pattern"] == ours
