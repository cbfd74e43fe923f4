"""CPU latency of dense vs slim models after structured pruning + ``lightning_compress.clean``.

* BERT-base-shaped encoder (``transformers.BertConfig`` defaults: hidden 768, 12 heads, intermediate
  3072; random init; ``--bert-layers`` layers, 4 by default like DeepSpeed's reference run) with 50% of
  the heads (HeadPruning) and 50% of the FFN rows (RowPruning) removed.
* torchvision ResNet-18 (10 classes) with 50% of the channels removed (ChannelPruning: residual
  stages share one mask, found by tracing; nothing named by hand), at CIFAR size (32x32) and at
  224x224 (Torch-Pruning's reference setting).

Masks come from the callbacks' own ``l1`` ranking on the random weights (the structure is what
matters for speed).  Latency: median of ``--runs`` interleaved forwards (dense, slim, dense, ...),
``torch.no_grad``, eval mode, ``--threads`` intra-op threads.  FLOPs by ``torch.utils.flop_counter``.
Target: measured speedup >= 0.9 x the FLOP ratio.

    python benchmarks/slim_latency.py --threads 1 --runs 20
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_compress.callbacks.channel_pruning import ChannelPruning
from lightning_compress.callbacks.head_pruning import HeadPruning
from lightning_compress.callbacks.row_pruning import RowPruning
from lightning_compress.export import clean


def prune_now(model: nn.Module, callbacks) -> None:
    """Attach the callbacks' masks and run one prune event at their final sparsity (no Trainer)."""
    for cb in callbacks:
        cb.setup(None, model, "fit")
        for g in cb.groups:
            cb.prune_group(g, g.sparsity)


def flops(model: nn.Module, x) -> int:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(*x) if isinstance(x, tuple) else model(x)
    return fc.get_total_flops()


@torch.no_grad()
def latency(models: dict[str, nn.Module], x, runs: int, warmup: int = 3) -> dict[str, float]:
    call = (lambda m: m(*x)) if isinstance(x, tuple) else (lambda m: m(x))
    for _ in range(warmup):
        for m in models.values():
            call(m)
    times = {k: [] for k in models}
    for _ in range(runs):
        for k, m in models.items():
            t0 = time.perf_counter()
            call(m)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(name: str, dense: nn.Module, callbacks, x, runs: int) -> dict:
    dense.eval()
    masked = copy.deepcopy(dense)
    prune_now(masked, callbacks)
    slim = clean(masked).eval()
    f_dense, f_slim = flops(dense, x), flops(slim, x)
    p_dense = sum(p.numel() for p in dense.parameters())
    p_slim = sum(p.numel() for p in slim.parameters())
    lat = latency({"dense": dense, "slim": slim}, x, runs)
    speed = lat["dense"] / lat["slim"]
    ideal = f_dense / f_slim
    return {
        "model": name, "params": f"{p_dense / 1e6:.1f}M -> {p_slim / 1e6:.1f}M", "flop_ratio": ideal,
        "dense_ms": lat["dense"] * 1e3, "slim_ms": lat["slim"] * 1e3, "speedup": speed, "of_ideal": speed / ideal,
    }


class BertEncoder(nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig(num_hidden_layers=layers), add_pooling_layer=False)

    def forward(self, input_ids):
        return self.bert(input_ids=input_ids).last_hidden_state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bert-layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="BERT batch size")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--cifar-batch", type=int, default=64)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--only", choices=["bert", "resnet"], default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    if args.only in (None, "bert"):
        ids = torch.randint(0, 30522, (args.batch, args.seq))
        rows.append(bench(
            f"BERT-base {args.bert_layers}L, bs{args.batch} seq{args.seq}, 50% heads + 50% FFN rows",
            BertEncoder(args.bert_layers), [HeadPruning(sparsity=0.5), RowPruning(sparsity=0.5)], ids, args.runs,
        ))
    if args.only in (None, "resnet"):
        from torchvision.models import resnet18

        rows.append(bench(
            f"ResNet-18 CIFAR 32x32, bs{args.cifar_batch}, 50% channels",
            resnet18(num_classes=10), [ChannelPruning(sparsity=0.5)], torch.randn(args.cifar_batch, 3, 32, 32), args.runs,
        ))
        rows.append(bench(
            "ResNet-18 224x224, bs1, 50% channels", resnet18(num_classes=10), [ChannelPruning(sparsity=0.5)],
            torch.randn(1, 3, 224, 224), args.runs,
        ))
    print(f"\nthreads={torch.get_num_threads()} runs={args.runs} (median of interleaved runs)\n")
    print("| model | params | FLOP ratio | dense ms | slim ms | speedup | speedup / FLOP ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params']} | {r['flop_ratio']:.2f}x | {r['dense_ms']:.1f} | {r['slim_ms']:.1f} | "
              f"{r['speedup']:.2f}x | {r['of_ideal']:.2f} |")


if __name__ == "__main__":
    main()
