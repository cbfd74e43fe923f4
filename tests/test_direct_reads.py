"""Never wrong: masks and quantizers act on weights that a parent module reads directly.

``nn.MultiheadAttention`` reads ``out_proj.weight`` without calling ``out_proj.forward`` (and all its
weights on the eval fast path), ``nn.TransformerEncoderLayer``'s fast path reads every weight, torchvision
Swin's attention reads ``qkv`` / ``proj`` directly and torchvision ViT uses ``nn.MultiheadAttention``.
For each, the compressed model's output must equal that of a plain copy with the effective (masked /
quantized) weights baked in, in train and in eval mode; ``clean`` must give the same output again.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_compress.callbacks import ActQuant, HeadPruning, RowPruning, SparsePruning, WeightQuant
from lightning_compress.core import masking
from lightning_compress.core.direct_reads import direct_reads, guard_direct_reads, set_readees
from lightning_compress.export import clean


class MHANet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


class EncoderNet(nn.Module):
    def __init__(self, nested: bool = False) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=nested)
        self.fc = nn.Linear(32, 4)

    def forward(self, x, pad=None):
        return self.fc(self.enc(x, src_key_padding_mask=pad))


class DirectReader(nn.Module):
    """A user's module that uses its child's weight with ``F.linear`` instead of calling it."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(16, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(torch.relu(nn.functional.linear(x, self.inner.weight, self.inner.bias)))


def _vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    m = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=4)
    nn.init.normal_(m.heads.head.weight, std=0.2)  # torchvision zero-initialises the head
    return m


def _swin() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                           num_classes=4, stochastic_depth_prob=0.0)


MODELS = {
    "mha": (MHANet, (2, 5, 32)),
    "transformer_encoder": (EncoderNet, (2, 5, 32)),
    "direct_reader": (DirectReader, (3, 16)),
    "vit_b_16_small": (_vit, (2, 3, 32, 32)),
    "swin_t_small": (_swin, (2, 3, 32, 32)),
}
METHODS = {
    "sparse_2:4": lambda: [SparsePruning(pattern="2:4", start_step=0)],
    "weight_quant_8": lambda: [WeightQuant(bits=8)],
    "head_pruning": lambda: [HeadPruning(sparsity=0.5, start_step=0)],
    "row_pruning": lambda: [RowPruning(sparsity=0.5, start_step=0)],
    "head+row": lambda: [HeadPruning(sparsity=0.5, start_step=0), RowPruning(sparsity=0.5, start_step=0)],
}
_NO_ROWS = r"RowPruning: no Linear layer of \w+ feeds only other Linear layers"
_NO_HEADS = r"HeadPruning: DirectReader has no attention HeadPruning understands"
#: the cases refused at setup, with the error they raise
REFUSED = {
    ("mha", "row_pruning"): _NO_ROWS, ("mha", "head+row"): _NO_ROWS,
    ("direct_reader", "head_pruning"): _NO_HEADS, ("direct_reader", "head+row"): _NO_HEADS,
    ("direct_reader", "row_pruning"): _NO_ROWS,
}


def _build(name: str):
    torch.manual_seed(0)
    ctor, shape = MODELS[name]
    return ctor(), torch.randn(*shape)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-12))


def _compress(model: nn.Module, method: str):
    cbs = METHODS[method]()
    for cb in cbs:
        cb.attach(model)
        if hasattr(cb, "pruner"):
            for g in cb.pruner.groups:
                cb.prune_group(g, g.sparsity)
    return cbs[0]


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", list(MODELS))
def test_effective_weights_act_in_train_eval_and_clean(name, method):
    model, x = _build(name)
    if (name, method) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[name, method]):
            _compress(model, method)
        return
    _compress(model, method)
    baked = copy.deepcopy(model)
    masking.bake(baked)
    masking.strip(baked)
    dense = copy.deepcopy(baked)
    with torch.no_grad():
        for p, q in zip(dense.parameters(), _build(name)[0].parameters()):
            p.copy_(q)
        assert _rel(dense(x), baked(x)) > 1e-4, "the compression changed nothing: the test would prove nothing"
    for train in (True, False):
        model.train(train)
        baked.train(train)
        with torch.set_grad_enabled(train):
            assert _rel(model(x), baked(x)) <= 1e-6, f"{name} {method} train={train}"
    model.eval()
    with torch.no_grad():
        masked = model(x)
        slim = clean(model)
        assert _rel(slim(x), masked) <= 1e-5


def test_transformer_encoder_fast_path_runs_on_the_quantized_weights(monkeypatch):
    model, x = _build("transformer_encoder")
    _compress(model, "weight_quant_8")
    baked = copy.deepcopy(model)
    masking.bake(baked)
    masking.strip(baked)
    calls = []
    fast = torch._transformer_encoder_layer_fwd

    def counting(*args, **kwargs):
        calls.append(1)
        return fast(*args, **kwargs)

    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", counting)
    model.eval()
    baked.eval()
    with torch.no_grad():
        out = model(x)
        assert calls, "the eval fast path was not taken: the test would not cover it"
        assert _rel(out, baked(x)) <= 1e-6


