"""OneShotCompression under DeepSpeedCompressionStrategy ZeRO-3, 2 CPU ranks."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from lightning_compress.callbacks.oneshot_compression import OneShotCompression
from lightning_compress.core import masking
from lightning_compress.core.dist import gathered
from lightning_compress.oneshot import GPTQ, SparseGPT
from lightning_compress.oneshot.packed_mask import stored_keep
from tests.distributed.harness import Context, scenario
from tests.oneshot_lightning import TinyLM, token_loader

PROBE = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(11))
METHODS = lambda: [SparseGPT(None, "2:4"), GPTQ(4, group_size=32)]  # noqa: E731


def snapshot(lm: pl.LightningModule) -> dict:
    """Full weights, masks and the compressed model's output on PROBE (parameters gathered)."""
    with gathered(list(lm.parameters())), torch.no_grad():
        return {
            "weights": {k: v.detach().clone().float() for k, v in lm.state_dict().items()},
            "effective": {n: masking.effective_param(m, "weight").detach().clone().float()
                          for n, m in lm.named_modules() if masking.is_wrapped(m)},
            "masks": {n: stored_keep(m).clone() for n, m in lm.named_modules() if stored_keep(m) is not None},
            "output": lm(PROBE).float(),
        }


class Snap(pl.Callback):
    def __init__(self) -> None:
        self.result: dict = {}

    def on_validation_end(self, trainer, pl_module):
        self.result = snapshot(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.result = snapshot(pl_module)


@scenario("oneshot_validate_zero3")
def validate_zero3(ctx: Context) -> None:
    pl.seed_everything(0)
    cb, snap = OneShotCompression(METHODS(), calib_batches=2), Snap()
    trainer = ctx.trainer(stage=3, callbacks=[cb, snap], use_distributed_sampler=False)
    trainer.validate(TinyLM(), token_loader(seed=7))
    ctx.save({**snap.result, "layers": [(r.name, r.held_bytes) for r in cb.report.layers]})


@scenario("oneshot_fit_zero3")
def fit_zero3(ctx: Context) -> None:
    pl.seed_everything(0)
    cb, snap = OneShotCompression(METHODS(), calib_batches=2), Snap()
    trainer = ctx.trainer(stage=3, callbacks=[cb, snap], max_steps=2, use_distributed_sampler=False)
    trainer.fit(TinyLM(), token_loader())
    ctx.save(snap.result)
