"""Tiny models with validation / test / predict steps for the lifecycle tests (no downloads)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.models import TinyMLP, image_loader, mlp_loader
from tests.structured_models import TinyBert, TinyResNet, randomize_bn


class _Eval:
    """validation / test steps log the loss as ``loss``; predict returns the logits."""

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("loss", nn.functional.cross_entropy(self(x), y), sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("loss", nn.functional.cross_entropy(self(x), y), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return self(batch[0])


class MLP(_Eval, TinyMLP):
    pass


class ResNet(_Eval, TinyResNet):
    def __init__(self) -> None:
        super().__init__()
        randomize_bn(self)


class Bert(_Eval, TinyBert):
    pass


class _Blocks(nn.Module):
    """input projection, 4 residual blocks (a layer stack), head."""

    def __init__(self, n: int = 4, h: int = 16) -> None:
        super().__init__()
        self.inp = nn.Linear(16, h)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(h, h), nn.Tanh()) for _ in range(n))
        self.head = nn.Linear(h, 4)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)


class Stack(_Eval, pl.LightningModule):
    """A LightningModule holding a network with a layer stack (for LayerReductionKD)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _Blocks()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def token_loader(n: int = 16, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50, (n, 8), generator=g)
    return DataLoader(TensorDataset(x, torch.randint(0, 2, (n,), generator=g)), batch_size=batch_size)


def fresh(model_cls: type) -> pl.LightningModule:
    """The same initial weights for every call."""
    torch.manual_seed(0)
    return model_cls()


LOADERS = {MLP: lambda: mlp_loader(n=32), Stack: lambda: mlp_loader(n=32), ResNet: lambda: image_loader(n=16), Bert: token_loader}