def test_readers_found_and_unwrapped_on_remove():
    model, _ = _build("transformer_encoder")
    reads = direct_reads(model.enc.layers[0])
    assert set(reads) >= {"self_attn", "self_attn.out_proj", "linear1", "linear2"}
    assert direct_reads(model.enc.layers[0].self_attn) == {"out_proj": ["bias", "weight"]}
    cb = _compress(model, "sparse_2:4")
    guarded = guard_direct_reads(model)
    assert "enc.layers.0" in guarded and "enc.layers.0.self_attn.out_proj" in guarded["enc.layers.0.self_attn"]
    cb.remove()
    assert all(not masking.is_wrapped(m) for m in model.modules())


def test_act_quant_on_a_child_never_called_is_refused():
    model, _ = _build("vit_b_16_small")
    with pytest.raises(ValueError, match=r"ActQuant: module 'encoder\.layers\.encoder_layer_0\.self_attention\.out_proj' "
                                         r"has an input .* reads its weights directly and never calls its forward"):
        ActQuant(bits=8).attach(model)
    assert all(not masking.is_wrapped(m) for m in model.modules())


def test_act_quant_under_a_fast_path_reader_still_runs():
    model, x = _build("transformer_encoder")
    cb = ActQuant(bits=8, exclude=["out_proj"])
    cb.attach(model)
    seen = set()
    for name, module in cb.modules_touched.items():
        t = masking.input_transforms(module)[0]

        def counted(mod, inp, fn=t.fn, name=name):
            seen.add(name)
            return fn(mod, inp)

        module._lc_input_transforms[0] = masking.Transform(t.owner, t.kind, t.priority, counted)
    model.eval()
    with torch.no_grad():
        model(x)
    assert seen == set(cb.modules_touched) and {"enc.layers.0.linear1", "enc.layers.1.linear2"} <= seen
    assert torch.backends.mha.get_fastpath_enabled()


def test_post_training_quantize_guards_direct_reads():
    from lightning_compress.ptq import quantize

    model, x = _build("vit_b_16_small")
    quantize(model, None, weight_bits=8, act_bits=None)
    baked = copy.deepcopy(model)
    masking.bake(baked)
    masking.strip(baked)
    model.eval()
    baked.eval()
    with torch.no_grad():
        assert _rel(model(x), baked(x)) <= 1e-6
    model, _ = _build("mha")
    with pytest.raises(ValueError, match=r"quantize: module 'attn\.out_proj' has an input"):
        quantize(model, None, weight_bits=8, act_bits=8, exclude=["fc"])
    assert all(not masking.is_wrapped(m) for m in model.modules())


def test_deberta_encoder_reads_rel_embeddings_weight_directly():
    """``DebertaV2Encoder.get_rel_embedding`` uses ``self.rel_embeddings.weight``: quantizing it must act."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.DebertaV2Model(transformers.DebertaV2Config(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8,
        max_relative_positions=16)).eval()
    for p in model.parameters():  # the default init (std 0.02) makes the relative terms invisible
        if p.dim() > 1:
            nn.init.normal_(p, std=0.5)
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    WeightQuant(bits=4, modules=[r"rel_embeddings"]).attach(model)
    assert "encoder" in guard_direct_reads(model)
    baked = copy.deepcopy(model)
    masking.bake(baked)
    masking.strip(baked)
    with torch.no_grad():
        assert _rel(model(input_ids=ids).last_hidden_state, baked(input_ids=ids).last_hidden_state) <= 1e-6
        set_readees(model.encoder, [])  # without the guard the quantizer is bypassed (rel ~0.09)
        assert _rel(model(input_ids=ids).last_hidden_state, baked(input_ids=ids).last_hidden_state) > 1e-3


def test_transformer_encoder_nested_tensor_fast_path_with_padding():
    """``enable_nested_tensor`` + a padding mask in eval: the encoder converts to a nested tensor and
    every layer takes the fast path; 2:4 masks and row pruning still act, and clean matches."""
    torch.manual_seed(0)
    model, x = EncoderNet(nested=True), torch.randn(2, 6, 32)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    for cb in (SparsePruning(pattern="2:4", modules=[r"out_proj", r"linear2"]),
               RowPruning(sparsity=0.5)):
        cb.attach(model)
        for g in cb.pruner.groups:
            cb.prune_group(g, g.sparsity)
    baked = copy.deepcopy(model)
    masking.bake(baked)
    masking.strip(baked)
    model.eval()
    baked.eval()
    keep = ~pad  # padded positions of a nested-tensor run come back as zeros
    with torch.no_grad():
        out = model(x, pad)
        assert _rel(out[keep], baked(x, pad)[keep]) <= 1e-5
        slim = clean(model)
        assert slim.enc.layers[0].linear1.out_features == 32
        assert _rel(slim(x, pad)[keep], out[keep]) <= 1e-5


def test_row_pruning_traces_through_modules_that_already_carry_masks():
    """fx keeps a module carrying transforms as a leaf: tracing into it ran the masks and stored their
    results on the model as ``_tensor_constant*`` (and hid the Linear, so RowPruning found no rows)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    SparsePruning(sparsity=0.5, modules=[r"^2$"]).attach(model)
    rows = RowPruning(sparsity=0.5)
    rows.attach(model)
    assert [t.name for t in rows.pruner.targets] == ["0", "2"]
    assert not [k for k in model.__dict__ if k.startswith("_tensor_constant")]
    copy.deepcopy(model)
