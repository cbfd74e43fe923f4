"""Evaluation from a DeepSpeed checkpoint (ZeRO 2, 2 CPU ranks) on a new Trainer and a fresh model."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch

from lightning_compress import SparsePruning
from tests.distributed.harness import Context, scenario
from tests.lifecycle_models import MLP, fresh
from tests.models import mlp_loader


@scenario("lifecycle_eval_from_ckpt_zero2")
def eval_from_ckpt_zero2(ctx: Context) -> None:
    pl.seed_everything(0)
    cb = SparsePruning(sparsity=0.5, end_step=2)
    model = fresh(MLP)
    trainer = ctx.trainer(stage=2, callbacks=[cb], max_steps=4)
    trainer.fit(model, mlp_loader(n=64, batch_size=8))
    ckpt = str(ctx.work_dir / "run.ckpt")
    trainer.save_checkpoint(ckpt)
    loss_after_fit = trainer.validate(model, mlp_loader(n=32), verbose=False)[0]["loss"]
    masks = cb.masks()
    saved = torch.load(os.path.join(ckpt, "checkpoint", "mp_rank_00_model_states.pt"), weights_only=False)
    has_state_dict = "state_dict" in saved  # Lightning drops it under DeepSpeed: masks must come from elsewhere
    masks_in_module = any("_lc_" in k for k in saved["module"])  # non-persistent: only the callback state has them
    callback_masks = any("masks" in v for v in saved["callbacks"].values())
    # a new Trainer, a fresh model, a new callback
    cb2 = SparsePruning(sparsity=0.5, end_step=2)
    t2 = ctx.trainer(stage=2, callbacks=[cb2])
    loss_restored = t2.validate(fresh(MLP), mlp_loader(n=32), ckpt_path=ckpt, verbose=False)[0]["loss"]
    t3 = ctx.trainer(stage=2)
    loss_dense = t3.validate(fresh(MLP), mlp_loader(n=32), verbose=False)[0]["loss"]
    ctx.save(
        {
            "loss_after_fit": loss_after_fit, "loss_restored": loss_restored, "loss_dense": loss_dense,
            "masks": masks, "masks_restored": cb2.masks(), "sparsity": cb.sparsity_stats()["sparsity"],
            "has_state_dict": has_state_dict, "masks_in_module": masks_in_module, "callback_masks": callback_masks,
        }
    )
