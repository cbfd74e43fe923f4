"""A LightningModule around a tiny random Llama for the OneShotCompression tests and scenarios."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.oneshot_models import VOCAB, tiny


class TinyLM(pl.LightningModule):
    def __init__(self, family: str = "llama", layers: int = 2) -> None:
        super().__init__()
        self.model = tiny(family, layers)

    def forward(self, x):
        return self.model(x).logits

    def training_step(self, batch, batch_idx):
        x = batch[0]
        return self.model(x, labels=x).loss

    def validation_step(self, batch, batch_idx):
        x = batch[0]
        loss = self.model(x, labels=x).loss
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def token_loader(n: int = 16, batch_size: int = 2, seq: int = 16, seed: int = 3) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randint(0, VOCAB, (n, seq), generator=g)), batch_size=batch_size, shuffle=False)


def first_batches(k: int, **kw) -> list[torch.Tensor]:
    return [b[0] for b, _ in zip(token_loader(**kw), range(k))]
