"""Structured pruning + RedundancyClean under DeepSpeedCompressionStrategy, ZeRO 2 and 3, 2 CPU ranks."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from lightning_compress.callbacks.channel_pruning import ChannelPruning
from lightning_compress.callbacks.head_pruning import HeadPruning
from lightning_compress.callbacks.redundancy_clean import RedundancyClean
from lightning_compress.callbacks.row_pruning import RowPruning
from lightning_compress.core.dist import gathered
from tests.distributed.harness import Context, scenario
from tests.models import TinyMLP, image_loader, mlp_data
from tests.structured_models import TinyBert, TinyResNet

PROBE_MLP = torch.randn(6, 16, generator=torch.Generator().manual_seed(7))
PROBE_IMG = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
PROBE_IDS = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(7))


def bert_loader(batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (32, 8), generator=g)
    y = torch.randint(0, 2, (32,), generator=g)
    return DataLoader(TensorDataset(ids, y), batch_size=batch_size)


class MaskedOutput(pl.Callback):
    """The masked model's output on a probe input at the end of training (parameters gathered)."""

    def __init__(self, probe: torch.Tensor) -> None:
        self.probe = probe
        self.output: torch.Tensor | None = None

    def on_train_end(self, trainer, pl_module):
        with gathered(list(pl_module.parameters())), torch.no_grad():
            was = pl_module.training
            pl_module.eval()
            self.output = pl_module(self.probe.to(pl_module.device)).float().cpu()
            pl_module.train(was)


def run(ctx: Context, stage: int, model, loader, pruners, probe, **kw) -> None:
    rc = RedundancyClean(ctx.work_dir / "slim", formats=("safetensors",), latency_runs=0)
    mo = MaskedOutput(probe)
    trainer = ctx.trainer(stage=stage, callbacks=[*pruners, mo, rc], **kw)
    trainer.fit(model, loader)
    slim = rc.slim_model
    with torch.no_grad():
        slim_out = slim(probe)
    ctx.save(
        {
            "masks": {type(p).__name__: p.masks() for p in pruners},
            "slim_state": {k: v.clone() for k, v in slim.state_dict().items()},
            "slim_output": slim_out,
            "masked_output": mo.output,
            "files": sorted(p.name for p in (ctx.work_dir / "slim").glob("*")) if ctx.rank == 0 else None,
            "wrapped": any(type(m).__name__.startswith("Compressed") for m in slim.modules()),
        }
    )


def rank_shard(ctx: Context) -> DataLoader:
    """Rank r reads samples r, r+2, ... in order: its step-i batch of 4 and the other rank's together are
    exactly the single-process step-i batch of 8 (samples 8i..8i+7); no shuffling sampler."""
    return DataLoader(Subset(mlp_data(64), range(ctx.rank, 64, ctx.world_size)), batch_size=4)


@scenario("structured_rows_mlp_zero3")
def rows_zero3(ctx: Context) -> None:
    pl.seed_everything(0)
    run(ctx, 3, TinyMLP(), rank_shard(ctx), [RowPruning(sparsity=0.5, end_step=2)], PROBE_MLP,
        max_steps=4, use_distributed_sampler=False)


@scenario("structured_rows_mlp_zero2")
def rows_zero2(ctx: Context) -> None:
    pl.seed_everything(0)
    run(ctx, 2, TinyMLP(), rank_shard(ctx), [RowPruning(sparsity=0.5, end_step=2)], PROBE_MLP,
        max_steps=4, use_distributed_sampler=False)


@scenario("structured_channels_resnet_zero3")
def channels_zero3(ctx: Context) -> None:
    pl.seed_everything(0)
    run(ctx, 3, TinyResNet(), image_loader(n=32, batch_size=4), [ChannelPruning(sparsity=0.5, end_step=2)], PROBE_IMG, max_steps=3)


@scenario("structured_bert_heads_rows_zero3")
def bert_zero3(ctx: Context) -> None:
    pl.seed_everything(0)
    pruners = [HeadPruning(sparsity=0.5, end_step=2), RowPruning(sparsity=0.5, end_step=2, method="topk")]
    run(ctx, 3, TinyBert(), bert_loader(4), pruners, PROBE_IDS, max_steps=3)
