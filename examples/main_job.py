"""The main job: compress a well-trained CIFAR-10 ResNet-20 on CPU and print what it bought.

    python examples/main_job.py                          # offline: reads ../shared/data/cifar10
    python examples/main_job.py --source DIR --recipe channel

Steps (no network needed):

1. Data: CIFAR-10 ``train.zip``/``test.zip`` (or ``train/``/``test/`` image folders) from ``--source``
   (default ``../shared/data/cifar10``) are decoded once into tensors (about 5 s); ``--train-per-class`` /
   ``--test-per-class`` keep the first N images of every class.  No data there: ``FileNotFoundError`` saying
   where it is expected and how to pass it.
2. Dense: the ResNet-20 shipped in ``examples/cifar/weights/resnet20_dense.pt`` (trained by
   ``examples/cifar/train_dense.py`` on all 50,000 training images; ``--weights PATH`` for another file of
   that format), evaluated on every test image (10,000).  Nothing dense is trained here.
3. Two compression recipes, each a short fine-tune from the dense weights through Lightning's Trainer with
   the compression callbacks, the dense model as a distillation teacher (``--kd-weight``), and
   ``RedundancyClean`` at the end:
   * ``channel``: ``ChannelPruning`` 50% of the channels inside every residual block (l1; the first conv's
     outputs and the second conv's inputs; ``--channel-layers all`` also narrows the residual streams, where
     the convs of a stream share one mask), pruned over the first 30% of the steps
     (``--channel-prune-end``), then physically removed: a smaller, faster model;
   * ``snip_w8a8``: ``SnipMomentumPruning`` 4x1 blocks at 50% (global ranking) + ``WeightQuant`` 8 bits per
     channel + ``ActQuant`` 8 bits static: int8 weights stored, half of them zero (same dense shapes, so
     latency does not drop without sparse / int8 kernels).
4. Report: test accuracy on every test image before / after, parameters (total, non-zero), weight bits,
   file size (``model.safetensors`` as ``RedundancyClean`` stores it; the dense weights the same way), CPU
   latency (median of interleaved forwards of one test batch), printed and written to
   ``out/main_job/report.json``, plus a picture ``out/main_job/report.png`` (per-layer sparsity and bits,
   accuracy against latency; needs matplotlib, the ``plot`` extra).

Progress: one line per phase and per epoch (loss, accuracy, sparsity / bits, ETA; also every 30 s) when
stdout is not a terminal; Lightning's progress bar (rich when installed) when it is.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import lightning_compress  # noqa: E402,F401
from examples._quiet import hide_lightning_tips  # noqa: E402
from examples.cifar.finetune import FineTune  # noqa: E402
from examples.cifar.tensor_data import CifarTensors, accuracy, load_cifar  # noqa: E402
from examples.cifar.train_dense import load_dense, normalize  # noqa: E402

DEFAULT_WEIGHTS = ROOT / "examples" / "cifar" / "weights" / "resnet20_dense.pt"
RECIPES = ("channel", "snip_w8a8")


# ---------------------------------------------------------------------------------------------- measuring
def effective_weights(model: nn.Module) -> list[torch.Tensor]:
    """Every parameter as forward sees it (masks applied), for counting non-zeros."""
    from lightning_compress.core import masking

    out = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            out.append(masking.effective_param(module, name).detach() if masking.is_wrapped(module) else p.detach())
    return out


def count_params(model: nn.Module) -> tuple[int, int]:
    weights = effective_weights(model)
    return sum(w.numel() for w in weights), sum(int(torch.count_nonzero(w)) for w in weights)


@torch.inference_mode()
def interleaved_latency_ms(models: list[nn.Module], x: torch.Tensor, repeats: int = 15) -> list[float]:
    """Median forward time of each model, runs interleaved (A B C A B C ...) so that load changes on a
    shared machine hit every model alike."""
    for m in models:
        m.eval()
        for _ in range(2):
            m(x)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(max(1, repeats)):
        for i, m in enumerate(models):
            t = time.perf_counter()
            m(x)
            times[i].append((time.perf_counter() - t) * 1000.0)
    return [statistics.median(t) for t in times]


@torch.inference_mode()
def check_slim(trained: nn.Module, slim: nn.Module, images: torch.Tensor, label: str) -> dict[str, float]:
    """Compare the slim model with the trained (masked / fake-quantized) one on ``images``; refuse a slim
    model that predicts differently (RedundancyClean must not change what the model computes)."""
    x = normalize(images)
    trained.eval()
    slim.eval()
    a, b = trained(x), slim(x)
    agree = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    diff = float((a - b).abs().max())
    if agree < 0.99:
        raise RuntimeError(f"main_job: {label}: the RedundancyClean model predicts differently from the trained model "
                           f"on {len(x)} test images (same class for {agree:.1%}, max |logit difference| {diff:.3g})")
    return {"same_prediction": agree, "max_abs_logit_diff": diff}


def dense_safetensors_bytes(network: nn.Module, out_dir: Path) -> int:
    """Bytes of the dense weights saved as ``model.safetensors`` (as RedundancyClean saves the slim ones)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    return path.stat().st_size


