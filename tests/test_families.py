"""Model-family registry: the built-in families, and a new family registered from this file."""

from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress.callbacks.head_pruning import HeadPruning
from lightning_compress.core import families
from lightning_compress.core.families import AttentionInfo, Family, Projection, register_family
from lightning_compress.export import clean
from tests.models import cpu_trainer
from tests.structured_models import TinyBert, TinyMHA


class ToyAttention(nn.Module):
    """Self-attention with separate ``q``, ``k``, ``v``, ``o`` Linear layers; heads inferred with -1."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.num_heads, self.head_dim = heads, dim // heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(b, t, -1))


class ToyModel(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Linear(8, 16)
        self.attn = ToyAttention()
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        return self.fc((h + self.attn(h)).mean(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class ToyFamily(Family):
    name = "toy_attention"
    description = "ToyAttention (q/k/v/o Linear layers, num_heads / head_dim attributes)"

    def attention(self, name, module, named):
        if not isinstance(module, ToyAttention):
            return None
        return AttentionInfo(
            family=self, name=name, module=module, num_heads=module.num_heads, head_size=module.head_dim,
            inputs=[Projection.linear(f"{name}.{a}", getattr(module, a)) for a in ("q", "k", "v")],
            output=Projection.linear(f"{name}.o", module.o, with_bias=False),
        )

    def update_after_head_removal(self, info, keep):
        info.module.num_heads = sum(keep)


@pytest.fixture
def toy_family():
    register_family(ToyFamily)
    yield
    families.unregister_family(ToyFamily.name)


def test_builtin_families_and_queries():
    assert [f.name for f in families.FAMILIES][:3] == ["hf_bert", "hf_transformers", "torch_mha"]
    found = families.find_attentions(TinyBert())
    assert sorted(found) == [f"bert.encoder.layer.{i}.attention.self" for i in (0, 1)]
    info = found["bert.encoder.layer.1.attention.self"]
    assert info.family is families.get_family("hf_bert") and (info.num_heads, info.head_size) == (4, 8)
    assert [p.name.rsplit(".", 1)[1] for p in info.inputs] == ["query", "key", "value"]
    assert info.output.name == "bert.encoder.layer.1.attention.output.dense" and info.layer_index == 1
    mha = families.find_attentions(TinyMHA())["attn"]
    assert mha.family.name == "torch_mha" and mha.removable and mha.inputs[0].tiles == 3  # narrowed at clean
    assert copy.deepcopy(mha).family is mha.family  # families are stateless singletons
    assert families.layer_count(TinyBert().bert) == 2 and families.layer_count(TinyMHA()) is None
    assert not families.supports_attentions(TinyMHA())
    assert families.takes_keyword_inputs(TinyBert().bert) and not families.takes_keyword_inputs(TinyBert())


def test_register_family_checks_and_replaces():
    with pytest.raises(TypeError, match="not a subclass"):
        register_family(object)  # type: ignore[arg-type]

    class Nameless(Family):
        pass

    with pytest.raises(TypeError, match="has no `name`"):
        register_family(Nameless)
    n = len(families.FAMILIES)
    register_family(ToyFamily)
    register_family(ToyFamily)  # same name: replaced in place, not added twice
    assert len(families.FAMILIES) == n + 1
    families.unregister_family(ToyFamily.name)
    assert len(families.FAMILIES) == n
    with pytest.raises(KeyError, match="no model family 'toy_attention'"):
        families.get_family("toy_attention")


def test_toy_family_head_pruning_slim_equals_masked(toy_family):
    xs, ys = torch.randn(16, 5, 8), torch.randint(0, 2, (16,))
    model = ToyModel()
    dense = copy.deepcopy(model).eval()
    cb = HeadPruning(sparsity=0.5, end_step=2)
    cpu_trainer(max_steps=3, callbacks=[cb]).fit(model, DataLoader(TensorDataset(xs, ys), batch_size=4))
    assert [t.name for t in cb.targets] == ["attn"]
    model.eval()
    with torch.no_grad():
        masked = model(xs[:3])
        assert not torch.allclose(masked, dense(xs[:3]))
    slim = clean(copy.deepcopy(model))
    with torch.no_grad():
        torch.testing.assert_close(slim(xs[:3]), masked, atol=1e-5, rtol=1e-4)
    att = slim.attn
    assert type(att) is ToyAttention and att.num_heads == 2
    assert att.q.out_features == att.k.out_features == att.v.out_features == 8 and att.o.in_features == 8
    assert att.o.out_features == 16 and att.o.bias.shape == (16,)


def test_unknown_model_without_family_has_no_attention():
    assert families.find_attentions(ToyModel()) == {}
