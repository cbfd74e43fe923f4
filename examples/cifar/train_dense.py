"""Train the dense CIFAR-10 ResNet-20 that the main job starts from (``examples/cifar/weights/``).

All 50,000 training images, one-cycle learning rate (linear warm-up to ``--lr`` over the first
``--warmup`` fraction of the optimizer steps, then cosine to 0), SGD with Nesterov momentum 0.9, weight
decay 5e-4 on conv/linear weights only, label smoothing 0.1, random crop (zero padding 4) + horizontal
flip.  Accuracy is measured on all 10,000 test images after every epoch; the last epoch's weights are
saved (no test-set model selection).

The images are decoded once from ``train.zip``/``test.zip`` (or the extracted ``train/``/``test/``
folders) into one uint8 tensor, and augmentation is done on whole batches in tensor code: on a 2-core CPU
that is several times faster than a per-image DataLoader.  Without a TTY it prints one line per epoch.

Usage::

    python examples/cifar/train_dense.py --data-dir ../shared/data/cifar10 --epochs 30 \\
        --out examples/cifar/weights/resnet20_dense.pt
    # a warm restart: a second one-cycle starting from those weights
    python examples/cifar/train_dense.py --init examples/cifar/weights/resnet20_dense.pt --epochs 20 --lr 0.1 ...

The saved file is ``{"state_dict": <ResNet state dict>, "meta": {...}}`` (``meta``: architecture, epochs,
seed, test accuracy, wall time, the command line); :func:`load_dense` reads it into a ``ResNet``.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import time
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.cifar.data import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from examples.cifar.model import ResNet  # noqa: E402

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _decode(data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    if img.shape[-2:] != (32, 32):
        raise ValueError(f"expected 32x32 CIFAR images, got {tuple(img.shape)}")
    return img


def load_split(data_dir: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``split`` ("train"/"test") as ``(N, 3, 32, 32)`` uint8 and ``(N,)`` int64 labels,
    in (class, file name) order; from ``data_dir/<split>.zip`` or the folder ``data_dir/<split>/``."""
    root = Path(data_dir)
    items: list[tuple[str, str, bytes]] = []
    if (root / split).is_dir():
        for cls in CLASSES:
            for f in sorted((root / split / cls).iterdir()):
                items.append((cls, f.name, f.read_bytes()))
    elif (root / f"{split}.zip").is_file():
        with zipfile.ZipFile(root / f"{split}.zip") as zf:
            for name in zf.namelist():
                parts = name.split("/")
                if len(parts) == 3 and parts[0] == split and parts[1] in CLASSES and parts[2]:
                    items.append((parts[1], parts[2], zf.read(name)))
    else:
        raise FileNotFoundError(
            f"train_dense: no {split}/ folder or {split}.zip in --data-dir {str(root)!r}; point it at the "
            "CIFAR-10 image-folder layout (e.g. ../shared/data/cifar10)"
        )
    items.sort(key=lambda t: (CLASSES.index(t[0]), t[1]))
    images = torch.stack([_decode(b) for _, _, b in items])
    labels = torch.tensor([CLASSES.index(c) for c, _, _ in items], dtype=torch.long)
    return images, labels


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> float32 normalized with the CIFAR-10 channel mean / std."""
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding 4, after normalization: pad value 0 = the mean) and horizontal flip,
    one draw per image."""
    n = batch.shape[0]
    padded = F.pad(batch, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=generator)
    dy = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(32).view(1, 32)).view(n, 1, 32, 1).expand(n, 3, 32, 40)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(32).view(1, 32)).view(n, 1, 1, 32).expand(n, 3, 32, 32)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(3)
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy (fraction) over all of ``images`` (normalized float) in eval mode."""
    model.eval()
    correct = 0
    for i in range(0, images.shape[0], batch_size):
        correct += int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
    return correct / images.shape[0]


def load_dense(path: str | os.PathLike) -> tuple[ResNet, dict]:
    """The ResNet saved by this script and its ``meta`` dict."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob["meta"]
    model = ResNet(int(meta["depth"]), int(meta["num_classes"]), int(meta["width"]))
    model.load_state_dict(blob["state_dict"])
    return model, meta


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data/cifar10")
    p.add_argument("--out", default="examples/cifar/weights/resnet20_dense.pt")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.2, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--warmup", type=float, default=0.15, help="fraction of the steps spent warming up")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--limit-train", type=int, default=0, help="use only the first N shuffled images (smoke runs)")
    p.add_argument("--init", default=None, help="start from the weights of a file this script saved (a second "
                   "one-cycle over them: a warm restart); its architecture must match --depth / --width")
    args = p.parse_args(argv)
    init_meta = None
    if args.init is not None:
        if not Path(args.init).is_file():
            p.error(f"--init {args.init!r}: no such file (a .pt written by this script)")
        init_model, init_meta = load_dense(args.init)
        if (int(init_meta["depth"]), int(init_meta["width"])) != (args.depth, args.width):
            p.error(f"--init {args.init!r} holds a depth {init_meta['depth']} / width {init_meta['width']} ResNet, "
                    f"but --depth {args.depth} / --width {args.width} were asked: pass the same architecture")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    x_train, y_train = load_split(args.data_dir, "train")
    x_test, y_test = load_split(args.data_dir, "test")
    x_train, x_test = normalize(x_train), normalize(x_test)
    if args.limit_train:
        keep = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(args.seed))[: args.limit_train]
        x_train, y_train = x_train[keep], y_train[keep]
    print(f"data: {x_train.shape[0]} train / {x_test.shape[0]} test images from {args.data_dir} "
          f"(decoded in {time.time() - t0:.0f} s)", flush=True)

    model = ResNet(args.depth, 10, args.width)
    if init_meta is not None:
        model.load_state_dict(init_model.state_dict())
        print(f"init: {args.init} ({init_meta.get('epochs')} epochs, test accuracy {init_meta.get('test_acc', 0):.4f})",
              flush=True)
    model = model.to(memory_format=torch.channels_last)
    decay = [q for q in model.parameters() if q.dim() > 1]
    no_decay = [q for q in model.parameters() if q.dim() <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, momentum=0.9, nesterov=True,
    )
    steps_per_epoch = x_train.shape[0] // args.batch_size  # drop the last partial batch
    total = steps_per_epoch * args.epochs
    warm = max(1, int(args.warmup * total))

    def lr_at(step: int) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        return 0.5 * args.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    gen = torch.Generator().manual_seed(args.seed)
    step = 0
    start = time.time()
    acc = 0.0
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(x_train.shape[0], generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            xb = augment(x_train[idx], gen).contiguous(memory_format=torch.channels_last)
            yb = y_train[idx]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) * yb.shape[0]
            correct += int((logits.argmax(1) == yb).sum())
            seen += yb.shape[0]
        acc = evaluate(model, x_test.contiguous(memory_format=torch.channels_last), y_test)
        elapsed = time.time() - start
        eta = elapsed / (epoch + 1) * (args.epochs - epoch - 1)
        print(f"epoch {epoch + 1}/{args.epochs}  loss {loss_sum / seen:.4f}  train acc {correct / seen:.4f}  "
              f"test acc {acc:.4f}  lr {lr_at(step - 1):.4f}  elapsed {elapsed / 60:.1f} min  ETA {eta / 60:.1f} min",
              flush=True)
    meta = {
        "arch": f"resnet{args.depth}", "depth": args.depth, "width": args.width, "num_classes": 10,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "train_images": int(x_train.shape[0]), "test_images": int(x_test.shape[0]), "test_acc": acc,
        "train_minutes": round((time.time() - start) / 60, 1), "threads": torch.get_num_threads(),
        "command": "python examples/cifar/train_dense.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if init_meta is not None:  # the whole history: this run's epochs on top of the file it started from
        meta["init"] = {k: init_meta[k] for k in ("epochs", "test_acc", "train_minutes", "command", "init") if k in init_meta}
        meta["total_epochs"] = int(init_meta.get("total_epochs", init_meta.get("epochs", 0))) + args.epochs
        meta["total_train_minutes"] = round(float(init_meta.get("total_train_minutes", init_meta.get("train_minutes", 0)))
                                            + meta["train_minutes"], 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"state_dict": state, "meta": meta}, buf)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, out)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB): test accuracy {acc:.4f} on {x_test.shape[0]} images, "
          f"{meta['train_minutes']} min", flush=True)
    return meta


if __name__ == "__main__":
    main()
