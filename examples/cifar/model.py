"""CIFAR ResNet-20/32/56 (He et al. 2016, with BatchNorm) and its LightningModule.

The network is the CIFAR variant of ResNet: a 3x3 stem, three stages of ``n`` basic blocks with
``width``, ``2*width`` and ``4*width`` channels (``n = (depth - 2) / 6``, ``width = 16`` in the
paper), global average pooling and one Linear classifier.  Shortcuts that change shape are a 1x1
convolution + BatchNorm ("option B"), so every layer is an ordinary ``Conv2d``/``BatchNorm2d`` that
channel pruning and ``RedundancyClean`` can trace and slice.

``CifarResNet`` trains it with SGD (Nesterov momentum) and a cosine learning-rate schedule over
the whole run (``trainer.estimated_stepping_batches`` steps), and logs accuracy with torchmetrics.
"""

from __future__ import annotations

import math
from typing import Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm, ReLU, plus the identity or a 1x1-conv + BatchNorm shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet.

    Args:
        depth: total number of weighted layers, ``6n + 2`` (20, 32, 44, 56, 110).
        num_classes: number of output classes.
        width: channels of the first stage (16 in the paper; stages have width, 2*width, 4*width).

    Raises:
        ValueError: ``depth`` is not ``6n + 2`` or ``width`` < 1.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth={depth}: a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110); pick one of those")
        if width < 1:
            raise ValueError(f"width={width}: must be a positive number of channels (16 in the paper)")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = width
        stages = []
        for i, mult in enumerate((1, 2, 4)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(planes, width * mult, stride))
                planes = width * mult
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def resnet20(num_classes: int = 10, width: int = 16) -> ResNet:
    """ResNet-20 (0.27M parameters at width 16)."""
    return ResNet(20, num_classes, width)


def resnet32(num_classes: int = 10, width: int = 16) -> ResNet:
    """ResNet-32 (0.46M parameters at width 16)."""
    return ResNet(32, num_classes, width)


def resnet56(num_classes: int = 10, width: int = 16) -> ResNet:
    """ResNet-56 (0.85M parameters at width 16)."""
    return ResNet(56, num_classes, width)


class CifarResNet(pl.LightningModule):
    """LightningModule: CIFAR ResNet trained with SGD + cosine learning rate, accuracy by torchmetrics.

    The network is ``self.model`` (module names such as ``model.layer1.0.conv1``, ``model.fc``:
    use them in the callbacks' ``modules`` regexes).  The validation set is the CIFAR test split.

    Args:
        arch: ``"resnet20"``, ``"resnet32"`` or ``"resnet56"``.
        num_classes: number of classes (10 for CIFAR-10).
        width: first-stage channels (16 = the paper; smaller for quick tests).
        lr: peak learning rate of SGD (cosine-annealed to 0 over all optimizer steps).
        momentum: SGD momentum (Nesterov).
        weight_decay: L2 weight decay (not applied to BatchNorm and biases).
        warmup_steps: optimizer steps of linear warm-up before the cosine decay.

    Example::

        python examples/cifar/main.py fit --config examples/cifar/configs/dense.yaml
    """

    def __init__(
        self,
        arch: Literal["resnet20", "resnet32", "resnet56"] = "resnet20",
        num_classes: int = 10,
        width: int = 16,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        depth = {"resnet20": 20, "resnet32": 32, "resnet56": 56}[arch]
        self.model = ResNet(depth, num_classes, width)
        self.example_input_array = torch.zeros(1, 3, 32, 32)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.log("test_acc", self.test_acc)

    def configure_optimizers(self):  # noqa: ANN201 (Lightning's dict)
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.dim() > 1 else no_decay).append(p)
        optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
            momentum=self.hparams.momentum,
            nesterov=self.hparams.momentum > 0,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(self.hparams.warmup_steps, total - 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
