"""Atomic checkpoints under DeepSpeedCompressionStrategy (ZeRO 2, 2 CPU ranks): a save killed after the
first shard leaves ``last.ckpt`` the previous complete checkpoint; a checkpoint torn from two steps is
refused on load, naming the part."""

from __future__ import annotations

import json
import shutil

import lightning.pytorch as pl
import torch.distributed as dist

from lightning_compress.callbacks.sparse_pruning import SparsePruning
from lightning_compress.strategies import checkpoint_files
from tests.distributed.harness import Context, scenario
from tests.models import TinyMLP, mlp_loader


class SimulatedKill(RuntimeError):
    pass


def _fit(ctx: Context, steps: int, ckpt: str | None = None) -> pl.Trainer:
    pl.seed_everything(0)
    cb = SparsePruning(sparsity=0.5, end_step=1)
    trainer = ctx.trainer(stage=2, callbacks=[cb], max_steps=steps)
    trainer.fit(TinyMLP(), mlp_loader(n=64, batch_size=8), ckpt_path=ckpt)
    return trainer


@scenario("checkpoint_atomic_zero2")
def atomic_zero2(ctx: Context) -> None:
    work = ctx.work_dir
    last, step2, step4, torn = (str(work / n) for n in ("last.ckpt", "step2.ckpt", "step4.ckpt", "torn.ckpt"))
    t2 = _fit(ctx, 2)
    t2.save_checkpoint(last)
    t2.save_checkpoint(step2)
    t4 = _fit(ctx, 4, ckpt=step2)
    t4.save_checkpoint(step4)

    # a kill in the middle of writing, two ways: every rank dies right before writing its optimizer
    # shard (rank 0 has written the model states: in place, that is a step-4 model with step-2 optimizer
    # shards), or right after writing it; nothing after that runs
    engine = t4.strategy.deepspeed_engine
    original = engine.checkpoint_engine.save
    killed, manifest_steps = [], []
    for when in ("before", "after"):

        def save_then_die(*args, **kwargs):
            path = str(kwargs.get("path", args[1] if len(args) > 1 else ""))
            if when == "before" and "optim_states" in path:
                raise SimulatedKill(f"simulated kill before writing {path}")
            original(*args, **kwargs)
            if when == "after" and "optim_states" in path:
                raise SimulatedKill(f"simulated kill after writing {path}")

        engine.checkpoint_engine.save = save_then_die
        try:
            t4.save_checkpoint(last)
        except SimulatedKill as err:
            killed.append(str(err))
        finally:
            engine.checkpoint_engine.save = original
        dist.barrier()
        manifest = checkpoint_files.verify(last)  # raises if torn
        manifest_steps.append(manifest["step"] if manifest else None)
    leftovers = sorted(p.name for p in work.iterdir() if "lc-partial" in p.name or "lc-old" in p.name)
    # resume from it: a complete checkpoint of step 2; the next save replaces it and removes what the
    # killed save left
    t_resumed = _fit(ctx, 5, ckpt=last)
    t_resumed.save_checkpoint(last)
    dist.barrier()
    after = checkpoint_files.verify(last)
    leftovers_after_next_save = sorted(p.name for p in work.iterdir() if "lc-partial" in p.name or "lc-old" in p.name)

    # a checkpoint assembled from two steps: step 4 with rank 1's optimizer shard of step 2
    shard = "checkpoint/zero_pp_rank_1_mp_rank_00_optim_states.pt"
    if ctx.rank == 0:
        shutil.copytree(step4, torn)
        shutil.copy(f"{step2}/{shard}", f"{torn}/{shard}")
    dist.barrier()
    refused = None
    try:
        _fit(ctx, 6, ckpt=torn)
    except ValueError as err:
        refused = str(err)
    dist.barrier()
    ctx.save({
        "killed": killed, "manifest_steps": manifest_steps, "leftovers": leftovers,
        "resumed_step": t_resumed.global_step, "step_after_next_save": after["step"],
        "leftovers_after_next_save": leftovers_after_next_save, "refused": refused, "shard": shard,
        "manifest_parts": sorted(json.loads((work / "step4.ckpt" / checkpoint_files.MANIFEST).read_text())["parts"]),
    })