# ---------------------------------------------------------------------------------------------- recipes
INNER_CONVS = r"^model\.layer\d+\.\d+\.conv1$"  # the first conv of every residual block: its channels stay inside the block


def recipe_callbacks(recipe: str, sparsity: float, channel_layers: str = "inner", prune_end: float = 0.3) -> list[pl.Callback]:
    """The compression callbacks of ``recipe`` (steps as fractions of the fit, so any length works).

    ``channel_layers``: ``"inner"`` prunes the channels inside each residual block (the first conv's
    outputs = the second conv's inputs); ``"all"`` also prunes the residual streams (every conv writing
    into a stage's stream shares one mask), which keeps about a quarter of the weights at 50%."""
    import lightning_compress.callbacks as cbs

    if recipe == "channel":
        modules = [INNER_CONVS] if channel_layers == "inner" else None
        end, every = (prune_end, prune_end / 10) if prune_end > 0 else (0, 1)  # 0: one event at the first step
        return [cbs.ChannelPruning(sparsity=sparsity, method="l1", schedule="exp", start_step=0, end_step=end,
                                   frequency=every, modules=modules)]
    return [
        cbs.SnipMomentumPruning(pattern="4x1", sparsity=sparsity, schedule="exp", start_step=0, end_step=0.4,
                                frequency=0.04, scope="global", max_sparsity_per_layer=0.9),
        cbs.WeightQuant(bits=8, granularity="channel", symmetric=True),
        cbs.ActQuant(bits=8, range="static", symmetric=False, momentum=0.95),
    ]


def recipe_label(recipe: str, sparsity: float) -> str:
    return {"channel": f"channel {sparsity:.0%}", "snip_w8a8": f"snip_momentum 4x1 {sparsity:.0%} + W8A8"}[recipe]


def progress_callbacks(label: str) -> tuple[list[pl.Callback], bool]:
    """Line-per-epoch progress when stdout is not a terminal, else Lightning's bar (rich if installed)."""
    if not sys.stdout.isatty():
        from lightning_compress.callbacks import ProgressLines

        return [ProgressLines(label, every_s=30, metrics=["train_acc", "kd_loss"])], False
    try:
        from lightning.pytorch.callbacks import RichProgressBar

        return [RichProgressBar()], True
    except (ImportError, ModuleNotFoundError):  # rich is not installed: Lightning's tqdm bar
        return [], True


