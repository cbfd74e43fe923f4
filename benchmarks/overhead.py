"""Training-step overhead of the compression callbacks on a BERT-small, CPU.

Recipes (``--recipes``, comma separated; default all):

* ``snip``: ``SnipMomentumPruning(pattern="4x1", sparsity=0.9)``, prune events every ``--frequency`` steps;
* ``w8a8``: ``WeightQuant(bits=8, granularity="channel")`` + ``ActQuant(bits=8, range="static")`` on the encoder;
* ``w4g``: ``WeightQuant(bits=4, granularity="group", group_size=64)`` on the encoder;
* ``a8dyn``: ``ActQuant(bits=8, range="dynamic")`` (per token) on the encoder;
* ``snip+w8a8``: the pruning and the two quantizers together;
* ``w8a8-ref``: ``w8a8`` with the reference fake-quant ops (``core.fake_quant_fused.ENABLED`` off during its steps).
* ``snip1``: ``snip`` with a prune event at every optimizer step (``frequency=1``).
* ``w8a8-nocache``: ``w8a8`` with the training-path weight cache off (``core.fake_quant_cache.ENABLED``
  off during its steps): beside ``w8a8`` with ``--accumulate K``, what the cache saves.

Every recipe trains its own copy of the same model (same init) side by side with a dense copy, one
step each in turn (interleaved, so machine noise hits both alike), all in one process: a plain
PyTorch step, and the same step with the callbacks' real hooks called where Lightning calls them
(``on_train_batch_start`` before forward, ``on_before_optimizer_step`` before ``optimizer.step``,
``on_train_batch_end`` after it).  The Trainer's own per-step cost is the same for both and is left
out, which makes the ratio stricter, not kinder.  ``--rounds`` rounds of ``--steps`` timed steps
(after ``--warmup``) each; the table gives the median over rounds of each round's median step time
and of each round's ratio to the dense copy.

Usage: ``python benchmarks/overhead.py [--steps 20] [--rounds 3] [--threads 2] [--recipes w8a8,w4g] [--clock cpu]
[--accumulate K]`` (``--clock cpu`` times each step by the process's CPU time instead of the wall clock: on a
box whose cores other processes keep busy, waiting for a core then counts for neither copy).
``--accumulate K``: one timed step is an optimizer step over K micro-batches (the batch each time, the loss
divided by K, hooks per micro-batch as Lightning's ``accumulate_grad_batches=K`` calls them), so the weight
fake-quant cache of :mod:`lightning_compress.core.fake_quant_cache` is paid once per K forwards.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from types import SimpleNamespace
from typing import Any, Callable

import torch

ENC = ["bert.encoder"]
#: the step timer: ``--clock wall`` (perf_counter, default) or ``--clock cpu`` (process CPU time, all
#: threads: steadier than wall time on a box whose other processes take the cores; use it with --threads 1)
CLOCK: Callable[[], float] = time.perf_counter


def recipes(total: int, frequency: int) -> dict[str, tuple[str, Callable[[], list[Any]]]]:
    from lightning_compress import ActQuant, SnipMomentumPruning, WeightQuant

    def snip() -> Any:
        return SnipMomentumPruning(pattern="4x1", sparsity=0.9, start_step=0, end_step=total - 1, frequency=frequency)

    def w8() -> Any:
        return WeightQuant(bits=8, granularity="channel", modules=ENC)

    def a8s() -> Any:
        return ActQuant(bits=8, range="static", modules=ENC)

    return {
        "snip": ("SnipMomentumPruning(4x1, 0.9)", lambda: [snip()]),
        "w8a8": ("W8 channel + A8 static", lambda: [w8(), a8s()]),
        "w4g": ("W4 group 64", lambda: [WeightQuant(bits=4, granularity="group", group_size=64, modules=ENC)]),
        "a8dyn": ("A8 dynamic per token", lambda: [ActQuant(bits=8, range="dynamic", modules=ENC)]),
        "snip+w8a8": ("SnipMomentum + W8A8", lambda: [snip(), w8(), a8s()]),
        "w8a8-ref": ("W8A8, reference fake-quant ops", lambda: [ReferenceOps(), w8(), a8s()]),
        "w8a8-nocache": ("W8A8, weight cache off", lambda: [ReferenceOps("fake_quant_cache"), w8(), a8s()]),
    }


class ReferenceOps:
    """Not a compression callback: runs its recipe's steps with ``core.<switch>.ENABLED`` off: by default
    ``fake_quant_fused`` (``torch.fake_quantize_*`` and autograd-recorded clips, the ops before issue 17's
    fused path); ``"fake_quant_cache"``: the training-path weight cache."""

    def __init__(self, switch: str = "fake_quant_fused") -> None:
        import importlib

        self.module = importlib.import_module(f"lightning_compress.core.{switch}")

    def setup(self, trainer: Any, model: Any, stage: str) -> None: ...

    def on_train_start(self, trainer: Any, model: Any) -> None: ...

    def on_train_batch_start(self, *args: Any) -> None:
        self.module.ENABLED = False

    def on_train_batch_end(self, *args: Any) -> None:
        self.module.ENABLED = True

def every_step_recipes(total: int) -> dict[str, tuple[str, Callable[[], list[Any]]]]:
    """``snip1``: the ``snip`` recipe with a prune event at every optimizer step (``frequency=1``, steps 0 to
    ``total - 1``), to time it beside ``snip`` (every ``--frequency`` steps) in one run."""
    from lightning_compress import SnipMomentumPruning

    def snip1() -> Any:
        return SnipMomentumPruning(pattern="4x1", sparsity=0.9, start_step=0, end_step=total - 1, frequency=1)

    return {"snip1": ("SnipMomentumPruning(4x1) freq=1", lambda: [snip1()])}


class Runner:
    def __init__(
        self, model: torch.nn.Module, callbacks: list[Any], batch: dict[str, torch.Tensor], total: int, accumulate: int = 1
    ) -> None:
        self.model, self.callbacks, self.batch, self.accumulate = model, callbacks, batch, accumulate
        self.trainer = SimpleNamespace(global_step=0, model=model, logger=None, estimated_stepping_batches=total)
        for cb in callbacks:
            cb.setup(self.trainer, model, "fit")
            cb.on_train_start(self.trainer, model)
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(self, step: int) -> float:
        """One optimizer step over ``accumulate`` micro-batches; its time."""
        tr, cbs, k = self.trainer, self.callbacks, self.accumulate
        tr.global_step = step
        t = CLOCK()
        for i in range(k):
            batch_idx = step * k + i
            for cb in cbs:
                cb.on_train_batch_start(tr, None, self.batch, batch_idx)
            loss = self.model(**self.batch).loss
            (loss / k if k > 1 else loss).backward()
            if i == k - 1:
                for cb in cbs:
                    if hasattr(cb, "on_before_optimizer_step"):
                        cb.on_before_optimizer_step(tr, None, self.opt)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                tr.global_step = step + 1
            for cb in cbs:
                cb.on_train_batch_end(tr, None, None, self.batch, batch_idx)
        return CLOCK() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frequency", type=int, default=10)
    ap.add_argument("--recipes", default="snip,w8a8,w4g,a8dyn,snip+w8a8")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="step timer: wall (perf_counter) or cpu (process_time)")
    ap.add_argument("--profile", default=None, help="a recipe to profile (torch.profiler, 3 steps) instead of timing")
    ap.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step (one timed step)")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, num_labels=2)
    base = BertForSequenceClassification(cfg)
    base.train()
    batch = {
        "input_ids": torch.randint(0, cfg.vocab_size, (8, 128)),
        "attention_mask": torch.ones(8, 128, dtype=torch.long),
        "labels": torch.randint(0, 2, (8,)),
    }
    total = args.rounds * (args.warmup + args.steps) + 10
    table = recipes(total, args.frequency)
    table.update(every_step_recipes(total))
    chosen = [r for r in args.recipes.split(",") if r]
    if args.profile:
        run = Runner(copy.deepcopy(base), table[args.profile][1](), batch, total, args.accumulate)
        for s in range(3):
            run.step(s)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for s in range(3, 6):
                run.step(s)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        return
    dense = Runner(copy.deepcopy(base), [], batch, total, args.accumulate)
    runs = {r: Runner(copy.deepcopy(base), table[r][1](), batch, total, args.accumulate) for r in chosen}
    med: dict[str, list[float]] = {r: [] for r in ["dense", *chosen]}
    ratio: dict[str, list[float]] = {r: [] for r in chosen}
    step = 0
    for _ in range(args.rounds):
        times: dict[str, list[float]] = {r: [] for r in ["dense", *chosen]}
        for i in range(args.warmup + args.steps):
            order = ["dense", *chosen] if i % 2 == 0 else [*reversed(chosen), "dense"]
            got = {r: (dense if r == "dense" else runs[r]).step(step) for r in order}
            step += 1
            if i >= args.warmup:
                for r, t in got.items():
                    times[r].append(t)
        for r in med:
            med[r].append(statistics.median(times[r]))
        for r in chosen:
            ratio[r].append(med[r][-1] / med["dense"][-1])
    print(f"BERT-small (hidden 256, 4 layers, 4 heads, FFN 1024), batch 8 x 128, AdamW, CPU, {args.threads} threads, "
          f"{args.rounds} rounds x {args.steps} steps, interleaved, {args.clock} clock"
          + (f", {args.accumulate} micro-batches per optimizer step" if args.accumulate > 1 else ""))
    print(f"| {'run':<32} | {'median step (ms)':>16} | {'ratio (median of rounds)':>24} | {'ratios per round':<22} |")
    print(f"|{'-' * 34}|{'-' * 18}|{'-' * 26}|{'-' * 24}|")
    print(f"| {'dense':<32} | {statistics.median(med['dense']) * 1e3:16.1f} | {1.0:24.3f} | {'':<22} |")
    for r in chosen:
        per = ", ".join(f"{x:.2f}" for x in ratio[r])
        print(f"| {table[r][0]:<32} | {statistics.median(med[r]) * 1e3:16.1f} | {statistics.median(ratio[r]):24.3f} | {per:<22} |")


if __name__ == "__main__":
    main()
