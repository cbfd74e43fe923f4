"""Every callback under FSDP1 (``FSDPCompressionStrategy``) and FSDP2 (``ModelParallelCompressionStrategy``
with ``fully_shard`` in ``configure_model``), 2 CPU ranks over gloo, in the shared process group.

The FSDP2 models shard every Linear (MLP), every BertLayer (BERT) or residual Block (ResNet), then the
root, so masked modules are ``FSDP<Compressed<...>>`` themselves (MLP) or inside a sharded block.
Data: rank r reads samples r, r+2, ... in order (``use_distributed_sampler=False``; Lightning's sampler
shuffles): the two ranks' step-i batches of b are the 1-process step-i batch of 2b (the 1-process
references run in ``tests/test_fsdp_distributed.py``).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from lightning_compress import ActQuant, ChannelPruning, HeadPruning, RowPruning, SnipMomentumPruning, SparsePruning, WeightQuant
from lightning_compress.callbacks.redundancy_clean import RedundancyClean
from lightning_compress.core.sharded_copy import full_state_dict_rank0
from tests.distributed.harness import Context, scenario
from tests.models import TinyMLP, mlp_data
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
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False,
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


def bert_data(n: int = 32) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randint(0, 50, (n, 8), generator=g), torch.randint(0, 2, (n,), generator=g))


def image_data(n: int = 32) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))


def rank_loader(data: Dataset, batch_size: int, rank: int = 0, world: int = 1) -> DataLoader:
    """Samples rank, rank + world, ... in order, in batches of ``batch_size``."""
    return DataLoader(Subset(data, range(rank, len(data), world)), batch_size=batch_size)


# ----------------------------------------------------------------------------------- recipes (shared with
# the 1-process references in tests/test_fsdp_distributed.py: same callbacks, data, steps)
def recipe(name: str) -> dict[str, Any]:
    if name == "snip_4x1":
        return dict(model="mlp", data=lambda: mlp_data(96), batch=8, probe=PROBE_MLP,
                    callbacks=lambda: [SnipMomentumPruning(sparsity=0.75, pattern="4x1", start_step=0, end_step=4, frequency=2)],
                    max_steps=6)
    if name == "l1_2to4":
        return dict(model="mlp", data=lambda: mlp_data(96), batch=8, probe=PROBE_MLP,
                    callbacks=lambda: [SparsePruning(sparsity=0.5, pattern="2:4", method="l1", start_step=0, end_step=3)],
                    max_steps=4)
    if name == "w8a8":
        return dict(model="mlp", data=lambda: mlp_data(96), batch=8, probe=PROBE_MLP,
                    callbacks=lambda: [WeightQuant(bits=8), ActQuant(bits=8, range="dynamic")], max_steps=4)
    if name == "w8a8_static":
        return dict(model="mlp", data=lambda: mlp_data(96), batch=8, probe=PROBE_MLP,
                    callbacks=lambda: [WeightQuant(bits=8, granularity="tensor"), ActQuant(bits=8, range="static")],
                    max_steps=3)
    if name == "bert_rows_heads":
        return dict(model="bert", data=bert_data, batch=4, probe=PROBE_IDS,
                    callbacks=lambda: [HeadPruning(sparsity=0.5, end_step=2), RowPruning(sparsity=0.5, end_step=2, method="topk")],
                    max_steps=3)
    if name == "resnet_channels":
        return dict(model="resnet", data=image_data, batch=4, probe=PROBE_IMG,
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
    trainer.fit(make_model(r["model"], kind), rank_loader(r["data"](), r["batch"], ctx.rank, ctx.world_size))
    result = {**summary(cbs), **probe.result, "global_step": trainer.global_step}
    if rc is not None:
        slim = rc.slim_model
        result["slim_none"] = slim is None
        if slim is not None:
            with torch.no_grad():
                result["slim_output"] = slim.eval()(r["probe"].clone()).float()
            from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

            from lightning_compress.core.dist import is_dtensor
            from lightning_compress.core.masking import is_wrapped

            result["slim_classes"] = sorted({type(m).__name__ for m in slim.modules()})
            result["slim_sharded"] = any(isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in slim.modules()) or any(
                is_dtensor(p) for p in slim.parameters()
            )
            result["slim_wrapped"] = any(is_wrapped(m) for m in slim.modules())
            result["slim_numel"] = sum(p.numel() for p in slim.parameters())
    ctx.save(result)


for _kind in KINDS:
    for _name, _clean in (("snip_4x1", False), ("l1_2to4", False), ("w8a8", False), ("w8a8_static", False), ("bert_rows_heads", True),
                          ("resnet_channels", True)):
        scenario(f"fsdp_{_kind}_{_name}")(lambda ctx, k=_kind, n=_name, c=_clean: run_recipe(ctx, k, n, c))


# ----------------------------------------------------------------------------------- resume
class _StopAt(pl.Callback):
    """An interruption mid-fit (a shorter max_steps would be a schedule that cannot finish: an error)."""

    def __init__(self, step: int | None) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:  # noqa: ANN001,ANN002
        if self.step is not None and trainer.global_step >= self.step:
            trainer.should_stop = True


def _resume_run(ctx: Context, kind: str, skw: dict, steps: int, ckpt=None, save=None, stop_at=None) -> dict:
    cb = SnipMomentumPruning(sparsity=0.75, pattern="4x1", start_step=1, end_step=6, frequency=1)
    wq = WeightQuant(bits=8, start_step=2)  # (period without a bits schedule is refused since issue 11)
    probe = Probe(PROBE_MLP)
    trainer = fsdp_trainer(ctx, kind, strategy_kwargs=skw, callbacks=[cb, wq, probe, _StopAt(stop_at)], max_steps=steps)
    # 16 samples, batch 8, 2 ranks: one batch per rank per epoch, so a resumed run sees what an
    # uninterrupted one sees
    trainer.fit(make_model("mlp", kind), rank_loader(mlp_data(16), 8, ctx.rank, ctx.world_size), ckpt_path=ckpt)
    if save is not None:
        trainer.save_checkpoint(save)
    return {"masks": cb.masks(), "scores": {t.name: t.score.score.clone() for t in cb.targets},
            "events": cb.state_dict()["events_done"], "wq": wq.state_dict(), **probe.result}


def _resume(ctx: Context, kind: str, skw: dict) -> None:
    full = _resume_run(ctx, kind, skw, 8)
    ckpt = str(ctx.work_dir / "mid.ckpt")
    _resume_run(ctx, kind, skw, 8, save=ckpt, stop_at=3)
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
    from lightning.pytorch.strategies import ModelParallelStrategy

    # a tensor-parallel mesh: the callback refuses at setup (identically on both ranks, no collective hangs)
    trainer = pl.Trainer(
        accelerator="cpu", devices=ctx.world_size, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_steps=1,
        strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2, process_group_backend="gloo"),
        callbacks=[SnipMomentumPruning(sparsity=0.5, end_step=1)],
    )
    try:
        trainer.fit(FSDP2MLP(), rank_loader(mlp_data(16), 8, ctx.rank, ctx.world_size))
    except ValueError as err:
        out["tensor_parallel"] = str(err)
    ctx.save(out)


# ----------------------------------------------------------------------------------- distillation
class _KDLit(pl.LightningModule):
    def __init__(self, kind: str) -> None:
        super().__init__()
        from tests.distributed.scenarios_kd import Net

        self.kind = kind
        self.model = Net(n=4)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        # through self(...): FSDP2 all-gathers the root's own parameters in the root's forward
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def configure_model(self) -> None:
        if self.kind == "fsdp2":
            from tests.distributed.scenarios_kd import Block as KDBlock

            _shard(self, (KDBlock,))


def kd_data() -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    return TensorDataset(x, x[:, :4].argmax(1).long())


def run_kd(ctx: Context, kind: str) -> None:
    from lightning_compress import LayerReductionKD

    pl.seed_everything(0)
    lit = _KDLit(kind)
    kd = LayerReductionKD(keep_layers=[1, 3], weights={"logits": 1.0, "hidden": 1.0, "labels": 1.0})
    losses: list[float] = []

    class Losses(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))

    probe = Probe(torch.randn(3, 8, generator=torch.Generator().manual_seed(1)))
    trainer = fsdp_trainer(ctx, kind, callbacks=[kd, Losses(), probe], max_steps=3)
    trainer.fit(lit, rank_loader(kd_data(), 4, ctx.rank, ctx.world_size))
    ctx.save({"losses": losses, "depth": len(lit.model.blocks), "output": probe.result["output"],
              "weights": probe.result["weights"], "teacher_depth": len(kd.teacher.blocks)})


for _kind in KINDS:
    scenario(f"fsdp_{_kind}_layer_reduction_kd")(lambda ctx, k=_kind: run_kd(ctx, k))
