"""Every DeepSpeed Compression config DeepSpeedExamples publishes (and DeepSpeed's unit-test config), unchanged,
under ``DeepSpeedCompressionStrategy(config=...)``: imported, trained 4 CPU steps on a tiny model with the
module names it expects, its effect checked against DeepSpeed's semantics (DeepSpeed's quantizer
levels, ``ceil(dense_ratio * n)`` rows / heads / channels kept, the j-th producer paired with the j-th
consumer, layer count), then ``clean``: the slim model computes what the masked one did and has
DeepSpeed's parameter count.  Config data and models: ``tests/ds_published.py``."""

from __future__ import annotations

import copy
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_compress import DeepSpeedCompressionStrategy, clean
from lightning_compress.callbacks.act_quant import ActQuant
from lightning_compress.callbacks.channel_pruning import ChannelPruning
from lightning_compress.callbacks.head_pruning import HeadPruning
from lightning_compress.callbacks.layer_reduction_kd import LayerReductionKD
from lightning_compress.callbacks.row_pruning import RowPruning
from lightning_compress.callbacks.sparse_pruning import SparsePruning
from lightning_compress.callbacks.weight_quant import WeightQuant
from lightning_compress.core import masking
from lightning_compress.core.conv1d import is_conv1d
from lightning_compress.core.fake_quant import pre_quant_weight, weight_quantizer
from lightning_compress.core.quant_grid import as_rows
from lightning_compress.deepspeed import from_deepspeed_config, plan_from_deepspeed_config
from tests import ds_published as P

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def fit(name: str, cfg: dict | None = None, model=None, steps: int = 4, **options):
    m, loader, probe = P.model_for(name)
    model = model or m
    cfg = P.shrink(P.published(name)) if cfg is None else cfg
    strategy = DeepSpeedCompressionStrategy(config=P.strategy_config(cfg), **options)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, strategy=strategy, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, loader)
    return model, strategy._compression_callbacks, probe, trainer


def levels(bits: int) -> int:
    return {1: 2, 2: 3}.get(bits, 2**bits)


def check_weight_quant(cb: WeightQuant) -> str:
    """Every targeted weight: at most 2**b values per quantization group, and exactly DeepSpeed's values."""
    bits = cb.current_bits
    assert bits is not None
    for name, module in cb.targets.items():
        q = weight_quantizer(module)
        w = pre_quant_weight(module).detach()
        eff = masking.effective_param(module, "weight").detach()
        if is_conv1d(module):  # a Conv1D is quantized as the Linear [out, in]
            w, eff = w.t(), eff.t()
        spec = q.current_spec
        rows = as_rows(eff, spec.granularity, spec.group_size, spec.groups)
        assert max(len(torch.unique(r)) for r in rows) <= levels(bits), name
        if isinstance(module, nn.Embedding):
            groups = w.shape[0]  # token-wise, as DeepSpeed's Embedding_Compress
        else:
            groups = spec.groups if spec.granularity == "row_block" else 1
        assert rows.shape[0] == groups, (name, rows.shape, groups)
        ref = P.deepspeed_quantize(w, bits, spec.symmetric, groups)
        torch.testing.assert_close(eff.float(), ref, atol=1e-5, rtol=1e-4, msg=name)
    g = cb.quantizer.spec
    return f"{len(cb.targets)} weights at {bits} bits, {g.granularity}{'/' + str(g.groups) if g.groups else ''} == DeepSpeed's"


def check_act_quant(cb: ActQuant) -> str:
    name, module = next(iter(cb.targets.items()))
    (t,) = [t for t in masking.input_transforms(module) if t.kind == "act_quant"]
    assert t.fn.enabled
    width = module.weight.shape[0] if is_conv1d(module) else module.in_features
    x = torch.randn(2, 5, width)
    xq = t.fn(module, x)
    assert max(len(torch.unique(tok)) for tok in xq.reshape(-1, width)) <= 2**cb.bits
    return f"{len(cb.targets)} inputs at {cb.bits} bits per token from step {cb.start_step}"


def check_effects(cbs) -> list[str]:
    seen = []
    for cb in cbs:
        if isinstance(cb, WeightQuant):
            seen.append(check_weight_quant(cb))
        elif isinstance(cb, ActQuant):
            seen.append(check_act_quant(cb))
        elif isinstance(cb, SparsePruning):
            target = cb.groups[0].sparsity
            tol = 0.02 if cb.scope == "local" else 0.05
            assert cb.sparsity_stats()["sparsity"] == pytest.approx(target, abs=tol)
            seen.append(f"sparsity {cb.sparsity_stats()['sparsity']:.3f} (target {target:g})")
        elif isinstance(cb, (RowPruning, HeadPruning, ChannelPruning)):
            for t in cb.targets:
                ug = t.unit_group
                kept = int(t.mask.sum()) if hasattr(t, "mask") else None
                assert kept == P.kept(ug.num_units, 1 - cb.groups[0].sparsity), (ug.name, kept, ug.num_units)
            seen.append(f"{len(cb.targets)} {cb.unit_word} groups keep ceil(dense_ratio * n)")
        elif isinstance(cb, LayerReductionKD):
            assert not cb.distilling
            seen.append(f"{len(cb.keep)} layers kept {cb.mapping}")
    return seen


