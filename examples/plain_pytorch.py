"""Compression from a plain PyTorch loop: no Lightning, no Trainer.

Trains a small MLP on a synthetic classification task while ``Pruner`` prunes its hidden layers
progressively to 4x1 blocks with the ``snip_momentum`` criterion (score ``S <- 0.9 S + |W * dL/dW|``
once per optimizer step) and ``WeightQuantizer`` fake-quantizes the same weights to 8 bits per output
channel (straight-through estimator).  Then :func:`lightning_compress.clean` bakes masks and
quantizers into plain weights.  The last line printed is ``... sparsity=0.xxx``: the fraction of
the pruned layers' weights that the final masks zero (the cleaned weights hold these zeros, plus the
few that 8-bit rounding adds).

It runs with the ``lightning`` package absent: only ``lightning_compress.core`` and
``lightning_compress.export`` are used.

    python examples/plain_pytorch.py [--steps 120] [--sparsity 0.75]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from lightning_compress.core.pruner import Pruner
from lightning_compress.core.weight_quantizer import WeightQuantizer
from lightning_compress.export import clean


def make_data(n: int, dim: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, classes, generator=g)
    return x, (x @ w).argmax(dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps")
    parser.add_argument("--sparsity", type=float, default=0.75, help="final fraction of pruned weights zeroed")
    args = parser.parse_args()

    torch.manual_seed(0)
    x, y = make_data(2048, 32, 4, seed=0)
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 4))
    hidden = [r"^0$", r"^2$"]  # the two hidden Linear layers; the classifier ("4") stays dense
    pruner = Pruner(
        model, sparsity=args.sparsity, method="snip_momentum", pattern="4x1", schedule="exp",
        start_step=0, end_step=int(args.steps * 0.6), frequency=10, modules=hidden,
    )
    quantizer = WeightQuantizer(model, bits=8, granularity="channel", modules=hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()

    for step in range(args.steps):
        idx = torch.randint(0, x.shape[0], (64,))
        loss = loss_fn(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        pruner.update_scores()  # once per optimizer step, from the gradients of this step
        optimizer.step()
        pruner.step(step + 1)  # step + 1 optimizer steps are done: run a prune event if one is due
        quantizer.step(step + 1)
        if (step + 1) % 20 == 0:
            with torch.no_grad():
                acc = (model(x).argmax(1) == y).float().mean().item()
            print(f"step {step + 1:4d}  loss {loss.item():.3f}  acc {acc:.3f}  sparsity {pruner.sparsity():.3f}")

    with torch.no_grad():
        masked = model(x)
    final_sparsity = pruner.sparsity()  # fraction of the pruned layers' weights the masks zero
    slim = clean(model)
    with torch.no_grad():
        out = slim(x)
    acc = (out.argmax(1) == y).float().mean().item()
    pruned = [slim[0].weight, slim[2].weight]
    zeros = sum(int((w == 0).sum()) for w in pruned) / sum(w.numel() for w in pruned)
    print(f"clean: max |slim - masked| = {(out - masked).abs().max().item():.2e}, accuracy {acc:.3f}, "
          f"zeros in the cleaned weights {zeros:.3f} (8-bit rounding adds a few)")
    print(f"pruned 4x1 snip_momentum + 8-bit weights: sparsity={final_sparsity:.3f}")


if __name__ == "__main__":
    main()
