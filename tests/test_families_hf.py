"""Hugging Face families built from their transformers configs (tiny sizes, random weights) x
HeadPruning, RowPruning, SparsePruning 2:4, WeightQuant 8 and Head+Row, each followed by ``clean``:

* the masked model computes what a plain copy with the effective weights baked in computes;
* the slim model computes what the masked model computed (rel <= 1e-5);
* the slim model has exactly the parameters the pruners reported as removed fewer;
* the config records the slim sizes, and where transformers can express them the architecture
  rebuilt from the config loads the slim weights (strict) and computes the same.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lightning_compress.callbacks import HeadPruning, RowPruning, SparsePruning, WeightQuant  # noqa: E402
from lightning_compress.core import masking  # noqa: E402
from lightning_compress.export import clean  # noqa: E402

V = 100


def _ids() -> torch.Tensor:
    return torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(1))


def _build(family: str):
    tf = transformers
    torch.manual_seed(0)
    inputs = {"input_ids": _ids()}
    if family == "distilbert":
        model = tf.DistilBertModel(tf.DistilBertConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                       max_position_embeddings=32))
    elif family == "albert":
        model = tf.AlbertModel(tf.AlbertConfig(vocab_size=V, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=64, max_position_embeddings=32))
    elif family == "deberta_v2":
        model = tf.DebertaV2Model(tf.DebertaV2Config(
            vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8,
            max_relative_positions=16, share_att_key=False))
    elif family in ("llama", "qwen2", "mistral"):
        cfg = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[family]
        model = tf.AutoModelForCausalLM.from_config(cfg(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            vocab_size=V, max_position_embeddings=64))
    elif family == "vit":
        model = tf.ViTModel(tf.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=64))
        inputs = {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))}
    elif family == "gpt2":  # Conv1D projections ([in, out] weights), fused q/k/v c_attn
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=32, n_inner=64,
                                                 bos_token_id=0, eos_token_id=0))
    elif family == "t5_encoder":
        model = tf.T5EncoderModel(tf.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                              feed_forward_proj="gated-gelu"))
    else:
        raise KeyError(family)
    model.config._attn_implementation = "eager"
    return model.eval(), inputs


FAMILIES = ["distilbert", "albert", "deberta_v2", "llama", "qwen2", "mistral", "vit", "t5_encoder", "gpt2"]
METHODS = {
    "head": lambda: [HeadPruning(sparsity=0.5)],
    "row": lambda: [RowPruning(sparsity=0.5)],
    "sparse_2:4": lambda: [SparsePruning(pattern="2:4")],
    "weight_quant_8": lambda: [WeightQuant(bits=8)],
    "head+row": lambda: [HeadPruning(sparsity=0.5), RowPruning(sparsity=0.5)],
}
#: (family, method) whose slim sizes the transformers config can express (uniform layers)
REBUILDS = {
    **{(f, m): True for f in ("llama", "qwen2", "mistral", "vit") for m in ("head", "row", "head+row")},
    **{(f, "row"): True for f in ("distilbert", "albert", "deberta_v2", "t5_encoder", "gpt2")},
}


def _out(model, inputs) -> torch.Tensor:
    out = model(**inputs)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-12))


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _compress(model, method):
    cbs = METHODS[method]()
    for cb in cbs:
        cb.attach(model)
        if hasattr(cb, "pruner"):
            for g in cb.pruner.groups:
                cb.prune_group(g, g.sparsity)
    return cbs


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", FAMILIES)
def test_family_method_then_clean(family, method):
    warnings.filterwarnings("ignore", category=UserWarning)
    model, inputs = _build(family)
    dense = copy.deepcopy(model)
    before = _numel(model)
    cbs = _compress(model, method)
    structured = [cb for cb in cbs if isinstance(cb, (HeadPruning, RowPruning))]
    reported = int(sum(t.pruned() for cb in structured for t in cb.pruner.targets))
    kept_heads = family == "t5_encoder" and "head" in method  # T5 heads are zeroed, not removed
    head_units = sum(t.pruned() for cb in structured if isinstance(cb, HeadPruning) for t in cb.pruner.targets)
    expected = before - reported + (int(head_units) if kept_heads else 0)

    baked = copy.deepcopy(model)
    masking.bake(baked)
    masking.strip(baked)
    with torch.no_grad():
        masked = _out(model, inputs)
        assert _rel(masked, _out(baked, inputs)) <= 1e-6
        assert _rel(masked, _out(dense, inputs)) > 1e-5, "nothing was compressed: the test would prove nothing"
        slim = clean(model)
        assert _rel(_out(slim, inputs), masked) <= 1e-5
    assert _numel(slim) == expected
    assert all(not masking.is_wrapped(m) for m in slim.modules())

    if REBUILDS.get((family, method)):
        rebuilt = type(slim)(slim.config).eval()
        rebuilt.load_state_dict(slim.state_dict(), strict=True)
        with torch.no_grad():
            assert _rel(_out(rebuilt, inputs), masked) <= 1e-5
    if kept_heads:
        assert any("zeroed but kept" in n and "relative position bias" in n for n in slim.lc_clean_notes)


def test_gqa_unit_is_a_kv_group_with_its_query_heads():
    """Masking one KV group = removing the contributions of exactly its query heads (o_proj columns)."""
    model, inputs = _build("llama")
    cb = HeadPruning(sparsity=0.5, modules=[r"layers\.0\.self_attn$"])
    cb.attach(model)
    (target,) = cb.pruner.targets
    target.load_mask(torch.tensor([True, False]))  # prune KV group 1 = query heads 2, 3 of layer 0
    ref = copy.deepcopy(model)
    masking.strip(ref)
    head_dim = ref.config.head_dim
    with torch.no_grad():
        ref.model.layers[0].self_attn.o_proj.weight[:, 2 * head_dim:] = 0
        masked = _out(model, inputs)
        assert _rel(masked, _out(ref, inputs)) <= 1e-5
        slim = clean(model)
    attn = slim.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features) == (2 * head_dim, head_dim, 2 * head_dim)
    assert attn.num_key_value_groups == 2
    assert slim.config.num_key_value_heads_per_layer == {0: 1, 1: 2}
    assert slim.config.num_attention_heads_per_layer == {0: 2, 1: 4}
    assert (slim.config.num_attention_heads, slim.config.num_key_value_heads) == (4, 2)  # layers differ: global stays
    with torch.no_grad():
        assert _rel(_out(slim, inputs), masked) <= 1e-5


def test_configs_record_slim_sizes():
    model, inputs = _build("llama")
    _compress(model, "head+row")
    slim = clean(model)
    c = slim.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size, c.head_dim) == (2, 1, 64, 16)
    assert c.intermediate_size_per_layer == {0: 64, 1: 64}

    model, _ = _build("distilbert")
    _compress(model, "head+row")
    slim = clean(model)
    assert slim.config.n_heads == 4 and slim.config.n_heads_per_layer == {0: 2, 1: 2}  # dim // n_heads: not expressible
    assert slim.transformer.layer[0].attention.n_heads == 2 and slim.config.hidden_dim == 32

    model, _ = _build("albert")  # one shared layer: one mask
    cbs = _compress(model, "head+row")
    assert [len(cb.pruner.targets) for cb in cbs] == [1, 1]
    slim = clean(model)
    assert slim.encoder.albert_layer_groups[0].albert_layers[0].attention.num_attention_heads == 2
    assert slim.config.intermediate_size == 32 and slim.config.num_attention_heads_per_layer == {0: 2}


def test_swiglu_gate_and_up_are_selected_together():
    model, _ = _build("llama")
    with pytest.raises(ValueError, match=r"RowPruning: 'model\.layers\.0\.mlp\.gate_proj' shares its rows with "
                                         r"\['model\.layers\.0\.mlp\.up_proj'\].*select all of"):
        RowPruning(sparsity=0.5, modules=[r"gate_proj"]).attach(model)


def test_lightning_module_without_forward_llama_head_and_row():
    """Fit a LightningModule with no ``forward`` (``training_step`` calls ``self.net``) under HeadPruning
    + RowPruning; ``clean`` of the module gives the slim Llama with the same outputs."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from tests.models import cpu_trainer

    class Wrapper(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net, _ = _build("llama")

        def training_step(self, batch, batch_idx):
            (ids,) = batch
            return self.net(input_ids=ids, labels=ids).loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    module = Wrapper()
    data = DataLoader(TensorDataset(torch.randint(0, V, (8, 7), generator=torch.Generator().manual_seed(2))), batch_size=4)
    cbs = [HeadPruning(sparsity=0.5, end_step=1), RowPruning(sparsity=0.5, end_step=1)]
    cpu_trainer(max_steps=2, callbacks=cbs).fit(module, data)
    inputs = {"input_ids": _ids()}
    module.eval()
    with torch.no_grad():
        masked = _out(module.net, inputs)
        slim = clean(module)
        assert _rel(_out(slim.net, inputs), masked) <= 1e-5
    c = slim.net.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size) == (2, 1, 64)
    assert slim.net.model.layers[1].mlp.gate_proj.out_features == 64