def check_clean(model, probe) -> nn.Module:
    net = model.model
    net.eval()
    with torch.no_grad():
        masked = net(probe)
        slim = clean(net, inplace=False)
        out = slim(probe)
    masked = getattr(masked, "logits", masked)
    out = getattr(out, "logits", out)
    torch.testing.assert_close(out, masked, atol=1e-5, rtol=1e-4)
    assert not any(masking.is_wrapped(m) for m in slim.modules())
    return slim


# --------------------------------------------------------------------------------------- DeepSpeed's counts
def layer_params() -> int:
    h, f = P.HIDDEN, P.FFN
    return 4 * (h * h + h) + 2 * (2 * h) + (h * f + f) + (f * h + h)


def deepspeed_slim_params(name: str, dense: int) -> int:
    """Parameters after DeepSpeed's ``redundancy_clean`` (rows / heads / channels removed from the
    producers and their related modules, ``ceil(dense_ratio * n)`` kept; quantized and sparse weights keep
    their shapes), or, with layer reduction, of its student (``keep_number_layer`` layers)."""
    cfg = P.published(name).get("compression_training", {})
    h, f = P.HIDDEN, P.FFN
    total = dense
    rp = cfg.get("row_pruning", {})
    if rp.get("shared_parameters", {}).get("enabled"):
        ratio = rp["different_groups"]["rp1"]["params"]["dense_ratio"]
        r = f - P.kept(f, ratio)
        total -= 2 * (r * (h + 1) + r * h)
    hp = cfg.get("head_pruning", {})
    if hp.get("shared_parameters", {}).get("enabled"):
        ratio = hp["different_groups"]["rp1"]["params"]["dense_ratio"]
        pruned = P.HEADS - P.kept(P.HEADS, ratio)
        hd = h // P.HEADS
        total -= 2 * (pruned * hd * 3 * (h + 1) + pruned * hd * h)
    cp = cfg.get("channel_pruning", {})
    if cp.get("shared_parameters", {}).get("enabled"):
        ratio = cp["different_groups"]["cp1"]["params"]["dense_ratio"]
        for cin, c in ((8, 8), (8, 16)):  # layer1.0.conv1: 8 -> 8, layer2.0.conv1: 8 -> 16 channels
            pruned = c - P.kept(c, ratio)
            total -= pruned * cin * 9 + 2 * pruned + pruned * c * 9  # conv1 rows, bn1, conv2 columns
    lr = cfg.get("layer_reduction", {})
    if lr.get("enabled"):
        total -= (12 - lr["keep_number_layer"]) * layer_params()
    return total


TRAINED = [n for n in P.names() if P.published(n) and plan_from_deepspeed_config(P.published(n))]
EMPTY = [n for n in P.names() if n not in TRAINED]


@pytest.mark.parametrize("name", EMPTY)
def test_configs_without_enabled_methods_import_to_nothing(name: str) -> None:
    """cifar/gpt2 ds_config.json (no section) and bert ds_config.json (every method disabled)."""
    assert from_deepspeed_config(P.published(name)) == []


@pytest.mark.parametrize("name", TRAINED)
def test_published_config_runs_with_deepspeed_semantics(name: str) -> None:
    published = P.published(name)
    plan = plan_from_deepspeed_config(published)
    shrunk = plan_from_deepspeed_config(P.shrink(published))
    # the same callbacks on the same modules as the published file; only the steps were squeezed
    assert [(s.callback, s.kwargs.get("modules")) for s in plan] == [(s.callback, s.kwargs.get("modules")) for s in shrunk]
    model, cbs, probe, trainer = fit(name)
    dense = P.n_params(P.model_for(name)[0].model)
    assert trainer.global_step == 4
    assert [type(c).__name__ for c in cbs] == [s.callback for s in plan]
    check_effects(cbs)
    slim = check_clean(model, probe)
    assert P.n_params(slim) == deepspeed_slim_params(name, dense)


