"""ChannelPruning on the real forward: depthwise / grouped convs, concatenations, flatten -> Linear,
squeeze-excite, and a LightningModule without ``forward`` (slim output == masked output, parameter
count as the masks report, clear errors where refused)."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
from torchvision.models.regnet import BlockParams, RegNet

from lightning_compress import ChannelPruning
from lightning_compress.core.channel_trace import record_channel_spaces
from lightning_compress.export import clean
from tests.models import cpu_trainer
from tests.test_structured_pruning import kept_params


def _randomize(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def prune_and_compare(model: nn.Module, x: torch.Tensor, **kwargs) -> tuple[nn.Module, ChannelPruning]:
    """One 50% prune event, then masked (eval) == clean()ed slim, and the slim count == the masks' count."""
    _randomize(model)
    cb = ChannelPruning(sparsity=0.5, example_input=x, **kwargs)
    cb.attach(model)
    for g in cb.pruner.groups:
        cb.pruner.prune_group(g, 0.5)
    model.eval()
    with torch.no_grad():
        masked = model(x)
    expected = kept_params(model)
    before = sum(p.numel() for p in model.parameters())
    slim = clean(copy.deepcopy(model))
    with torch.no_grad():
        out = slim(x)
    rel = float((out - masked).norm() / masked.norm())
    assert rel <= 1e-5, rel
    after = sum(p.numel() for p in slim.parameters())
    assert after == expected
    assert after < 0.6 * before  # channels really went
    return slim, cb


def test_mobilenet_v2_depthwise_convs_pruned_with_their_input():
    model = torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=4)
    slim, _ = prune_and_compare(model, torch.randn(2, 3, 32, 32))
    dw = [m for m in slim.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dw and all(m.groups == m.in_channels == m.out_channels for m in dw)
    orig = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert sum(m.out_channels for m in dw) < 0.6 * sum(m.out_channels for m in orig)


def test_efficientnet_small_squeeze_excite_and_depthwise():
    setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    model = EfficientNet(setting, dropout=0.2, num_classes=4, last_channel=last)
    slim, _ = prune_and_compare(model, torch.randn(2, 3, 32, 32))
    se = slim.features[1][0].block[1]  # the first block's SqueezeExcitation
    dw = slim.features[1][0].block[0][0]
    assert se.fc2.out_channels == dw.out_channels == se.fc1.in_channels  # excite channels = scaled channels


def test_regnet_grouped_convs_pruned_periodically():
    params = BlockParams.from_init_params(depth=2, w_0=16, w_a=8.0, w_m=2.0, group_width=4, se_ratio=0.25)
    model = RegNet(params, num_classes=4)
    slim, cb = prune_and_compare(model, torch.randn(2, 3, 32, 32))
    grouped = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels]
    assert grouped
    for n, m in grouped:
        s = slim.get_submodule(n)
        assert s.groups == m.groups and s.in_channels == s.out_channels == m.in_channels // 2
    ug = next(t.unit_group for t in cb.targets if any(mb.module is grouped[0][1] and mb.role == "in" for mb in t.unit_group.members))
    assert ug.num_units == 4  # a group's width: the same channel positions in every group


def test_densenet_concat_offsets():
    model = torchvision.models.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    slim, _ = prune_and_compare(model, x)
    layer = slim.features.denseblock1.denselayer2
    assert layer.norm1.num_features == layer.conv1.in_channels == 4 + 2  # stem's 8 -> 4, layer 1's 4 -> 2
    spaces = record_channel_spaces(model, lambda: model(x))
    stem = next(sp for sp in spaces if "features.conv0" in sp.producers)
    offsets = {(s.name, s.offset) for s in stem.slots if s.role == "in"}
    assert ("features.denseblock1.denselayer2.conv1", 0) in offsets


class TinyVGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.classifier = nn.Sequential(nn.Linear(16 * 9, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def test_vgg_flatten_linear_in_blocks_of_spatial_size():
    model = TinyVGG()
    slim, _ = prune_and_compare(model, torch.randn(2, 3, 16, 16))
    assert slim.features[4].out_channels == 8 and slim.classifier[0].in_features == 8 * 9
    assert slim.classifier[0].out_features == 16 and slim.classifier[3].in_features == 16
    # convs only: the hidden Linear keeps its features
    slim2, _ = prune_and_compare(TinyVGG(), torch.randn(2, 3, 16, 16), linear=False)
    assert slim2.classifier[0].out_features == 32 and slim2.classifier[0].in_features == 8 * 9


class NoForwardResNet(pl.LightningModule):
    """torchvision resnet18 held as ``self.net``; no ``forward``: ``training_step`` calls the net."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=4)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_resnet18_in_lightning_module_without_forward():
    torch.manual_seed(0)
    model = NoForwardResNet()
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 4, (8,), generator=g))
    cb = ChannelPruning(sparsity=0.5, end_step=1)
    cpu_trainer(max_steps=2, callbacks=[cb]).fit(model, DataLoader(data, batch_size=4))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        masked = model.net(x)
    expected = kept_params(model)
    slim = clean(copy.deepcopy(model))
    with torch.no_grad():
        out = slim.net(x)
    assert float((out - masked).norm() / masked.norm()) <= 1e-5
    assert sum(p.numel() for p in slim.parameters()) == expected
    assert slim.net.conv1.out_channels == 32 and slim.net.layer1[0].conv2.out_channels == 32
    assert slim.net.fc.in_features == 256 and slim.net.fc.out_features == 4


class LayerNormOverChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.norm = nn.LayerNorm(8)
        self.b = nn.Conv2d(8, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > -1e9:  # data-dependent: fx cannot trace it
            x = self.a(x)
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.b(x).mean((2, 3))


def test_refused_coupling_names_the_op_and_untraceable_without_example_errors():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"cannot prune the channels of \['a'\].*'a' -> layer_norm"):
        ChannelPruning(sparsity=0.5, modules=[r"^a$"], example_input=x).attach(LayerNormOverChannels())
    with pytest.raises(ValueError, match=r"needs torch.fx to trace LayerNormOverChannels or an example input.*example_input="):
        ChannelPruning(sparsity=0.5).attach(LayerNormOverChannels())
    with pytest.raises(ValueError, match=r"recording the forward of LayerNormOverChannels on `example_input` failed: RuntimeError"):
        ChannelPruning(sparsity=0.5, example_input=torch.randn(1, 5, 8, 8)).attach(LayerNormOverChannels())
    with pytest.raises(ValueError, match="`linear`=1 must be True or False"):
        ChannelPruning(linear=1)


def test_division_by_tracked_channels_is_refused():
    class DivNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.c(self.a(x) / self.b(x).exp())

    model = DivNet()
    spaces = record_channel_spaces(model, lambda: model(torch.randn(1, 3, 4, 4)))
    b = next(sp for sp in spaces if "b" in sp.producers)
    assert not b.ok and "divides by channels" in b.problems[0]


class NoForwardVGG(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = TinyVGG()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.body(x), y)


def test_lightning_module_without_forward_takes_example_as_batch():
    model = NoForwardVGG()
    batch = (torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    cb = ChannelPruning(sparsity=0.5, example_input=batch)
    cb.attach(model)
    producers = sorted(n for t in cb.targets for n in {m.name for m in t.unit_group.members if m.role == "out"})
    assert producers == ["body.classifier.0", "body.features.0", "body.features.1", "body.features.4"]
    with pytest.raises(ValueError, match="needs torch.fx to trace NoForwardVGG or an example input"):
        ChannelPruning(sparsity=0.5).attach(NoForwardVGG())