def run_recipe(recipe: str, dense: nn.Module, data: CifarTensors, args: argparse.Namespace, x_lat: torch.Tensor,
               out_dir: Path, phase: Any) -> tuple[dict[str, Any], nn.Module, dict[str, Any]]:
    """Fine-tune a copy of ``dense`` under ``recipe``; returns the report row, the slim model and plot data."""
    from lightning_compress.callbacks import RedundancyClean, WeightQuant
    from lightning_compress.report_plot import layer_compression

    label = recipe_label(recipe, args.sparsity)
    epochs = args.channel_epochs if recipe == "channel" else args.w8a8_epochs
    lr = args.channel_lr if recipe == "channel" else args.w8a8_lr
    per_epoch = data.train[1].numel() // args.batch_size
    steps = max(1, round(epochs * per_epoch))
    phase(f"{label}: fine-tune {steps} optimizer steps ({steps / per_epoch:.2f} epochs of {data.train[1].numel():,} "
          f"images, batch {args.batch_size}, lr {lr}, KD weight {args.kd_weight}) from the dense weights")
    pl.seed_everything(args.seed, verbose=False)
    teacher = copy.deepcopy(dense) if args.kd_weight > 0 else None
    module = FineTune(copy.deepcopy(dense), teacher, lr=lr, kd_weight=args.kd_weight, temperature=args.temperature)
    compress = recipe_callbacks(recipe, args.sparsity, args.channel_layers, args.channel_prune_end)
    clean = RedundancyClean(output_dir=str(out_dir / recipe), formats=args.formats, example_input=x_lat,
                            latency_runs=0, overwrite=True)
    progress, bar = progress_callbacks(label)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, max_epochs=math.ceil(steps / per_epoch),
        callbacks=[*compress, clean, *progress], logger=False, enable_checkpointing=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=str(out_dir), enable_progress_bar=bar,
    )
    t = time.time()
    trainer.fit(module, data)
    seconds = time.time() - t
    slim = clean.slim_model
    if slim is None:
        raise RuntimeError(f"main_job: {label}: RedundancyClean produced no slim model")
    check = check_slim(module, slim, data.test[0][:500], label)
    bits = {}
    for cb in compress:
        if isinstance(cb, WeightQuant) and cb.current_bits is not None:
            bits.update({name.removeprefix("model."): cb.current_bits for name in cb.targets})
    total, nonzero = count_params(slim.model)
    phase(f"{label}: evaluating the RedundancyClean model on {data.test[1].numel():,} test images", new=False)
    row = {
        "model": f"{label} + RedundancyClean", "recipe": recipe, "test_acc": accuracy(slim, *data.test),
        "params": total, "nonzero_params": nonzero, "weight_bits": max(bits.values()) if bits else 32,
        "size_bytes": Path(clean.files["safetensors"]).stat().st_size if "safetensors" in clean.files else None,
        "finetune_s": round(seconds, 1), "steps": steps, "epochs": round(steps / per_epoch, 3), "lr": lr,
        "check": check, "export": clean.files,
    }
    layers = layer_compression(dense, slim.model, bits)
    return row, slim, {"label": label, "layers": layers}


# ---------------------------------------------------------------------------------------------- report
def print_report(rows: list[dict[str, Any]], batch: int) -> None:
    head = (f"{'model':<46}{'test acc':>9}{'change':>10}{'params':>10}{'non-zero':>10}{'bits':>6}"
            f"{'file (KB)':>11}{f'latency b{batch} (ms)':>19}{'speed-up':>10}")
    print("\n" + head)
    print("-" * len(head))
    base = rows[0]
    for r in rows:
        change = "" if r is base else f"{(r['test_acc'] - base['test_acc']) * 100:+.2f} pt"
        size = "-" if r["size_bytes"] is None else f"{r['size_bytes'] / 1024:.1f}"
        print(f"{r['model']:<46}{r['test_acc']:>9.4f}{change:>10}{r['params']:>10,}{r['nonzero_params']:>10,}"
              f"{r['weight_bits']:>6}{size:>11}{r['latency_ms']:>19.2f}{base['latency_ms'] / r['latency_ms']:>9.2f}x")


#: options of the earlier main job (which trained the dense model itself) and why they went
RETIRED = {
    "--dense-epochs": "the main job no longer trains the dense model: it starts from --weights (trained by "
                      "examples/cifar/train_dense.py; train new ones there and pass --weights PATH)",
    "--data-dir": "the images are decoded from --source straight into memory (nothing is extracted); pass the "
                  "CIFAR-10 folder as --source",
    "--width": "the width comes with --weights (train another with examples/cifar/train_dense.py --width N)",
}