# --------------------------------------------------------------------------------------- the points
def test_row_pruning_pairs_the_jth_producer_with_the_jth_consumer() -> None:
    _, cbs, _, _ = fit("bert__filled__pruning_row", steps=2)
    (rp,) = cbs
    for t in rp.targets:
        layer = t.unit_group.name.split(".layer.")[1].split(".")[0]
        consumers = [m.name for m in t.unit_group.members if m.role == "in"]
        assert consumers == [f"model.bert.encoder.layer.{layer}.output.dense"]


def test_row_pruning_refuses_a_pairing_whose_shapes_do_not_fit() -> None:
    cfg = P.shrink(P.published("bert__filled__pruning_row"))
    cfg["compression_training"]["row_pruning"]["different_groups"]["rp1"]["related_modules"] = [["attention.output.dense"]]
    with pytest.raises(ValueError, match=r"input width 48\) a consumer of .*intermediate\.dense' \(output width 96\)"):
        fit("bert__filled__pruning_row", cfg, steps=1)
    cfg["compression_training"]["row_pruning"]["different_groups"]["rp1"]["related_modules"] = [["layer.0.output.dense"]]
    with pytest.raises(ValueError, match=r"matches 2 modules .* matches 1"):
        fit("bert__filled__pruning_row", cfg, steps=1)


def test_topk_masks_follow_the_scores_every_step() -> None:
    _, (hp,), _, _ = fit("bert__filled__pruning_head")
    assert [h["step"] for h in hp.pruner.history] == [1, 2, 3]


def test_activation_quantization_starts_at_its_offset() -> None:
    cfg = P.published("bert__filled__quant_activation")
    (aq, _) = from_deepspeed_config(cfg)
    assert aq.start_step == 0
    cfg = copy.deepcopy(cfg)
    cfg["compression_training"]["activation_quantization"]["shared_parameters"]["schedule_offset"] = 3
    model, cbs, probe, _ = fit("bert__filled__quant_activation", cfg, steps=2)
    q = next(iter(cbs[0].quantizer.quantizers.values()))
    assert cbs[0].start_step == 3 and not q.enabled  # 2 steps done: not yet
    cbs[0].quantizer.step(3)
    assert q.enabled


def test_layer_reduction_with_a_separate_teacher_initialises_the_student_as_deepspeed() -> None:
    """The two-stage XTC recipe: a fine-tuned full teacher; student layer i <- teacher layer teacher_layer[i],
    other_module_name modules <- the teacher's; no distillation term (lr 0 keeps the copies checkable)."""
    name = "bert__XTC__ds_config_layer_reduction_fp16"
    teacher = P.bert(12, seed=1).model
    for shallow in (False, True):
        student = P.bert(6 if shallow else 12, seed=2, lr=0.0)
        model, (lr,), _, trainer = fit(name, model=student, steps=2, compression_teacher=teacher)
        assert not lr.distilling and "kd/loss" not in trainer.callback_metrics
        s_layers, t_layers = model.model.bert.encoder.layer, teacher.bert.encoder.layer
        assert len(s_layers) == model.model.config.num_hidden_layers == 6
        for i, j in enumerate([1, 3, 5, 7, 9, 11]):
            for a, b in zip(s_layers[i].parameters(), t_layers[j].parameters()):
                torch.testing.assert_close(a, b)
        for mod in ("bert.embeddings", "bert.pooler", "classifier"):
            for a, b in zip(model.model.get_submodule(mod).parameters(), teacher.get_submodule(mod).parameters()):
                torch.testing.assert_close(a, b)


def test_layer_reduction_distillation_only_when_asked() -> None:
    cfg = P.published("bert__XTC__ds_config_layer_reduction_fp16")
    (lr,) = from_deepspeed_config(cfg)
    assert not lr.distilling
    (lr,) = from_deepspeed_config(cfg, distill=True)
    assert lr.distilling and lr.weights["logits"] == 1.0
    with pytest.raises(ValueError, match="does not enable"):
        from_deepspeed_config(P.published("bert__filled__pruning_row"), distill=True)


def test_misspelled_keys_name_the_path_and_the_nearest_key() -> None:
    cfg = copy.deepcopy(P.published("gpt2__ds_config_W8A8_Qgroup64_fp32"))
    cfg["compression_training"]["weight_quantisation"] = cfg["compression_training"].pop("weight_quantization")
    with pytest.raises(ValueError, match=r"compression_training\.weight_quantisation \(did you mean 'weight_quantization'\?\)"):
        from_deepspeed_config(cfg)
    cfg = copy.deepcopy(P.published("gpt2__ds_config_W8A8_Qgroup64_fp32"))
    cfg["compression_training"]["weight_quantization"]["shared_parameters"]["quantize_group"] = 64
    with pytest.raises(ValueError, match=r"shared_parameters\.quantize_group \(did you mean 'quantize_groups'\?\)"):
        from_deepspeed_config(cfg)
    with pytest.raises(ValueError, match=r"did you mean 'compression_training'"):
        from_deepspeed_config({"compresion_training": cfg["compression_training"]})


