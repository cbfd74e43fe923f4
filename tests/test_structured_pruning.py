"""RowPruning / HeadPruning / ChannelPruning: masked model == slim model, counts, errors."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress.callbacks.channel_pruning import ChannelPruning
from lightning_compress.callbacks.head_pruning import HeadPruning
from lightning_compress.callbacks.row_pruning import RowPruning
from lightning_compress.callbacks.sparse_pruning import SparsePruning
from lightning_compress.core import masking
from lightning_compress.export import clean
from tests.models import TinyCNN, TinyMLP, cpu_trainer, image_loader, mlp_loader
from tests.structured_models import TinyBert, TinyMHA, TinyResNet, randomize_bn


def bert_loader(n: int = 16, seed: int = 0) -> tuple[DataLoader, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (n, 8), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    return DataLoader(TensorDataset(ids, y), batch_size=4), ids[:4]


def kept_params(model: nn.Module) -> int:
    """Parameters the structured masks keep (from the per-dim keep vectors on each module)."""
    total = 0
    for m in model.modules():
        dims_by_kind = m.__dict__.get("_lc_unit_dims", {})
        for pname, p in m._parameters.items():
            if p is None:
                continue
            n = p.numel()
            for kind, dims in dims_by_kind.items():
                for d in dims.get(pname, []):
                    vec = getattr(m, f"_lc_{kind}_d{d}")
                    n = n * int(vec.sum()) // vec.numel()
            total += n
    return total


def fit_and_compare(model, callbacks, loader, x, steps=4, atol=1e-5):
    torch.manual_seed(0)
    dense = copy.deepcopy(model).eval()
    cpu_trainer(max_steps=steps, callbacks=callbacks).fit(model, loader)
    model.eval()
    with torch.no_grad():
        masked = model(x)
    expected = kept_params(model)
    slim = clean(copy.deepcopy(model))
    with torch.no_grad():
        out = slim(x)
    torch.testing.assert_close(out, masked, atol=atol, rtol=1e-4)
    assert sum(p.numel() for p in slim.parameters()) == expected
    assert not any(masking.is_wrapped(m) for m in slim.modules())
    assert not any(b.startswith("_lc_") for m in slim.modules() for b in m._buffers)
    assert not any(a.startswith("_lc_") for m in slim.modules() for a in m.__dict__)
    return dense, slim, masked


def test_row_pruning_mlp_default_targets_and_equivalence():
    model = TinyMLP()
    cb = RowPruning(sparsity=0.5, end_step=2)
    _, slim, _ = fit_and_compare(model, [cb], mlp_loader(), torch.randn(6, 16))
    assert sorted(t.name for t in cb.targets) == ["net.0", "net.2"]  # never the classifier
    assert slim.net[0].out_features == 16 and slim.net[2].in_features == 16 and slim.net[2].out_features == 16
    assert slim.net[4].in_features == 16 and slim.net[4].out_features == 4
    assert type(slim.net[0]) is nn.Linear
    assert cb.sparsity_stats()["sparsity"] == pytest.approx(0.5)


def test_row_pruning_topk_masks_identical_rule():
    model = TinyMLP()
    cb = RowPruning(sparsity=0.25, method="topk", modules=[r"net\.0$"], start_step=1, end_step=3)
    fit_and_compare(model, [cb], mlp_loader(), torch.randn(6, 16))
    t = cb.targets[0]
    assert t.score.steps > 0 and int((~t.mask).sum()) == 8


def test_head_pruning_bert_equivalence_and_attributes():
    loader, x = bert_loader()
    model = TinyBert()
    cb = HeadPruning(sparsity=0.5, end_step=2)
    dense, slim, masked = fit_and_compare(model, [cb], loader, x)
    with torch.no_grad():
        assert not torch.allclose(dense(x), masked)  # the masks did something
    for layer in slim.bert.encoder.layer:
        att = layer.attention.self
        assert att.num_attention_heads == 2 and att.all_head_size == 16
        assert att.query.out_features == 16 and att.value.weight.shape == (16, 32)
        assert layer.attention.output.dense.in_features == 16
    assert set(slim.bert.config.pruned_heads) == {0, 1}
    assert all(len(v) == 2 for v in slim.bert.config.pruned_heads.values())


def test_head_and_row_and_sparse_combined_on_bert():
    loader, x = bert_loader()
    model = TinyBert()
    cbs = [
        HeadPruning(sparsity=0.5, end_step=2),
        RowPruning(sparsity=0.5, end_step=2),
        SparsePruning(sparsity=0.5, modules=[r"query$", r"intermediate\.dense$"], end_step=2),
    ]
    _, slim, _ = fit_and_compare(model, cbs, loader, x)
    inter = slim.bert.encoder.layer[0].intermediate.dense
    assert inter.out_features == 32 and slim.bert.encoder.layer[0].output.dense.in_features == 32
    assert (inter.weight == 0).float().mean() > 0.2  # the sparse mask was baked into the slim weight


def test_channel_pruning_resnet_with_sparse():
    model = TinyResNet()
    randomize_bn(model)
    cbs = [ChannelPruning(sparsity=0.5, end_step=2), SparsePruning(sparsity=0.5, modules=[r"layer1\.conv1"], end_step=2)]
    x = torch.randn(3, 3, 8, 8)
    dense, slim, masked = fit_and_compare(model, cbs, image_loader(), x)
    with torch.no_grad():
        assert not torch.allclose(dense(x), masked)
    # residual stages share one mask: stem and layer1.conv2 keep the same channels
    assert slim.stem.out_channels == slim.layer1.conv2.out_channels == slim.bn.num_features == 4
    assert slim.layer2.conv2.out_channels == slim.layer2.down[0].out_channels == 8
    assert slim.fc.in_features == 8 and slim.layer2.down[1].num_features == 8
    assert slim.layer1.conv1.in_channels == 4 and slim.layer2.conv1.in_channels == 4


def test_channel_pruning_tiny_cnn_default_skips_output_layer():
    model = TinyCNN()
    cb = ChannelPruning(sparsity=0.5, end_step=1)
    _, slim, _ = fit_and_compare(model, [cb], image_loader(), torch.randn(2, 3, 8, 8))
    assert slim.conv1.out_channels == 4 and slim.conv2.out_channels == 4 and slim.fc.in_features == 4


def test_mha_heads_removed_by_a_narrow_module():
    """Issue 10: heads of an nn.MultiheadAttention used to be zeroed and kept; clean now removes them
    (NarrowMultiheadAttention, still an nn.MultiheadAttention) and the slim model computes the same."""
    from lightning_compress.core.narrow_mha import NarrowMultiheadAttention

    xs, ys = torch.randn(16, 5, 8), torch.randint(0, 2, (16,))
    model = TinyMHA()
    cb = HeadPruning(sparsity=0.5, end_step=2)
    dense = copy.deepcopy(model).eval()
    cpu_trainer(max_steps=3, callbacks=[cb]).fit(model, DataLoader(TensorDataset(xs, ys), batch_size=4))
    model.eval()
    with torch.no_grad():
        masked = model(xs[:3])
        assert not torch.allclose(masked, dense(xs[:3]))
    keep = cb.targets[0].mask.clone()
    before = copy.deepcopy(model)
    slim = clean(copy.deepcopy(model))
    with torch.no_grad():
        torch.testing.assert_close(slim(xs[:3]), masked)
    assert type(slim.attn) is NarrowMultiheadAttention and isinstance(slim.attn, nn.MultiheadAttention)
    kept = [h for h in range(4) if keep[h]]
    d = 4
    assert slim.attn.num_heads == len(kept) and slim.attn.kept_heads == tuple(kept) and slim.attn.head_dim == d
    assert tuple(slim.attn.in_proj_weight.shape) == (3 * len(kept) * d, 16)
    assert tuple(slim.attn.out_proj.weight.shape) == (16, len(kept) * d)
    # the kept heads' rows / columns are the trained ones, in order
    w = before.attn.in_proj_weight.detach()
    rows = [t * 16 + h * d + i for t in range(3) for h in kept for i in range(d)]
    torch.testing.assert_close(slim.attn.in_proj_weight.detach(), w[rows])


# ----------------------------------------------------------------------------- errors at setup


def _setup(cb, model):
    cb.setup(cpu_trainer(max_steps=1), model, "fit")


def test_head_pruning_without_attention_errors():
    with pytest.raises(ValueError, match="HeadPruning: TinyMLP has no attention HeadPruning understands"):
        _setup(HeadPruning(sparsity=0.5), TinyMLP())


def test_head_pruning_all_heads_errors():
    with pytest.raises(ValueError, match=r"sparsity`=0.9 would remove all 4 heads of 'bert.encoder.layer.0.attention.self'"):
        _setup(HeadPruning(sparsity=0.9), TinyBert())
    with pytest.raises(ValueError, match="would remove every head"):
        _setup(HeadPruning(sparsity=0.9, scope="global"), TinyBert())


def test_channel_pruning_all_channels_errors():
    with pytest.raises(ValueError, match="would remove all 8 channels of 'conv1'"):
        _setup(ChannelPruning(sparsity=0.95, modules=["conv1"]), TinyCNN())


class CatNet(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.cat([self.a(x), self.b(x)], dim=1).mean((2, 3)))


def test_channel_pruning_unresolvable_coupling_names_layers():
    with pytest.raises(ValueError, match=r"cannot prune the channels of \['a'\].*'a' -> cat at node"):
        _setup(ChannelPruning(sparsity=0.5, modules=[r"^a$"]), CatNet())
    with pytest.raises(ValueError, match="no Conv2d of CatNet can be channel-pruned safely"):
        _setup(ChannelPruning(sparsity=0.5), CatNet())


def test_row_pruning_named_residual_layer_errors():
    with pytest.raises(ValueError, match=r"cannot prune the rows of 'net.4'.*reach the model output"):
        _setup(RowPruning(sparsity=0.5, modules=[r"net\.4"]), TinyMLP())
    with pytest.raises(ValueError, match="`modules` regex 'nothing' matches no Linear"):
        _setup(RowPruning(sparsity=0.5, modules=["nothing"]), TinyMLP())


def test_structured_rejects_gradient_methods():
    with pytest.raises(ValueError, match="RowPruning: `method`='snip' must be 'l1' or 'topk'"):
        RowPruning(method="snip")


def test_state_dict_roundtrip_restores_unit_masks():
    model = TinyMLP()
    cb = RowPruning(sparsity=0.5, end_step=1)
    cpu_trainer(max_steps=2, callbacks=[cb]).fit(model, mlp_loader())
    state = cb.state_dict()
    model2 = TinyMLP()
    cb2 = RowPruning(sparsity=0.5, end_step=1)
    cb2.load_state_dict(state)
    _setup(cb2, model2)
    for a, b in zip(cb.targets, cb2.targets):
        assert torch.equal(a.mask, b.mask)
    assert torch.equal(model2.net[0]._lc_row_mask_d0, model.net[0]._lc_row_mask_d0)


def test_exclude_regex_must_match_and_excludes():
    with pytest.raises(ValueError, match="`exclude` regex 'nothing' matches no module"):
        _setup(RowPruning(sparsity=0.5, exclude=["nothing"]), TinyMLP())
    cb = RowPruning(sparsity=0.5, exclude=[r"net\.2"])
    _setup(cb, TinyMLP())
    assert [t.name for t in cb.targets] == ["net.0"]


def test_row_pruning_related_modules_override_tracing():
    model = TinyMLP()
    cb = RowPruning(sparsity=0.5, modules=[r"net\.0$"], related_modules={r"net\.0$": [r"net\.2$"]}, end_step=1)
    _, slim, _ = fit_and_compare(model, [cb], mlp_loader(), torch.randn(4, 16), steps=2)
    assert slim.net[0].out_features == 16 and slim.net[2].in_features == 16 and slim.net[2].out_features == 32
    with pytest.raises(ValueError, match="`related_modules` consumer regex 'nope'"):
        _setup(RowPruning(related_modules={r"net\.0$": ["nope"]}), TinyMLP())


def test_channel_pruning_untraceable_model_errors():
    with pytest.raises(ValueError, match="ChannelPruning: needs torch.fx to trace TinyBert.*symbolic_trace failed"):
        _setup(ChannelPruning(sparsity=0.5), TinyBert())