def test_gpt2_conv1d_heads_and_rows_sliced_in_stored_layout():
    """GPT-2's Conv1D weights are [in, out]: heads leave c_attn's columns (per q/k/v tile) and c_proj's
    rows, FFN rows leave c_fc's columns and c_proj's rows; the attention and config record the sizes."""
    model, inputs = _build("gpt2")
    cbs = [HeadPruning(sparsity=0.5, modules=[r"h\.0\.attn$"]), RowPruning(sparsity=0.5, modules=[r"h\.1\.mlp\.c_fc"])]
    for cb in cbs:
        cb.attach(model)
    (heads,), (rows,) = cbs[0].pruner.targets, cbs[1].pruner.targets
    heads.load_mask(torch.tensor([True, False, True, False]))
    keep_rows = torch.arange(64) % 3 != 0
    rows.load_mask(keep_rows)
    ref = copy.deepcopy(model)
    masking.strip(ref)
    with torch.no_grad():  # the reference: the same units zeroed by hand in the stored layout
        a = ref.transformer.h[0].attn
        for t in range(3):
            for h in (1, 3):
                a.c_attn.weight[:, t * 32 + h * 8:t * 32 + (h + 1) * 8] = 0
                a.c_attn.bias[t * 32 + h * 8:t * 32 + (h + 1) * 8] = 0
        mlp = ref.transformer.h[1].mlp
        mlp.c_fc.weight[:, ~keep_rows] = 0
        mlp.c_fc.bias[~keep_rows] = 0
        mlp.c_proj.weight[~keep_rows, :] = 0
        masked = _out(model, inputs)
        assert _rel(masked, _out(ref, inputs)) <= 1e-6
        slim = clean(model)
        assert _rel(_out(slim, inputs), masked) <= 1e-5
    a, mlp = slim.transformer.h[0].attn, slim.transformer.h[1].mlp
    assert tuple(a.c_attn.weight.shape) == (32, 48) and (a.c_attn.nf, a.c_attn.nx) == (48, 32)
    assert tuple(a.c_proj.weight.shape) == (16, 32) and (a.c_proj.nf, a.c_proj.nx) == (32, 16)
    assert (a.num_heads, a.split_size, a.head_dim) == (2, 16, 8)
    assert tuple(mlp.c_fc.weight.shape) == (32, int(keep_rows.sum())) and mlp.c_proj.nx == int(keep_rows.sum())
    c = slim.config
    assert c.n_head == 4 and c.n_head_per_layer == {0: 2, 1: 4}  # head size is n_embd // n_head: not expressible
    assert c.n_inner_per_layer == {0: 64, 1: int(keep_rows.sum())} and c.n_inner == 64


@pytest.mark.parametrize("family", FAMILIES)
def test_act_quant_8_then_clean(family):
    """ActQuant 8 (dynamic, per token) on every Linear / Conv1D input: ``clean`` keeps it as an input
    pre-hook, so the slim model computes what the quantized model computes in eval."""
    from lightning_compress.callbacks import ActQuant

    warnings.filterwarnings("ignore", category=UserWarning)
    model, inputs = _build(family)
    dense = copy.deepcopy(model)
    ActQuant(bits=8).attach(model)
    model.eval()
    with torch.no_grad():
        quantized = _out(model, inputs)
        assert _rel(quantized, _out(dense, inputs)) > 1e-5, "nothing was quantized: the test would prove nothing"
        slim = clean(model)
        assert _rel(_out(slim, inputs), quantized) <= 1e-5
