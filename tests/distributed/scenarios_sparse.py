"""SparsePruning / SnipMomentumPruning under DeepSpeedCompressionStrategy, ZeRO 2 and 3, 2 CPU ranks."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from lightning_compress import SnipMomentumPruning, SparsePruning
from lightning_compress.core.dist import gathered
from tests.distributed.harness import Context, scenario
from tests.models import TinyMLP, mlp_loader

PROBE_X = torch.randn(6, 16, generator=torch.Generator().manual_seed(123))


class Probe(pl.Callback):
    """At the end of training (before teardown), with parameters gathered: full weights and the
    masked model's output on a fixed input; and every boundary seen in on_before_optimizer_step."""

    def __init__(self) -> None:
        self.result: dict = {"boundaries": 0, "micro_batches": 0}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.result["micro_batches"] += 1
        if trainer.model.is_gradient_accumulation_boundary():
            self.result["boundaries"] += 1

    def on_train_end(self, trainer, pl_module):
        params = list(pl_module.parameters())
        with gathered(params), torch.no_grad():
            self.result["weights"] = {k: v.detach().clone().float() for k, v in pl_module.state_dict().items()}
            self.result["output"] = pl_module(PROBE_X.to(pl_module.device)).float()


def run(ctx: Context, stage: int, cb, **trainer_kwargs) -> None:
    pl.seed_everything(0)
    probe = Probe()
    trainer = ctx.trainer(stage=stage, callbacks=[cb, probe], **trainer_kwargs)
    trainer.fit(TinyMLP(), mlp_loader(n=128, batch_size=8))
    ctx.save(
        {
            **probe.result,
            "masks": cb.masks(),
            "history": cb.history,
            "global_step": trainer.global_step,
            "stats": cb.sparsity_stats(),
        }
    )


@scenario("sparse_snip_momentum_4x1_zero2")
def snip_zero2(ctx: Context) -> None:
    cb = SnipMomentumPruning(sparsity=0.75, pattern="4x1", start_step=0, end_step=4, frequency=2)
    run(ctx, 2, cb, max_steps=6, accumulate_grad_batches=2)


@scenario("sparse_snip_momentum_4x1_zero3")
def snip_zero3(ctx: Context) -> None:
    cb = SnipMomentumPruning(sparsity=0.75, pattern="4x1", start_step=0, end_step=4, frequency=2)
    run(ctx, 3, cb, max_steps=6, accumulate_grad_batches=2)


@scenario("sparse_l1_2to4_zero3")
def l1_zero3(ctx: Context) -> None:
    cb = SparsePruning(sparsity=0.5, pattern="2:4", method="l1", start_step=0, end_step=3)
    run(ctx, 3, cb, max_steps=4)


@scenario("sparse_topk_zero2")
def topk_zero2(ctx: Context) -> None:
    cb = SparsePruning(sparsity=0.6, method="topk", start_step=1, end_step=4)
    run(ctx, 2, cb, max_steps=5)


@scenario("sparse_topk_zero3")
def topk_zero3(ctx: Context) -> None:
    cb = SparsePruning(sparsity=0.6, method="topk", start_step=1, end_step=4)
    run(ctx, 3, cb, max_steps=5, accumulate_grad_batches=2)


class _StopAt(pl.Callback):
    """An interruption mid-fit (a shorter max_steps would be a schedule that cannot finish: an error)."""

    def __init__(self, step: int | None) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:  # noqa: ANN001,ANN002
        if self.step is not None and trainer.global_step >= self.step:
            trainer.should_stop = True


def _resume_run(ctx: Context, stage: int, steps: int, ckpt=None, save=None, stop_at=None) -> dict:
    pl.seed_everything(0)
    cb = SnipMomentumPruning(sparsity=0.75, pattern="4x1", start_step=1, end_step=6, frequency=1)
    probe = Probe()
    trainer = ctx.trainer(stage=stage, callbacks=[cb, probe, _StopAt(stop_at)], max_steps=steps)
    # 16 samples, batch 8, 2 ranks: one batch per rank per epoch, so a resumed run sees what an
    # uninterrupted one sees
    trainer.fit(TinyMLP(), mlp_loader(n=16, batch_size=8), ckpt_path=ckpt)
    if save is not None:
        trainer.save_checkpoint(save)
    return {"masks": cb.masks(), "scores": {t.name: t.score.score.clone() for t in cb.targets}, **probe.result}


def _resume(ctx: Context, stage: int) -> None:
    full = _resume_run(ctx, stage, 8)
    ckpt = str(ctx.work_dir / "mid.ckpt")
    _resume_run(ctx, stage, 8, save=ckpt, stop_at=3)
    resumed = _resume_run(ctx, stage, 8, ckpt=ckpt)
    ctx.save({"full": full, "resumed": resumed})


@scenario("sparse_resume_zero2")
def resume_zero2(ctx: Context) -> None:
    _resume(ctx, 2)


@scenario("sparse_resume_zero3")
def resume_zero3(ctx: Context) -> None:
    _resume(ctx, 3)


@scenario("sparse_ddp_snip_topk")
def ddp(ctx: Context) -> None:
    """Plain DDP (gloo) in the same process group: gradients are all-reduced in param.grad."""
    out = {}
    for method in ("snip_momentum", "topk"):
        pl.seed_everything(0)
        cb = SparsePruning(sparsity=0.6, method=method, pattern="4x1", start_step=1, end_step=4)
        trainer = pl.Trainer(
            accelerator="cpu", devices=2, strategy="ddp", max_steps=5, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False,
        )
        trainer.callbacks.append(cb)
        trainer.fit(TinyMLP(), mlp_loader(n=128, batch_size=8))
        out[method] = {"masks": cb.masks(), "stats": cb.sparsity_stats()}
    ctx.save(out)
