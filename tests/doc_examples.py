"""Stand-ins for the names the callbacks' docstring examples leave to the reader.

Every public callback's class docstring has one ``Example (...)::`` block that uses ``model`` (your
LightningModule), ``datamodule`` and ``x`` (a batch of the model's input).  :func:`stand_ins` gives tiny
ones of the kind each callback needs (an MLP, a conv net, a small Hugging Face BERT); each model ends its fit
after :data:`STOP_AFTER` optimizer steps (``trainer.should_stop``), so an example's ``max_steps`` may be
what a real run would use.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from examples._help import docstring_example  # noqa: F401  (the extractor the CLI help uses)
from tests.models import TinyMLP
from tests.structured_models import TinyResNet

STOP_AFTER = 3


class _Stop:
    def on_train_batch_end(self, outputs, batch, batch_idx):  # noqa: ANN001
        if self.trainer.global_step >= STOP_AFTER:
            self.trainer.should_stop = True


class _MLP(_Stop, TinyMLP):
    pass


class _CNN(_Stop, TinyResNet):
    pass


class _Bert(_Stop, pl.LightningModule):
    """A 4-layer HF BertForSequenceClassification (hidden 32, 4 heads) as ``self.model``, as in examples/bert."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, num_labels=2)
        self.model = BertForSequenceClassification(cfg)

    def forward(self, input_ids):
        return self.model(input_ids=input_ids).logits

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class _Data(pl.LightningDataModule):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__()
        self.x, self.y = x, y

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=8)


def stand_ins(kind: str) -> dict:
    """``{"model", "datamodule", "x"}`` of ``kind`` ``"mlp"`` | ``"cnn"`` | ``"bert"``."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if kind == "mlp":
        model, x = _MLP(), torch.randn(64, 16, generator=g)
        y = x[:, :4].argmax(1)
    elif kind == "cnn":
        model, x = _CNN(), torch.randn(64, 3, 8, 8, generator=g)
        y = torch.randint(0, 4, (64,), generator=g)
    elif kind == "bert":
        model, x = _Bert(), torch.randint(0, 50, (64, 12), generator=g)
        y = torch.randint(0, 2, (64,), generator=g)
    else:
        raise ValueError(kind)
    return {"model": model, "datamodule": _Data(x, y), "x": x[:5]}
