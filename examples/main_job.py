"""The main job: train a CIFAR-10 ResNet-20 briefly on CPU, compress it, and print what it bought.

    python examples/main_job.py                      # offline: reads ../shared/data/cifar10 zips
    python examples/main_job.py --data-dir data/cifar10_subset --recipe snip_momentum

Steps (no network needed):

1. Data: if ``--data-dir`` has no ``train/<class>/*.jpg`` + ``test/...`` yet, a class-balanced subset
   (``--train-per-class`` / ``--test-per-class`` images) is extracted from the zips in ``--source``
   (default ``../shared/data/cifar10``; a folder with ``train.zip``/``test.zip`` or image folders) and
   marked as such (``DATA_ORIGIN.json``).  A ``--data-dir`` that already holds other images (the full
   set, another subset) is refused with the fix.  The run prints which data it uses.
2. Dense: ResNet-20 trained ``--dense-epochs`` epochs (SGD + cosine).
3. Compression, fine-tuning ``--compress-epochs`` epochs from the dense weights:
   * ``channel`` (default when ChannelPruning and RedundancyClean are installed): 50% of the conv
     channels pruned (residual-coupled convs together), then physically removed by RedundancyClean:
     a smaller, faster model.
   * ``snip_momentum``: 4x1 blocks pruned to 50% by SNIP-momentum scores (weights zeroed in place:
     half the non-zeros, same dense shapes, so latency does not change without sparse kernels).
4. Report: test accuracy, parameters (total and non-zero), saved size (``torch.save`` of the state dict)
   and CPU latency (median of interleaved forwards on one test batch) before and after.

About 4-5 minutes on 2 CPU cores with the defaults (4 min 7 s measured on a shared, loaded 2-core box).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import lightning_compress  # noqa: E402,F401
from examples.cifar.data import CifarDataModule, prepare_subset  # noqa: E402
from examples._quiet import hide_lightning_tips  # noqa: E402
from examples.cifar.model import CifarResNet  # noqa: E402


def available_recipes() -> list[str]:
    import lightning_compress.callbacks as cbs

    recipes = []
    if hasattr(cbs, "ChannelPruning") and hasattr(cbs, "RedundancyClean"):
        recipes.append("channel")
    recipes.append("snip_momentum")
    return recipes


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


def saved_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(state_dict)`` (what a checkpoint of the weights takes)."""
    buf = io.BytesIO()
    torch.save({k: v for k, v in model.state_dict().items()}, buf)
    return buf.tell()


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
def accuracy(model: nn.Module, loader: Any) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(-1) == y).sum())
        total += y.numel()
    return correct / max(1, total)


def measure(name: str, model: nn.Module, dm: CifarDataModule) -> dict[str, Any]:
    total, nonzero = count_params(model)
    return {
        "model": name,
        "test_acc": accuracy(model, dm.test_dataloader()),
        "params": total,
        "nonzero_params": nonzero,
        "size_bytes": saved_size(model),
    }


def print_report(rows: list[dict[str, Any]], batch: int) -> None:
    head = f"{'model':<40}{'test acc':>9}{'params':>10}{'non-zero':>10}{'size (KB)':>11}{f'latency b{batch} (ms)':>20}"
    print("\n" + head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['model']:<40}{r['test_acc']:>9.4f}{r['params']:>10,}{r['nonzero_params']:>10,}"
            f"{r['size_bytes'] / 1024:>11.1f}{r['latency_ms']:>20.2f}"
        )
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(
            f"\n{b['model']} vs {a['model']}: accuracy {b['test_acc'] - a['test_acc']:+.4f}, "
            f"non-zero parameters x{a['nonzero_params'] / max(1, b['nonzero_params']):.2f} fewer, "
            f"size x{a['size_bytes'] / max(1, b['size_bytes']):.2f} smaller, "
            f"speed-up x{a['latency_ms'] / max(1e-9, b['latency_ms']):.2f}"
        )


# ---------------------------------------------------------------------------------------------- recipes
def compression_callbacks(
    recipe: str, sparsity: float, steps: int, out_dir: Path, formats: list[str], latency_runs: int
) -> list[pl.Callback]:
    """Prune over the first 60% of the fine-tuning steps, then let the model recover."""
    import lightning_compress.callbacks as cbs

    end = max(0, int(steps * 0.6) - 1)
    frequency = max(1, end // 8)
    if recipe == "channel":
        return [
            cbs.ChannelPruning(sparsity=sparsity, method="l1", start_step=0, end_step=end, frequency=frequency),
            cbs.RedundancyClean(output_dir=str(out_dir), formats=formats, latency_runs=latency_runs),
        ]
    return [
        cbs.SnipMomentumPruning(
            pattern="4x1", sparsity=sparsity, start_step=0, end_step=end, frequency=frequency, max_sparsity_per_layer=0.9
        )
    ]


def trainer(epochs: int, callbacks: list[pl.Callback], out_dir: Path) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(out_dir),
        enable_progress_bar=sys.stdout.isatty(),
    )


