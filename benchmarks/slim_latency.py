"""CPU latency of dense vs slim models after structured pruning + ``lightning_compress.clean``.

* BERT-base-shaped encoder (``transformers.BertConfig`` defaults: hidden 768, 12 heads, intermediate
  3072; random init; ``--bert-layers`` layers, 4 by default like DeepSpeed's reference run) with 50% of
  the heads (HeadPruning) and 50% of the FFN rows (RowPruning) removed.
* torchvision ResNet-18 (10 classes) with 50% of the channels removed (ChannelPruning: residual
  stages share one mask, found by tracing; nothing named by hand), at CIFAR size (32x32) and at
  224x224 (Torch-Pruning's reference setting).

Masks come from the callbacks' own ``l1`` ranking on the random weights (the structure is what
matters for speed).  Latency: median of ``--runs`` interleaved forwards (dense, slim, dense, ...),
``torch.no_grad``, eval mode, ``--threads`` intra-op threads.  FLOPs by ``torch.utils.flop_counter``
(of the eager, unfolded models: convolutions and matmuls; the same ratio for every row of a model).
Target: measured speedup >= 0.9 x the FLOP ratio.

``--clock wall`` (default) times with ``time.perf_counter``; ``--clock cpu`` with
``time.process_time`` (CPU time of this process: on a shared, overloaded machine it leaves out the
time the OS gives to other processes while a forward is running; still interleaved, still median).

For the ResNets every deployment variant is applied to the dense AND the slim model alike, and all
variants' dense and slim models are timed interleaved in one loop (so each row sees the same load):

* ``eager``: the models as ``clean()`` returns them (BatchNorm kept);
* ``eager, BN folded``: ``fold_batchnorm`` on the dense model, ``clean(..., fold_batchnorm=True)``
  on the slim one (Conv2d -> BatchNorm2d pairs folded into the convs; same outputs in eval);
* ``eager, channels_last`` / ``eager, BN folded + channels_last``: weights and input in
  ``torch.channels_last`` (NHWC), which oneDNN's convolutions prefer;
* ``onnxruntime``: ``torch.onnx.export`` (as ``save_slim``/``RedundancyClean`` write ``model.onnx``),
  run by ONNX Runtime's CPU provider with ``--threads`` intra-op threads and its default graph
  optimizations (which fold BatchNorm and fuse Conv+ReLU/Add for both models).

    python benchmarks/slim_latency.py --threads 1 --runs 20
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import time
from typing import Any, Callable

CLOCK: Callable[[], float] = time.perf_counter

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_compress.callbacks.channel_pruning import ChannelPruning
from lightning_compress.callbacks.head_pruning import HeadPruning
from lightning_compress.callbacks.row_pruning import RowPruning
from lightning_compress.export import clean, fold_batchnorm


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
            t0 = CLOCK()
            call(m)
            times[k].append(CLOCK() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _row(name: str, p_dense: int, p_slim: int, ideal: float, t_dense: float, t_slim: float) -> dict:
    speed = t_dense / t_slim
    return {
        "model": name, "params": f"{p_dense / 1e6:.1f}M -> {p_slim / 1e6:.1f}M", "flop_ratio": ideal,
        "dense_ms": t_dense * 1e3, "slim_ms": t_slim * 1e3, "speedup": speed, "of_ideal": speed / ideal,
    }


def ort_runner(model: nn.Module, x: torch.Tensor, threads: int) -> Callable[[Any], Any]:
    """The model exported to ONNX (in memory) and run by ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    f = io.BytesIO()
    torch.onnx.export(model.eval(), (x,), f, dynamo=False, opset_version=17)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(f.getvalue(), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda xn: sess.run(None, {name: xn})


@torch.no_grad()
def bench_variants(name: str, dense: nn.Module, callbacks, x: torch.Tensor, runs: int, threads: int, warmup: int = 3) -> list[dict]:
    """Rows for every deployment variant of a conv net (see the module docstring), timed interleaved."""
    for m in dense.modules():  # trained-looking BatchNorm statistics, so folding is not a no-op
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    dense.eval()
    masked = copy.deepcopy(dense)
    prune_now(masked, callbacks)
    slim = clean(copy.deepcopy(masked)).eval()
    slim_folded = clean(masked, fold_batchnorm=True).eval()
    dense_folded = copy.deepcopy(dense)
    fold_batchnorm(dense_folded)
    ideal = flops(dense, x) / flops(slim, x)
    p_dense = sum(p.numel() for p in dense.parameters())
    p_slim = sum(p.numel() for p in slim.parameters())
    for a, b in ((dense, dense_folded), (slim, slim_folded)):
        err = (a(x) - b(x)).abs().max().item()
        assert err < 1e-4, f"BatchNorm folding changed the outputs by {err}"
    xcl = x.contiguous(memory_format=torch.channels_last)
    xn = x.numpy()

    def cl(m: nn.Module) -> nn.Module:
        return copy.deepcopy(m).to(memory_format=torch.channels_last)

    def eager(m: nn.Module, inp: torch.Tensor) -> Callable[[], Any]:
        return lambda: m(inp)

    variants: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "eager": (eager(dense, x), eager(slim, x)),
        "eager, BN folded": (eager(dense_folded, x), eager(slim_folded, x)),
        "eager, channels_last": (eager(cl(dense), xcl), eager(cl(slim), xcl)),
        "eager, BN folded + channels_last": (eager(cl(dense_folded), xcl), eager(cl(slim_folded), xcl)),
    }
    try:
        d_ort, s_ort = ort_runner(dense, x, threads), ort_runner(slim, x, threads)
        variants["onnxruntime"] = (lambda: d_ort(xn), lambda: s_ort(xn))
    except ImportError:
        pass
    calls = {(v, k): fn for v, pair in variants.items() for k, fn in zip(("dense", "slim"), pair)}
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[tuple[str, str], list[float]] = {k: [] for k in calls}
    for _ in range(runs):
        for k, fn in calls.items():
            t0 = CLOCK()
            fn()
            times[k].append(CLOCK() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return [_row(f"{name}, {v}", p_dense, p_slim, ideal, med[(v, "dense")], med[(v, "slim")]) for v in variants]


def bench(name: str, dense: nn.Module, callbacks, x, runs: int) -> dict:
    dense.eval()
    masked = copy.deepcopy(dense)
    prune_now(masked, callbacks)
    slim = clean(masked).eval()
    f_dense, f_slim = flops(dense, x), flops(slim, x)
    p_dense = sum(p.numel() for p in dense.parameters())
    p_slim = sum(p.numel() for p in slim.parameters())
    lat = latency({"dense": dense, "slim": slim}, x, runs)
    return _row(name, p_dense, p_slim, f_dense / f_slim, lat["dense"], lat["slim"])


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
    ap.add_argument("--no-224", action="store_true", help="skip the 224x224 ResNet-18")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: time.perf_counter; cpu: time.process_time (this process's CPU time)")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
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

        rows += bench_variants(
            f"ResNet-18 CIFAR 32x32, bs{args.cifar_batch}, 50% channels",
            resnet18(num_classes=10), [ChannelPruning(sparsity=0.5)], torch.randn(args.cifar_batch, 3, 32, 32),
            args.runs, args.threads,
        )
        if not args.no_224:
            rows += bench_variants(
                "ResNet-18 224x224, bs1, 50% channels", resnet18(num_classes=10), [ChannelPruning(sparsity=0.5)],
                torch.randn(1, 3, 224, 224), args.runs, args.threads,
            )
    print(f"\nthreads={torch.get_num_threads()} runs={args.runs} clock={args.clock} (median of interleaved runs)\n")
    print("| model | params | FLOP ratio | dense ms | slim ms | speedup | speedup / FLOP ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params']} | {r['flop_ratio']:.2f}x | {r['dense_ms']:.1f} | {r['slim_ms']:.1f} | "
              f"{r['speedup']:.2f}x | {r['of_ideal']:.2f} |")


if __name__ == "__main__":
    main()
