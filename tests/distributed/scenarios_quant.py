"""WeightQuant + ActQuant under DeepSpeedCompressionStrategy, ZeRO 2 and 3, 2 CPU ranks."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from lightning_compress.callbacks.act_quant import ActQuant
from lightning_compress.callbacks.weight_quant import WeightQuant
from lightning_compress.core import fake_quant_cache, masking
from lightning_compress.core.dist import gathered
from lightning_compress.core.quantize import pack_state
from tests.distributed.harness import Context, scenario
from tests.models import TinyMLP, mlp_loader

PROBE_X = torch.randn(6, 16, generator=torch.Generator().manual_seed(321))


class QuantProbe(pl.Callback):
    """Records the bits each forward used (by optimizer step) and, at the end of training with the
    parameters gathered: effective (quantized) weights, their packed storage, static ranges and the
    model's output on a fixed input (eval mode)."""

    def __init__(self, wq: WeightQuant, aq: ActQuant) -> None:
        self.wq, self.aq = wq, aq
        self.result: dict = {"bits_by_step": {}}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # runs after WeightQuant's hook (callbacks run in list order)
        self.result["bits_by_step"][trainer.global_step] = self.wq.current_bits

    def on_train_end(self, trainer, pl_module):
        params = list(pl_module.parameters())
        with gathered(params), torch.no_grad():
            self.result["effective"] = {
                n: masking.effective_param(m, "weight").detach().float().clone() for n, m in self.wq.targets.items()
            }
            self.result["packed"] = {n: {k: v.clone() for k, v in pack_state(m).items()} for n, m in self.wq.targets.items()}
            self.result["weights"] = {k: v.detach().float().clone() for k, v in pl_module.state_dict().items()}
            was = pl_module.training
            pl_module.eval()
            dtype = next(pl_module.parameters()).dtype  # bf16 under DeepSpeed bf16
            self.result["output"] = pl_module(PROBE_X.to(pl_module.device, dtype)).float()
            pl_module.train(was)
        self.result["ranges"] = self.aq.ranges()


def run(ctx: Context, stage: int, **trainer_kwargs) -> None:
    pl.seed_everything(0)
    wq = WeightQuant(bits=4, start_bits=8, period=2, granularity="group", group_size=8)
    aq = ActQuant(bits=8, range="static", symmetric=False)
    probe = QuantProbe(wq, aq)
    trainer = ctx.trainer(stage=stage, callbacks=[wq, aq, probe], max_steps=6, accumulate_grad_batches=2, **trainer_kwargs)
    hits = fake_quant_cache.HITS[0]
    trainer.fit(TinyMLP(), mlp_loader(n=128, batch_size=8))
    ctx.save({**probe.result, "global_step": trainer.global_step, "wq_state": wq.state_dict(), "aq_state": aq.state_dict(),
              "cache_hits": fake_quant_cache.HITS[0] - hits})


@scenario("quant_weight_act_zero2")
def quant_zero2(ctx: Context) -> None:
    run(ctx, 2)


@scenario("quant_weight_act_zero2_uncached")
def quant_zero2_uncached(ctx: Context) -> None:
    """``quant_weight_act_zero2`` with the training-path weight cache off (the bit-for-bit reference)."""
    fake_quant_cache.ENABLED = False
    try:
        run(ctx, 2)
    finally:
        fake_quant_cache.ENABLED = True


@scenario("quant_weight_act_zero3")
def quant_zero3(ctx: Context) -> None:
    run(ctx, 3)


@scenario("quant_weight_act_zero2_bf16")
def quant_zero2_bf16(ctx: Context) -> None:
    run(ctx, 2, precision="bf16-mixed")
