"""The DeepSpeed Compression configs published by DeepSpeedExamples (``compression/{bert,cifar,gpt2}/config``,
the ``*_TEMPLATE.json`` files filled as ``bert/bash_script/*.sh`` fill them) and DeepSpeed's unit test, as data
(``tests/data/deepspeed_configs/*.json``: each file's ``compression_training`` section, keys and values
unchanged, with its ``source``), tiny models with the module names they expect, and the checks of what
DeepSpeed's code did with them.  Shared by ``test_deepspeed_published.py`` and the 2-rank scenarios."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.structured_models import Block

DATA = Path(__file__).parent / "data" / "deepspeed_configs"
HIDDEN, HEADS, FFN, VOCAB, SEQ = 48, 12, 96, 64, 8


def published(name: str) -> dict[str, Any]:
    """``{"compression_training": ...}`` of one published file (``{}`` when it has no such section)."""
    d = json.loads((DATA / f"{name}.json").read_text())
    return {} if d["compression_training"] is None else {"compression_training": d["compression_training"]}


def names() -> list[str]:
    return sorted(p.stem for p in DATA.glob("*.json"))


def shrink(cfg: dict[str, Any]) -> dict[str, Any]:
    """The same config with its schedule squeezed into 4 optimizer steps (offsets <= 1, snip_momentum
    from step 1 to 3 every step, MoQ periods 0 = one bit per step); every other key and value kept."""
    cfg = copy.deepcopy(cfg)
    for method in cfg.get("compression_training", {}).values():
        shared = method.get("shared_parameters", {})
        if "schedule_offset" in shared:
            shared["schedule_offset"] = min(shared["schedule_offset"], 1)
        if "schedule_offset_end" in shared:
            shared["schedule_offset_end"] = 3
        if "schedule_offset_stride" in shared:
            shared["schedule_offset_stride"] = 1
        for group in method.get("different_groups", {}).values():
            if "quantization_period" in group.get("params", {}):
                group["params"]["quantization_period"] = 0
    return cfg


def strategy_config(cfg: dict[str, Any], stage: int = 0) -> dict[str, Any]:
    return {"zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True, "train_micro_batch_size_per_gpu": 4, **cfg}


# ------------------------------------------------------------------------------------------------ models
def bert_config(layers: int = 2):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS, intermediate_size=FFN,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2,
    )


class HF(pl.LightningModule):
    """A Hugging Face model as ``self.model`` (the names the configs expect: ``bert.encoder.layer``, ``transformer.h``)."""

    def __init__(self, model: nn.Module, lm: bool = False, lr: float = 0.05) -> None:
        super().__init__()
        self.model, self.lm, self.lr = model, lm, lr

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits

    def training_step(self, batch, batch_idx):
        ids, y = batch
        if self.lm:
            return self.model(input_ids=ids, labels=ids).loss
        return nn.functional.cross_entropy(self(ids), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def bert(layers: int = 2, seed: int = 0, lr: float = 0.05) -> HF:
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return HF(BertForSequenceClassification(bert_config(layers)), lr=lr)


def gpt2(seed: int = 0) -> HF:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=HIDDEN, n_layer=2, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0)
    return HF(GPT2LMHeadModel(cfg), lm=True)


class ResNet(nn.Module):
    """A CIFAR ResNet with torchvision-style names (``layer1.0.conv1``), which ``layer....conv1`` matches."""

    def __init__(self, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(Block(width, width))
        self.layer2 = nn.Sequential(Block(width, 2 * width, stride=2))
        self.linear = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.linear(x.mean(dim=(2, 3)))


class Cifar(pl.LightningModule):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.model = ResNet()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def ids_loader(n: int = 16, batch_size: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randint(0, VOCAB, (n, SEQ), generator=g), torch.randint(0, 2, (n,), generator=g)), batch_size=batch_size)


def image_loader(n: int = 16, batch_size: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)), batch_size=batch_size)


def model_for(name: str) -> tuple[pl.LightningModule, DataLoader, torch.Tensor]:
    """(model, loader, probe input) with the module names ``name``'s config expects."""
    if name.startswith("gpt2"):
        return gpt2(), ids_loader(), torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(7))
    if name.startswith("cifar"):
        return Cifar(), image_loader(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    cfg = published(name).get("compression_training", {})
    layers = 12 if cfg.get("layer_reduction", {}).get("enabled") else 2
    return bert(layers), ids_loader(), torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(7))


# ------------------------------------------------------------------------------------------------ DeepSpeed's quantizers
def deepspeed_quantize(w: torch.Tensor, bits: int, symmetric: bool, groups: int) -> torch.Tensor:
    """DeepSpeed's ``SymQuantizer`` / ``AsymQuantizer`` / ``TernaryQuantizer`` / ``BinaryQuantizer``
    forward (``deepspeed/compression/utils.py``), written from its code, on ``w`` as ``[out, in]``.
    One difference: an all-zero group (an embedding's padding row) gives 0 here; DeepSpeed divides by its
    zero scale and gives NaN."""
    x = w.reshape(groups, -1).float()
    if bits == 1:
        m = x.norm(p=1, dim=1, keepdim=True).div(x.shape[1])
        return (x.sign() * m).reshape(w.shape)
    if bits == 2:
        m = x.norm(p=1, dim=1).div(x.shape[1])
        thres = (0.7 * m).view(-1, 1)
        pos, neg = (x > thres).float(), (x < -thres).float()
        mask = (x.abs() > thres).float()
        alpha = ((mask * x).abs().sum(dim=1) / mask.sum(dim=1)).view(-1, 1)
        return (alpha * pos - alpha * neg).reshape(w.shape)
    q_range = 2**bits
    if symmetric:
        scale = 2 * x.abs().amax(dim=-1, keepdim=True) / q_range
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return ((x / scale).round().clamp(-q_range // 2, q_range // 2 - 1) * scale).reshape(w.shape)
    mn, mx = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    scale = (mx - mn) / q_range
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = (mn / scale).round() * scale
    return (((x - zp) / scale).round().clamp(0, q_range - 1) * scale + zp).reshape(w.shape)


def kept(n: int, dense_ratio: float) -> int:
    """Units DeepSpeed's TopKBinarizer keeps: ``ceil(dense_ratio * n)``."""
    return math.ceil(dense_ratio * n)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
