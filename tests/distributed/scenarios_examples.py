"""A shipped example config (CIFAR ResNet + SnipMomentumPruning) under DeepSpeedCompressionStrategy, 2 CPU ranks."""

from __future__ import annotations

import importlib
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml

from tests.distributed.harness import Context, scenario

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "cifar" / "configs" / "snip_momentum_4x1.yaml"


def instantiate(spec: dict):  # noqa: ANN201
    module, name = spec["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


@scenario("examples_cifar_snip_momentum_zero2")
def cifar_snip_zero2(ctx: Context) -> None:
    from examples.cifar.data import CifarDataModule
    from examples.cifar.model import CifarResNet

    cfg = yaml.safe_load(CONFIG.read_text())
    callbacks = []
    for spec in cfg["trainer"]["callbacks"]:
        spec["init_args"].update(start_step=0, end_step=3, frequency=1)
        callbacks.append(instantiate(spec))
    pl.seed_everything(0)
    model = CifarResNet(**{**cfg["model"], "width": 8})
    dm = CifarDataModule(str(ROOT / "tests" / "data" / "cifar10"), batch_size=8, num_workers=0, subset=4, download=False)
    trainer = ctx.trainer(stage=2, callbacks=callbacks, max_steps=4, limit_val_batches=0)
    trainer.fit(model, dm)
    (cb,) = callbacks
    # train mode: BatchNorm uses the batch's statistics (running statistics are per rank under DeepSpeed,
    # which does not synchronise buffers), so equal weights and masks must give equal outputs
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model.train()
    with torch.no_grad():
        out = model(x).float()
    ctx.save({"global_step": trainer.global_step, "masks": cb.masks(), "stats": cb.sparsity_stats(), "output": out})
