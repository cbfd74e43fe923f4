"""Shared harness for DeepSpeed (CPU, gloo) tests: one torchrun launch runs every scenario.

A scenario is a function in ``tests/distributed/scenarios_<topic>.py`` decorated with
``@scenario("name")``; it receives a :class:`Context` and calls ``ctx.save(obj)`` with what the test
should check.  ``runner.py`` (started with ``torchrun --nproc_per_node 2``) imports every scenario
file, runs the scenarios in name order in ONE process group (DeepSpeed's and Lightning's
``init_distributed`` skip re-initialisation), and writes ``<out>/<name>.rank<r>.pt`` or
``<out>/<name>.rank<r>.error.txt``.  ``conftest.py``'s session fixture ``dist_results`` launches it
once and hands results to the tests.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

SCENARIOS: dict[str, Callable[["Context"], None]] = {}


def scenario(name: str) -> Callable[[Callable[["Context"], None]], Callable[["Context"], None]]:
    def deco(fn: Callable[["Context"], None]) -> Callable[["Context"], None]:
        if name in SCENARIOS:
            raise ValueError(f"duplicate scenario name {name!r}")
        SCENARIOS[name] = fn
        return fn

    return deco


@dataclass
class Context:
    name: str
    rank: int
    world_size: int
    out_dir: Path

    def trainer(self, stage: int = 2, **kwargs: Any):
        """A CPU Trainer on ``DeepSpeedCompressionStrategy(stage=stage)`` with 2 devices."""
        import lightning.pytorch as pl

        from lightning_compress.strategies import DeepSpeedCompressionStrategy

        strategy_kwargs = kwargs.pop("strategy_kwargs", {})
        defaults: dict[str, Any] = dict(
            accelerator="cpu",
            devices=self.world_size,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        defaults.update(kwargs)
        return pl.Trainer(strategy=DeepSpeedCompressionStrategy(stage=stage, **strategy_kwargs), **defaults)

    def save(self, obj: Any) -> None:
        torch.save(obj, self.out_dir / f"{self.name}.rank{self.rank}.pt")

    @property
    def work_dir(self) -> Path:
        """A per-scenario folder shared by the ranks (for checkpoints)."""
        d = self.out_dir / f"{self.name}.work"
        d.mkdir(parents=True, exist_ok=True)
        return d


def run_one(name: str, ctx: Context) -> None:
    try:
        SCENARIOS[name](ctx)
    except BaseException:  # record and go on: the other scenarios still run
        (ctx.out_dir / f"{name}.rank{ctx.rank}.error.txt").write_text(traceback.format_exc())
