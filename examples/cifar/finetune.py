"""``FineTune``: a LightningModule that fine-tunes a trained CIFAR ResNet, optionally distilling a teacher.

The loss of a training batch ``(x, y)`` is

    cross_entropy(student(x), y, label_smoothing)  +  kd_weight * T**2 * KL(softmax(teacher(x) / T) || softmax(student(x) / T))

(:func:`lightning_compress.core.distill_losses.kd_logits_loss`; the teacher runs under ``no_grad`` in eval
mode on the same augmented batch).  The teacher is held in a plain list, not registered as a submodule, so
it is not in ``parameters()`` / ``state_dict()`` / the optimizer, the compression callbacks never see it
(they target the student's layers ``model.*``), and ``RedundancyClean`` exports only the student.
Optimizer: SGD with Nesterov momentum 0.9, weight decay on conv / linear weights only, learning rate warmed
up linearly over ``warmup`` of the optimizer steps, then cosine to 0 at the fit's last step
(``trainer.estimated_stepping_batches``).  Logged: ``train_loss`` (per step), ``train_acc`` (epoch mean of
the batch accuracies on augmented images), ``kd_loss`` (with a teacher).
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_compress.core.distill_losses import kd_logits_loss


class FineTune(pl.LightningModule):
    """Fine-tune ``network`` (kept as ``self.model``), optionally distilling ``teacher``.

    Args:
        network: the student (e.g. the dense ResNet-20 the compression callbacks then compress).
        teacher: a frozen network predicting the same classes, or None (plain fine-tuning).
        lr: peak learning rate.
        weight_decay: L2 on weights with ``dim > 1``.
        warmup: fraction of the optimizer steps spent warming up (0 <= warmup < 1).
        kd_weight: factor of the distillation term (ignored without a teacher).
        temperature: softmax temperature of the distillation term.
        label_smoothing: of the cross-entropy term.
    """

    def __init__(
        self,
        network: nn.Module,
        teacher: nn.Module | None = None,
        lr: float = 0.02,
        weight_decay: float = 5e-4,
        warmup: float = 0.05,
        kd_weight: float = 1.0,
        temperature: float = 2.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"FineTune: lr={lr} must be > 0")
        if not 0 <= warmup < 1:
            raise ValueError(f"FineTune: warmup={warmup} must be a fraction of the steps in [0, 1)")
        if kd_weight < 0 or temperature <= 0:
            raise ValueError(f"FineTune: kd_weight={kd_weight} must be >= 0 and temperature={temperature} > 0")
        # training mode now: Lightning keeps the modes it finds, and a network left in eval() would fine-tune with
        # frozen BatchNorm statistics and without ActQuant learning its static ranges
        self.model = network.train()
        self._teacher: list[nn.Module] = []
        if teacher is not None and kd_weight > 0:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            self._teacher.append(teacher)
        self.lr, self.weight_decay, self.warmup = lr, weight_decay, warmup
        self.kd_weight, self.temperature, self.label_smoothing = kd_weight, temperature, label_smoothing

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher(x)
            kd = kd_logits_loss(logits, target, self.temperature)
            self.log("kd_loss", kd, on_step=True, on_epoch=False)
            loss = loss + self.kd_weight * kd
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train_acc", (logits.argmax(-1) == y).float().mean(), on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self):  # noqa: ANN201 (Lightning's dict)
        decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() > 1]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() <= 1]
        optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr, momentum=0.9, nesterov=True,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = int(self.warmup * total)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
