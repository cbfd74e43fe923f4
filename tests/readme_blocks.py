"""README.md's runnable code blocks, and the tiny stand-ins for the names they leave to the reader.

A block is runnable when the line right before its opening fence is ``<!-- runnable: NAMES -->``;
NAMES (comma-separated, may be empty) are what the block uses without defining: ``model`` (a
LightningModule), ``datamodule`` (a LightningDataModule) and ``x`` (a batch of the model's input).
:data:`PRELUDE` defines how to make them and :data:`FRESH` makes new ones before every block; it imports lightning but never lightning_compress, so each block's own
imports are what registers our names, as in a user's program.

The tiny ``model`` ends its fit after :data:`STOP_AFTER` optimizer steps by setting
``trainer.should_stop`` (Lightning's own way to stop), so a README Trainer needs no ``max_steps``.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STOP_AFTER = 3
MARKER = re.compile(r"^<!-- runnable:(?P<names>[^>]*)-->\s*$")
KNOWN_NAMES = {"model", "datamodule", "x"}


def runnable_blocks(text: str) -> list[tuple[int, set[str], str]]:
    """``(line number of the fence, names, code)`` of every marked ```python block, in order."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        if i + 1 >= len(lines) or lines[i + 1].strip() != "```python":
            raise ValueError(f"README.md:{i + 1}: a runnable marker must be followed by a ```python fence")
        names = {n.strip() for n in m.group("names").split(",") if n.strip()}
        unknown = names - KNOWN_NAMES
        if unknown:
            raise ValueError(f"README.md:{i + 1}: runnable names {sorted(unknown)} unknown; known: {sorted(KNOWN_NAMES)}")
        end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
        blocks.append((i + 2, names, "\n".join(lines[i + 2:end]) + "\n"))
    return blocks


PRELUDE = f'''
import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class _ReadmeModel(pl.LightningModule):
    """16 -> 32 -> 32 -> 4 MLP; stops the fit after {STOP_AFTER} optimizer steps."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.trainer.global_step >= {STOP_AFTER}:
            self.trainer.should_stop = True

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class _ReadmeData(pl.LightningDataModule):
    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 16, generator=g)
        return DataLoader(TensorDataset(x, x[:, :4].argmax(1)), batch_size=8)


def _fresh():
    """New stand-ins for the next block (each README block reads as if on its own)."""
    torch.manual_seed(0)
    return _ReadmeModel(), _ReadmeData(), torch.randn(5, 16)
'''

#: run before every block
FRESH = "model, datamodule, x = _fresh()"