def test_deepspeed_bit_schedule_and_twelve_bits_from_the_unit_test() -> None:
    (_, _, _, wq1, wq2, _) = from_deepspeed_config(P.published("deepspeed__unit_test"))
    # quantize_weight_in_forward absent (false): MoQ, 12 -> 8 and 12 -> 4 bits, p=50 from step 50
    assert [wq1.bits_at(s) for s in (49, 50, 99, 100, 149, 150, 249, 250)] == [None, 12, 12, 11, 11, 10, 10, 9]
    assert wq1.bits_at(450) == 8 and wq2.bits_at(50 + 50 * 2**7) == 4 and wq2.bits_at(50 + 50 * 2**7 - 1) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, cbs, _, _ = fit("deepspeed__unit_test")
    wq = [c for c in cbs if isinstance(c, WeightQuant)]
    # period 0 in the 4-step run: one bit per step from step 1; the 4th batch ran with 3 steps done
    assert [c.current_bits for c in wq] == [10, 10]


@pytest.mark.parametrize("name", ["gpt2__ds_config_W4or8A8_Qgroup64_fp32", "bert__filled__quant_weight", "deepspeed__unit_test"])
def test_packed_storage_of_deepspeed_grids_row_blocks_and_conv1d(name: str) -> None:
    """Low-bit storage of DeepSpeed's grids (row blocks, Conv1D weights, asymmetric codes) dequantizes
    to the slim model's weights."""
    from lightning_compress.core.quant_pack import unpack_model
    from lightning_compress.export import clean_for_storage

    cfg = P.published(name)
    if name == "deepspeed__unit_test":  # at its target widths (8 and 4 bits), asymmetric
        cfg = copy.deepcopy(cfg)
        for g in cfg["compression_training"]["weight_quantization"]["different_groups"].values():
            g["params"]["start_bits"] = g["params"]["target_bits"]
    model, cbs, probe, _ = fit(name, cfg=P.shrink(cfg), steps=2)
    slim, packed, stored = clean_for_storage(model.model, inplace=False)
    weights = unpack_model(packed)
    assert weights
    state = slim.state_dict()
    for key, value in weights.items():
        torch.testing.assert_close(value, state[key], atol=1e-5, rtol=1e-4, msg=key)
    with torch.no_grad():
        torch.testing.assert_close(getattr(stored(probe), "logits", stored(probe)), getattr(slim(probe), "logits", slim(probe)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scenario,name", [("dsconfig_pruning_row", "bert__filled__pruning_row"),
                                           ("dsconfig_gpt2_w4or8", "gpt2__ds_config_W4or8A8_Qgroup64_fp32")])
def test_two_ranks(dist_results, scenario: str, name: str) -> None:
    """The same configs on 2 ranks (ZeRO 2): both ranks hold the same masks / quantized weights, the slim
    model computes what the masked one did and has DeepSpeed's parameter count."""
    r0, r1 = dist_results(scenario)
    assert r0["callbacks"] == [s.callback for s in plan_from_deepspeed_config(P.published(name))]
    assert r0["effective"].keys() == r1["effective"].keys() and r0["effective"]
    for key in r0["effective"]:
        torch.testing.assert_close(r0["effective"][key], r1["effective"][key], msg=key)
    for r in (r0, r1):
        torch.testing.assert_close(r["slim"], r["masked"], atol=1e-5, rtol=1e-4)
        assert r["slim_params"] == deepspeed_slim_params(name, P.n_params(P.model_for(name)[0].model))


def test_activation_offset_counts_optimizer_steps_across_fits() -> None:
    from tests.models import TinyMLP, cpu_trainer, mlp_loader

    import lightning.pytorch as pl

    class StopAt2(pl.Callback):  # an interruption: a 2-step fit could not reach start_step=3 (an error)
        def on_train_batch_end(self, trainer, *args) -> None:  # noqa: ANN001,ANN002
            trainer.should_stop = trainer.global_step >= 2

    model, aq = TinyMLP(), ActQuant(bits=8, start_step=3)
    cpu_trainer(max_steps=4, callbacks=[aq, StopAt2()]).fit(model, mlp_loader())
    q = next(iter(aq.quantizer.quantizers.values()))
    assert not q.enabled and aq.clock.seen == 2
    cpu_trainer(max_steps=2, callbacks=[aq]).fit(model, mlp_loader())  # a new Trainer: steps 2, 3 of the model
    assert q.enabled and aq.clock.seen == 4
