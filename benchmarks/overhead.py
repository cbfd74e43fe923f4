"""Training-step overhead of SnipMomentumPruning(pattern="4x1") on a BERT-small, CPU.

Two copies of the same model (same init) train side by side, one step each in turn (interleaved,
so machine noise hits both alike): a plain PyTorch step, and the same step with the callback's
real hooks called where Lightning calls them (``on_train_batch_start`` before forward,
``on_before_optimizer_step`` before ``optimizer.step``).  The Trainer's own per-step cost is the
same for both and is left out, which makes the ratio stricter, not kinder.  Prune events run every
``--frequency`` steps inside the timed region.

Prints the median step times, their ratio, and the memory the masks and scores take per targeted
weight.  Usage: ``python benchmarks/overhead.py [--steps 40] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from types import SimpleNamespace

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frequency", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import BertConfig, BertForSequenceClassification

    from lightning_compress import SnipMomentumPruning

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, num_labels=2)
    base = BertForSequenceClassification(cfg)
    base.train()
    pruned = copy.deepcopy(base)
    batch = {
        "input_ids": torch.randint(0, cfg.vocab_size, (8, 128)),
        "attention_mask": torch.ones(8, 128, dtype=torch.long),
        "labels": torch.randint(0, 2, (8,)),
    }
    total = args.warmup + args.steps
    cb = SnipMomentumPruning(pattern="4x1", sparsity=0.9, start_step=0, end_step=total, frequency=args.frequency)
    trainer = SimpleNamespace(global_step=0, model=pruned, logger=None, estimated_stepping_batches=total)
    cb.setup(trainer, pruned, "fit")
    cb.on_train_start(trainer, pruned)
    opt_a = torch.optim.AdamW(base.parameters(), lr=1e-4)
    opt_b = torch.optim.AdamW(pruned.parameters(), lr=1e-4)

    def plain_step() -> float:
        t = time.perf_counter()
        loss = base(**batch).loss
        loss.backward()
        opt_a.step()
        opt_a.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    def pruned_step(step: int) -> float:
        trainer.global_step = step
        t = time.perf_counter()
        cb.on_train_batch_start(trainer, None, batch, step)
        loss = pruned(**batch).loss
        loss.backward()
        cb.on_before_optimizer_step(trainer, None, opt_b)
        opt_b.step()
        opt_b.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    times_a, times_b = [], []
    for step in range(total):
        if step % 2 == 0:
            a, b = plain_step(), pruned_step(step)
        else:
            b, a = pruned_step(step), plain_step()
        if step >= args.warmup:
            times_a.append(a)
            times_b.append(b)
    targeted = sum(t.mask.numel() for t in cb.targets)
    mask_bytes = sum(t.mask.numel() * t.mask.element_size() for t in cb.targets)
    score_bytes = sum(t.score.score.numel() * t.score.score.element_size() for t in cb.targets if t.score.score is not None)
    ma, mb = statistics.median(times_a), statistics.median(times_b)
    print(f"BERT-small (hidden 256, 4 layers, 4 heads, FFN 1024), batch 8 x 128, CPU, {args.threads} threads, {args.steps} steps each, interleaved")
    print(f"| {'run':<38} | {'median step (ms)':>16} | {'ratio':>6} |")
    print(f"|{'-' * 40}|{'-' * 18}|{'-' * 8}|")
    print(f"| {'no callback':<38} | {ma * 1e3:16.1f} | {1.0:6.3f} |")
    print(f"| {'SnipMomentumPruning(4x1, 0.9)':<38} | {mb * 1e3:16.1f} | {mb / ma:6.3f} |")
    print(f"targeted weights: {targeted:,} in {len(cb.targets)} layers; final sparsity {cb.sparsity_stats()['sparsity']:.3f}")
    print(f"memory per targeted weight: masks {mask_bytes / targeted:.2f} B, scores {score_bytes / targeted:.2f} B")


if __name__ == "__main__":
    main()