def _retired_dest(option: str) -> str:
    return "retired_" + option.strip("-").replace("-", "_")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=None,
                   help="folder with CIFAR-10 train.zip/test.zip (or train/ and test/ image folders); default "
                   "../shared/data/cifar10 from the current folder or from the repository root")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                   help="dense ResNet saved by examples/cifar/train_dense.py (default: the shipped ResNet-20)")
    p.add_argument("--recipe", choices=["both", *RECIPES], default="both")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of channels / weights removed")
    p.add_argument("--channel-layers", choices=["inner", "all"], default="inner",
                   help="channel recipe: prune the channels inside each residual block (inner) or also the residual "
                        "streams (all)")
    p.add_argument("--channel-prune-end", type=float, default=0.3,
                   help="channel recipe: the fraction of the fine-tuning steps by which the sparsity is reached (0: at once)")
    p.add_argument("--channel-epochs", type=float, default=0.8, help="fine-tuning epochs of the channel recipe")
    p.add_argument("--w8a8-epochs", type=float, default=0.3, help="fine-tuning epochs of the snip_w8a8 recipe")
    p.add_argument("--compress-epochs", type=float, default=None, help="sets --channel-epochs and --w8a8-epochs")
    p.add_argument("--channel-lr", type=float, default=0.02)
    p.add_argument("--w8a8-lr", type=float, default=0.005)
    p.add_argument("--kd-weight", type=float, default=1.0, help="distillation from the dense model (0: none)")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--train-per-class", type=int, default=None, help="first N training images per class (default all)")
    p.add_argument("--test-per-class", type=int, default=None, help="first N test images per class (default all 1,000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--latency-batch", type=int, default=32)
    p.add_argument("--latency-runs", type=int, default=15, help="timed forwards per model (median reported)")
    p.add_argument("--formats", default="torch_export,safetensors",
                   help="what RedundancyClean saves (comma-separated: torch_export, safetensors, onnx)")
    p.add_argument("--out-dir", default="out/main_job")
    p.add_argument("--seed", type=int, default=0)
    for old in RETIRED:
        p.add_argument(old, default=None, help=argparse.SUPPRESS, dest=_retired_dest(old))
    args = p.parse_args(argv)
    for old, why in RETIRED.items():
        if getattr(args, _retired_dest(old)) is not None:
            p.error(f"{old}: {why}")
    if args.compress_epochs is not None:
        args.channel_epochs = args.w8a8_epochs = args.compress_epochs
    if args.channel_epochs <= 0 or args.w8a8_epochs <= 0:
        p.error("--channel-epochs / --w8a8-epochs / --compress-epochs must be > 0 (fractions of an epoch are fine)")
    if not 0 < args.sparsity < 1:
        p.error(f"--sparsity {args.sparsity}: must be in (0, 1)")
    if not 0 <= args.channel_prune_end <= 1:
        p.error(f"--channel-prune-end {args.channel_prune_end}: must be a fraction of the fine-tuning steps in [0, 1] "
                "(0: the whole sparsity at the first step)")
    args.formats = [f for f in args.formats.split(",") if f]
    if "safetensors" not in args.formats:
        args.formats.append("safetensors")  # the report's file size is that file
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    hide_lightning_tips()
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipes = list(RECIPES) if args.recipe == "both" else [args.recipe]
    t0 = time.time()
    n_phases = 3 + len(recipes)
    counter = iter(range(1, 100))

    def phase(text: str, new: bool = True) -> None:
        prefix = f"[phase {next(counter)}/{n_phases}] " if new else "    "
        print(f"{prefix}{text}  (at {time.time() - t0:.0f} s)", flush=True)

    source = args.source
    if source is None:
        candidates = [Path.cwd().parent / "shared" / "data" / "cifar10", ROOT.parent / "shared" / "data" / "cifar10"]
        source = next((c for c in candidates if c.is_dir()), candidates[0])
    weights = Path(args.weights)
    if not weights.is_file():
        raise FileNotFoundError(
            f"main_job: --weights {str(weights)!r} does not exist. The repository ships the dense ResNet-20 as "
            f"{DEFAULT_WEIGHTS.relative_to(ROOT)}; to make one: python examples/cifar/train_dense.py --out PATH "
            "(about an hour on 2 CPU cores), then pass --weights PATH.")
    phase(f"data: decoding CIFAR-10 from {source}")
    train = load_cifar(source, "train", args.train_per_class)
    test = load_cifar(source, "test", args.test_per_class)
    phase(f"data: {train[1].numel():,} train / {test[1].numel():,} test images", new=False)
    data = CifarTensors(train, test, batch_size=args.batch_size, seed=args.seed)
    x_lat = normalize(test[0][: args.latency_batch])

    phase(f"dense: {weights}")
    dense, meta = load_dense(weights)
    dense.eval()
    dense_acc = accuracy(dense, *test)
    phase(f"dense: test accuracy {dense_acc:.4f} on {test[1].numel():,} images (the weights file says "
          f"{meta.get('test_acc', float('nan')):.4f}; trained {meta.get('total_epochs', meta.get('epochs', '?'))} epochs on "
          f"{meta.get('train_images', '?')} images in {meta.get('total_train_minutes', meta.get('train_minutes', '?'))} min)", new=False)
    total, nonzero = count_params(dense)
    rows = [{"model": f"ResNet-{meta.get('depth', 20)} dense", "recipe": "dense", "test_acc": dense_acc,
             "params": total, "nonzero_params": nonzero, "weight_bits": 32,
             "size_bytes": dense_safetensors_bytes(dense, out_dir / "dense")}]
    models: list[nn.Module] = [dense]
    plots = []
    for recipe in recipes:
        row, slim, plot = run_recipe(recipe, dense, data, args, x_lat, out_dir, phase)
        rows.append(row)
        models.append(slim)
        plots.append(plot)

    phase(f"latency: {args.latency_runs} interleaved forwards of {args.latency_batch} test images per model, "
          f"{torch.get_num_threads()} torch threads")
    for row, ms in zip(rows, interleaved_latency_ms(models, x_lat, args.latency_runs)):
        row["latency_ms"] = ms
    print_report(rows, args.latency_batch)
    for r in rows[1:]:
        print(f"{r['model']}: {r['test_acc'] - dense_acc:+.4f} accuracy ({(r['test_acc'] - dense_acc) * 100:+.2f} points) "
              f"after {r['steps']} fine-tuning steps ({r['finetune_s']:.0f} s); non-zero parameters "
              f"x{rows[0]['nonzero_params'] / max(1, r['nonzero_params']):.2f} fewer, file x"
              f"{rows[0]['size_bytes'] / max(1, r['size_bytes'] or 1):.2f} smaller")
    result = {"weights": str(weights), "weights_meta": meta, "args": {k: v for k, v in vars(args).items() if not k.startswith("retired_")},
              "rows": rows, "layers": {p["label"]: p["layers"] for p in plots}, "total_s": round(time.time() - t0, 1)}
    (out_dir / "report.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\nreport written to {out_dir / 'report.json'}")
    try:
        from lightning_compress.report_plot import plot_compression

        png = plot_compression(out_dir / "report.png",
                               [{"name": r["model"], "accuracy": r["test_acc"], "latency_ms": r["latency_ms"]} for r in rows],
                               result["layers"], title=f"CIFAR-10 ResNet-20 on {test[1].numel():,} test images")
        result["picture"] = str(png)
        print(f"picture written to {png}")
    except ImportError as err:
        print(f"no picture: {err}")
    print(f"total time {time.time() - t0:.0f} s; torch threads {torch.get_num_threads()}")
    return result


if __name__ == "__main__":
    main()
