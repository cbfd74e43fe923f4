"""Coupling discovery (fx / HF heuristic) and physical removal."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_compress.core.families import channel_spaces
from lightning_compress.core.graph import related_spaces, trace_channel_spaces
from lightning_compress.core.masking import strip
from lightning_compress.core.surgery import Member, UnitGroup, attach_group, remove_units, sync_group
from tests.models import TinyMLP
from tests.structured_models import TinyBert, TinyResNet, randomize_bn


def _by_producers(spaces):
    return {tuple(sorted(s.producers)): s for s in spaces}


def test_mlp_chain_spaces():
    spaces = _by_producers(trace_channel_spaces(TinyMLP()))
    assert sorted(spaces[("net.0",)].consumers) == ["net.2"] and spaces[("net.0",)].ok
    assert sorted(spaces[("net.2",)].consumers) == ["net.4"] and spaces[("net.2",)].ok
    assert not spaces[("net.4",)].ok and "model output" in spaces[("net.4",)].problems[0]


def test_resnet_residual_groups_share_one_space():
    spaces = _by_producers(trace_channel_spaces(TinyResNet()))
    stage1 = spaces[("layer1.conv2", "stem")]
    assert stage1.ok
    assert sorted(stage1.norms) == ["bn", "layer1.bn2"]
    assert sorted(stage1.consumers) == ["layer1.conv1", "layer2.conv1", "layer2.down.0"]
    stage2 = spaces[("layer2.conv2", "layer2.down.0")]
    assert sorted(stage2.consumers) == ["fc"] and sorted(stage2.norms) == ["layer2.bn2", "layer2.down.1"]
    inner = spaces[("layer1.conv1",)]
    assert sorted(inner.consumers) == ["layer1.conv2"] and sorted(inner.norms) == ["layer1.bn1"]


class CatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        y = self.c(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.fc(y.flatten(1))


def test_unresolvable_couplings_are_named():
    spaces = _by_producers(trace_channel_spaces(CatNet()))
    assert "'a'" in spaces[("a",)].problems[0] and "cat" in spaces[("a",)].problems[0]
    assert "flatten" in spaces[("c",)].problems[0] and "'c'" in spaces[("c",)].problems[0]


def test_hf_heuristic_when_fx_fails():
    spaces, how = channel_spaces(TinyBert())
    assert how == "hf_heuristic"
    assert sorted(p for s in spaces for p in s.producers) == [
        "bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.1.intermediate.dense"]


def test_untraceable_without_heuristic_raises():
    class Dyn(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum() > 0:
                return self.l(x)
            return x

    with pytest.raises(ValueError, match="symbolic_trace failed.*related_modules"):
        channel_spaces(Dyn())


def test_related_spaces_errors():
    with pytest.raises(ValueError, match="matches no Linear/Conv2d"):
        related_spaces(TinyMLP(), {"nope": ["net.2"]}, "RowPruning")
    sp = related_spaces(TinyMLP(), {r"net\.0$": [r"net\.2$"]}, "RowPruning")
    assert list(sp[0].consumers) == ["net.2"]


def test_surgery_linear_pair_and_shapes():
    torch.manual_seed(0)
    a, b = nn.Linear(6, 8), nn.Linear(8, 3)
    model = nn.Sequential(a, nn.Sigmoid(), b)  # sigmoid(0) != 0: consumer columns must be masked too
    g = UnitGroup("0", "row_mask", 8, [Member("0", a, "out", ("weight", "bias"), 0), Member("2", b, "in", ("weight",), 1)], holder=a)
    attach_group(g, "test")
    keep = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    g.mask.copy_(keep)
    sync_group(g)
    x = torch.randn(5, 6)
    with torch.no_grad():
        masked = model(x)
        from lightning_compress.core.masking import bake

        bake(model)
        remove_units(model)
        strip(model)
        slim = model(x)
    assert type(a) is nn.Linear and not any(n.startswith("_lc_") for n in a._buffers)
    assert (a.out_features, a.in_features, b.in_features) == (5, 6, 5)
    assert a.weight.shape == (5, 6) and a.bias.shape == (5,) and b.weight.shape == (3, 5)
    torch.testing.assert_close(masked, slim)


def test_surgery_conv_bn_updates_every_shape_attribute():
    torch.manual_seed(0)
    c1, bn, c2 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Conv2d(6, 4, 1)
    model = nn.Sequential(c1, bn, nn.ReLU(), c2).eval()
    randomize_bn(model)
    g = UnitGroup("0", "channel_mask", 6, [
        Member("0", c1, "out", ("weight", "bias"), 0),
        Member("1", bn, "out", ("weight", "bias", "running_mean", "running_var"), 0),
        Member("3", c2, "in", ("weight",), 1),
    ], holder=c1)
    attach_group(g, "t")
    g.mask.copy_(torch.tensor([0, 1, 1, 0, 1, 0], dtype=torch.bool))
    sync_group(g)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        masked = model(x)
        # BN output is exactly 0 in pruned channels of the masked model
        assert (bn(c1(x))[:, [0, 3, 5]] == 0).all()
        from lightning_compress.export import clean

        clean(model)
        slim = model(x)
    assert (c1.out_channels, bn.num_features, c2.in_channels) == (3, 3, 3)
    assert bn.running_mean.shape == (3,) and bn.running_var.shape == (3,) and bn.weight.shape == (3,)
    torch.testing.assert_close(masked, slim)
