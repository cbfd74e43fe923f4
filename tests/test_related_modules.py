"""RowPruning ``related_modules``: producers and consumers paired per layer (the j-th match with the
j-th, DeepSpeed's rule, by default when a key matches one module per layer), layers that share a
consumer take one row mask (a SwiGLU gate and up named by hand), and pairings whose shapes do not fit
refused at setup."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

pytest.importorskip("transformers")

from lightning_compress.callbacks import RowPruning  # noqa: E402
from lightning_compress.core import masking  # noqa: E402
from lightning_compress.export import clean  # noqa: E402
from tests.test_families_hf import _build, _out, _rel  # noqa: E402


def _prune(model, cb):
    cb.attach(model)
    for g in cb.pruner.groups:
        cb.prune_group(g, g.sparsity)
    return cb


def _check_slim(model, inputs, dense):
    with torch.no_grad():
        masked = _out(model, inputs)
        assert _rel(masked, _out(dense, inputs)) > 1e-5
        baked = copy.deepcopy(model)
        masking.bake(baked)
        masking.strip(baked)
        assert _rel(masked, _out(baked, inputs)) <= 1e-6
        slim = clean(model)
        assert _rel(_out(slim, inputs), masked) <= 1e-5
    return slim


def test_swiglu_gate_and_up_named_by_hand_share_one_mask_per_layer():
    warnings.filterwarnings("ignore", category=UserWarning)
    model, inputs = _build("llama")
    dense = copy.deepcopy(model)
    cb = _prune(model, RowPruning(sparsity=0.5, related_modules={"gate_proj": ["down_proj"], "up_proj": ["down_proj"]}))
    groups = [t.unit_group for t in cb.pruner.targets]
    assert len(groups) == 2  # one per layer
    for i, g in enumerate(groups):
        names = sorted((m.role, m.name) for m in g.members)
        assert names == [("in", f"model.layers.{i}.mlp.down_proj"), ("out", f"model.layers.{i}.mlp.gate_proj"),
                         ("out", f"model.layers.{i}.mlp.up_proj")]
    slim = _check_slim(model, inputs, dense)
    for layer in slim.model.layers:
        assert layer.mlp.gate_proj.out_features == layer.mlp.up_proj.out_features == layer.mlp.down_proj.in_features == 64


def test_consumer_regex_matching_every_layer_is_paired_per_layer():
    """{"lin1": ["lin2"]}: each regex matches one module per layer, so layer j's lin1 is read by layer
    j's lin2 only (before: every lin2 read every lin1 and the slim model crashed)."""
    model, inputs = _build("distilbert")
    dense = copy.deepcopy(model)
    cb = _prune(model, RowPruning(sparsity=0.5, related_modules={"lin1": ["lin2"]}))
    assert len(cb.pruner.targets) == 2
    for i, t in enumerate(cb.pruner.targets):
        assert {m.name for m in t.unit_group.members if m.role == "in"} == {f"transformer.layer.{i}.ffn.lin2"}
    _check_slim(model, inputs, dense)


def test_half_of_a_swiglu_named_alone_is_refused_at_setup():
    model, _ = _build("llama")
    with pytest.raises(ValueError, match=r"RowPruning: `related_modules` names \['model\.layers\.0\.mlp\.up_proj'\] but "
                                         r"not \['model\.layers\.0\.mlp\.gate_proj'\].*combined elementwise"):
        RowPruning(related_modules={"up_proj": ["down_proj"]}).attach(model)


def test_pairings_that_do_not_fit_are_refused_at_setup():
    model, _ = _build("llama")
    with pytest.raises(ValueError, match=r"RowPruning: `related_modules` makes 'model\.layers\.0\.self_attn\.o_proj' "
                                         r"\(input width 64\) a consumer of 'model\.layers\.0\.mlp\.up_proj' \(output width 128\)"):
        RowPruning(related_modules={"up_proj": ["o_proj"]}).attach(model)
    with pytest.raises(ValueError, match=r"pairs the j-th module matched by 'up_proj' with the j-th matched by "
                                         r"'layers.*down_proj'.*'up_proj' matches 2 modules.*matches 1"):
        RowPruning(related_modules={"up_proj": [r"layers\.0\.mlp\.down_proj"]}).attach(model)
    with pytest.raises(ValueError, match=r"`related_pairing`='pairs' is not one of|related_pairing"):
        RowPruning(related_pairing="pairs")


def test_one_producer_reads_every_match_of_its_consumer_regexes():
    """A key matching one module (``"auto"`` -> ``"all"``): every module its consumer regexes match."""
    model, inputs = _build("distilbert")
    dense = copy.deepcopy(model)
    cb = _prune(model, RowPruning(sparsity=0.5, related_modules={r"layer\.0\.ffn\.lin1": [r"layer\.0\.ffn\.lin2"]}))
    (t,) = cb.pruner.targets
    assert {m.name for m in t.unit_group.members} == {"transformer.layer.0.ffn.lin1", "transformer.layer.0.ffn.lin2"}
    _check_slim(model, inputs, dense)