def slim_model(model: CifarResNet, callbacks: list[pl.Callback]) -> nn.Module | None:
    """The physically smaller model after RedundancyClean, if the recipe made one."""
    for cb in callbacks:
        for attr in ("slim_model", "model", "cleaned"):
            slim = getattr(cb, attr, None)
            if isinstance(slim, nn.Module):
                return slim
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    hide_lightning_tips()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/cifar10_subset",
                        help="the subset's image folders (created from --source if missing; not data/cifar10, the "
                        "folder the CIFAR example CLI reads the full set from)")
    parser.add_argument("--source", default=None,
                        help="folder with CIFAR-10 train.zip/test.zip (or image folders) to take the subset from "
                        "(default: ../shared/data/cifar10 from the current folder or from the repository root)")
    parser.add_argument("--train-per-class", type=int, default=250)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--recipe", choices=["auto", "channel", "snip_momentum"], default="auto")
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of channels / weights removed")
    parser.add_argument("--dense-epochs", type=int, default=4)
    parser.add_argument("--compress-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16, help="ResNet first-stage channels (16 = ResNet-20)")
    parser.add_argument("--latency-batch", type=int, default=32)
    parser.add_argument("--latency-runs", type=int, default=15, help="timed forwards per model (median reported)")
    parser.add_argument("--formats", default="torch_export,safetensors",
                        help="what RedundancyClean saves (comma-separated: torch_export, safetensors, onnx)")
    parser.add_argument("--out-dir", default="out/main_job")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    recipes = available_recipes()
    recipe = recipes[0] if args.recipe == "auto" else args.recipe
    if recipe not in recipes:
        parser.error(f"--recipe {recipe}: needs callbacks this installation lacks; available: {recipes}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    source = args.source
    if source is None:
        candidates = [Path.cwd().parent / "shared" / "data" / "cifar10", ROOT.parent / "shared" / "data" / "cifar10"]
        source = next((c for c in candidates if c.is_dir()), candidates[0])
    data_dir = prepare_subset(source, args.data_dir, args.train_per_class, args.test_per_class)
    pl.seed_everything(args.seed, verbose=False)
    # the folder is the subset prepare_subset made or checked (its DATA_ORIGIN.json says so): use it as it is
    dm = CifarDataModule(str(data_dir), batch_size=args.batch_size, num_workers=0, subset="folder", download=False)
    dm.prepare_data()
    dm.setup("fit")  # prints which data: path, images per split, where they came from
    print(f"recipe: {recipe}")
    x = next(iter(dm.test_dataloader()))[0][: args.latency_batch]

    model = CifarResNet("resnet20", width=args.width, lr=0.1)
    trainer(args.dense_epochs, [], out_dir).fit(model, dm)
    rows = [measure("ResNet-20 dense", model.model, dm)]
    models = [copy.deepcopy(model.model)]  # the dense network, for the latency comparison at the end
    print(f"dense done in {time.time() - t0:.0f}s: test acc {rows[0]['test_acc']:.4f}")

    steps = args.compress_epochs * (len(dm.train_set) // args.batch_size)
    formats = [f for f in args.formats.split(",") if f]
    callbacks = compression_callbacks(recipe, args.sparsity, steps, out_dir / "slim", formats, args.latency_runs)
    model.hparams.lr = 0.05  # fine-tune from the dense weights with a fresh cosine cycle
    model.train()  # measuring left it in eval mode; Lightning keeps the modes it finds
    trainer(args.compress_epochs, callbacks, out_dir).fit(model, dm)
    label = {"channel": f"channel-pruned {args.sparsity:.0%}", "snip_momentum": f"snip_momentum 4x1 {args.sparsity:.0%}"}[recipe]
    rows.append(measure(f"{label} (masked)", model.model, dm))
    models.append(model.model)
    slim = slim_model(model, callbacks) if recipe == "channel" else None
    if slim is not None:
        rows.append(measure(f"{label} + RedundancyClean", slim, dm))
        models.append(slim)
    for row, ms in zip(rows, interleaved_latency_ms(models, x, args.latency_runs)):
        row["latency_ms"] = ms
    print_report(rows, args.latency_batch)
    print(f"\ntotal time {time.time() - t0:.0f}s; torch threads {torch.get_num_threads()}")
    (out_dir / "report.json").write_text(json.dumps({"recipe": recipe, "args": vars(args), "rows": rows}, indent=2))
    print(f"report written to {out_dir / 'report.json'}")
    return {"recipe": recipe, "rows": rows}


if __name__ == "__main__":
    main()
