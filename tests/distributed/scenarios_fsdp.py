"""Every callback under FSDP1 (``FSDPCompressionStrategy``) and FSDP2 (``ModelParallelCompressionStrategy``
with ``fully_shard`` in ``configure_model``), 2 CPU ranks over gloo, in the shared process group.

The FSDP2 models shard every Linear (MLP), every BertLayer (BERT) or residual Block (ResNet), then the
root, so masked modules are ``FSDP<Compressed<...>>`` themselves (MLP) or inside a sharded block.
Data: Lightning's DistributedSampler without shuffling gives rank r samples r, r+2, ...: the two
ranks' step-i batches of 8 are the 1-process step-i batch of 16 (the 1-process references run in
``tests/test_fsdp_distributed.py``).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress import ActQuant, ChannelPruning, HeadPruning, RowPruning, SnipMomentumPruning, SparsePruning, WeightQuant
from lightning_compress.callbacks._sharding import full_params
from lightning_compress.callbacks.redundancy_clean import RedundancyClean
from lightning_compress.core.sharded_copy import full_state_dict_rank0
from tests.distributed.harness import Context, scenario
from tests.models import TinyMLP, mlp_loader
from tests.structured_models import Block, TinyBert, TinyResNet

PROBE_MLP = torch.randn(6, 16, generator=torch.Generator().manual_seed(123))
PROBE_IMG = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
PROBE_IDS = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(7))
KINDS = ("fsdp1", "fsdp2")


def _shard(module: pl.LightningModule, unit_types: tuple[type, ...]) -> None:
    from torch.distributed.fsdp import fully_shard

    mesh = module.device_mesh["data_parallel"]
    for m in list(module.modules()):
        if m is not module and isinstance(m, unit_types):
            fully_shard(m, mesh=mesh)
    fully_shard(module, mesh=mesh)


class FSDP2MLP(TinyMLP):
    def configure_model(self) -> None:
        _shard(self, (nn.Linear,))


class FSDP2ResNet(TinyResNet):
    def configure_model(self) -> None:
        _shard(self, (Block,))


class FSDP2Bert(TinyBert):
    def configure_model(self) -> None:
        from transformers.models.bert.modeling_bert import BertLayer

        _shard(self, (BertLayer,))


MODELS = {"mlp": (TinyMLP, FSDP2MLP), "resnet": (TinyResNet, FSDP2ResNet), "bert": (TinyBert, FSDP2Bert)}


def make_model(name: str, kind: str) -> pl.LightningModule:
    pl.seed_everything(0)
    return MODELS[name][KINDS.index(kind)]()


def fsdp_trainer(ctx: Context, kind: str, strategy_kwargs: dict | None = None, **kwargs: Any) -> pl.Trainer:
    from lightning_compress import FSDPCompressionStrategy, ModelParallelCompressionStrategy

    cls = FSDPCompressionStrategy if kind == "fsdp1" else ModelParallelCompressionStrategy
    defaults: dict[str, Any] = dict(
        accelerator="cpu", devices=ctx.world_size, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(strategy=cls(**(strategy_kwargs or {})), **defaults)


class Probe(pl.Callback):
    """At the end of training: the model's output on a fixed input (through the sharded model's own
    forward, eval mode) and, on rank 0, the full weights."""

    def __init__(self, probe: torch.Tensor) -> None:
        self.probe = probe
        self.result: dict = {}

    def on_train_end(self, trainer, pl_module):
        model = trainer.strategy.model
        was = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            self.result["output"] = model(self.probe.clone()).float().cpu()
        pl_module.train(was)
        state = full_state_dict_rank0(model)
        self.result["weights"] = {k: v.float().clone() for k, v in state.items()} if state else None
        self.result["classes"] = sorted({type(m).__name__ for m in pl_module.modules()})


def bert_loader(batch_size: int, n: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (n, 8), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    return DataLoader(TensorDataset(ids, y), batch_size=batch_size)


def image_loader(n: int = 32, batch_size: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


# ----------------------------------------------------------------------------------- recipes (shared with
# the 1-process references in tests/test_fsdp_distributed.py: same callbacks, data, steps)
def recipe(name: str) -> dict[str, Any]:
    if name == "snip_4x1":
        return dict(model="mlp", loader=lambda bs: mlp_loader(n=96, batch_size=bs), batch=8, probe=PROBE_MLP,
                    callbacks=lambda: [SnipMomentumPruning(sparsity=0.75, pattern="4x1", start_step=0, end_step=4, frequency=2)],
                    max_steps=6)
    if name == "l1_2to4":
        return dict(model="mlp", loader=lambda bs: mlp_loader(n=96, batch_size=bs), batch=8, probe=PROBE_MLP,
                    callbacks=lambda: [SparsePruning(sparsity=0.5, pattern="2:4", method="l1", start_step=0, end_step=3)],
                    max_steps=4)
    if name == "w8a8":
        return dict(model="mlp", loader=lambda bs: mlp_loader(n=96, batch_size=bs), batch=8, probe=PROBE_MLP,
                    callbacks=lambda: [WeightQuant(bits=8), ActQuant(bits=8, range="dynamic")], max_steps=4)
    if name == "bert_rows_heads":
        return dict(model="bert", loader=lambda bs: bert_loader(bs), batch=4, probe=PROBE_IDS,
                    callbacks=lambda: [HeadPruning(sparsity=0.5, end_step=2), RowPruning(sparsity=0.5, end_step=2, method="topk")],
                    max_steps=3)
    if name == "resnet_channels":
        return dict(model="resnet", loader=lambda bs: image_loader(batch_size=bs), batch=4, probe=PROBE_IMG,
                    callbacks=lambda: [ChannelPruning(sparsity=0.5, end_step=2)], max_steps=3)
    raise KeyError(name)


def summary(callbacks: list) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cb in callbacks:
        key = type(cb).__name__
        if hasattr(cb, "masks"):
            out[f"{key}.masks"] = cb.masks()
        if hasattr(cb, "ranges"):
            out[f"{key}.ranges"] = cb.ranges()
        if hasattr(cb, "history"):
            out[f"{key}.history"] = cb.history
    return out


def run_recipe(ctx: Context, kind: str, name: str, clean: bool = False) -> None:
    r = recipe(name)
    cbs = r["callbacks"]()
    probe = Probe(r["probe"])
    extra: list = [probe]
    rc = None
    if clean:
        rc = RedundancyClean(ctx.work_dir / "slim", save=False, latency_runs=0)
        extra.append(rc)
    trainer = fsdp_trainer(ctx, kind, callbacks=[*cbs, *extra], max_steps=r["max_steps"])
    trainer.fit(make_model(r["model"], kind), r["loader"](r["batch"]))
    result = {**summary(cbs), **probe.result, "global_step": trainer.global_step}
    if rc is not None:
        slim = rc.slim_model
        result["slim_none"] = slim is None
        if slim is not None:
            with torch.no_grad():
                result["slim_output"] = slim.eval()(r["probe"].clone()).float()
            result["slim_classes"] = sorted({type(m).__name__ for m in slim.modules()})
            result["slim_numel"] = sum(p.numel() for p in slim.parameters())
    ctx.save(result)


for _kind in KINDS:
    for _name, _clean in (("snip_4x1", False), ("l1_2to4", False), ("w8a8", False), ("bert_rows_heads", True),
                          ("resnet_channels", True)):
        scenario(f"fsdp_{_kind}_{_name}")(lambda ctx, k=_kind, n=_name, c=_clean: run_recipe(ctx, k, n, c))


# ----------------------------------------------------------------------------------- resume
def _resume_run(ctx: Context, kind: str, skw: dict, steps: int, ckpt=None, save=None) -> dict:
    cb = SnipMomentumPruning(sparsity=0.75, pattern="4x1", start_step=1, end_step=6, frequency=1)
    wq = WeightQuant(bits=8, start_bits=8, period=100, start_step=2)
    probe = Probe(PROBE_MLP)
    trainer = fsdp_trainer(ctx, kind, strategy_kwargs=skw, callbacks=[cb, wq, probe], max_steps=steps)
    # 16 samples, batch 8, 2 ranks: one batch per rank per epoch, so a resumed run sees what an
    # uninterrupted one sees
    trainer.fit(make_model("mlp", kind), mlp_loader(n=16, batch_size=8), ckpt_path=ckpt)
    if save is not None:
        trainer.save_checkpoint(save)
    return {"masks": cb.masks(), "scores": {t.name: t.score.score.clone() for t in cb.targets},
            "events": cb.state_dict()["events_done"], "wq": wq.state_dict(), **probe.result}


def _resume(ctx: Context, kind: str, skw: dict) -> None:
    full = _resume_run(ctx, kind, skw, 8)
    ckpt = str(ctx.work_dir / "mid.ckpt")
    _resume_run(ctx, kind, skw, 3, save=ckpt)
    resumed = _resume_run(ctx, kind, skw, 8, ckpt=ckpt)
    ctx.save({"full": full, "resumed": resumed, "ckpt_is_dir": (ctx.work_dir / "mid.ckpt").is_dir()})


@scenario("fsdp_fsdp1_resume_full")
def resume_fsdp1_full(ctx: Context) -> None:
    _resume(ctx, "fsdp1", {"state_dict_type": "full"})


@scenario("fsdp_fsdp1_resume_sharded")
def resume_fsdp1_sharded(ctx: Context) -> None:
    _resume(ctx, "fsdp1", {"state_dict_type": "sharded"})


@scenario("fsdp_fsdp2_resume_full")
def resume_fsdp2_full(ctx: Context) -> None:
    _resume(ctx, "fsdp2", {"save_distributed_checkpoint": False})


@scenario("fsdp_fsdp2_resume_sharded")
def resume_fsdp2_sharded(ctx: Context) -> None:
    _resume(ctx, "fsdp2", {"save_distributed_checkpoint": True})


# ----------------------------------------------------------------------------------- refusals
@scenario("fsdp_refusals")
def refusals(ctx: Context) -> None:
    out = {}
    from lightning_compress import FSDPCompressionStrategy

    try:
        FSDPCompressionStrategy(use_orig_params=False)
    except ValueError as err:
        out["use_orig_params"] = str(err)
    ctx.save(out)
