"""Published DeepSpeed Compression configs under DeepSpeedCompressionStrategy(config=...) on 2 CPU ranks
(ZeRO 2): the row-pruning template as ``pruning_row.sh`` fills it, and GPT-2's W4/8A8 Qgroup64 config
(Conv1D layers).  Checked in tests/test_deepspeed_published.py."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from lightning_compress import DeepSpeedCompressionStrategy, clean
from lightning_compress.core import masking
from tests import ds_published as P
from tests.distributed.harness import Context, scenario


def _run(ctx: Context, name: str) -> None:
    model, loader, probe = P.model_for(name)
    strategy = DeepSpeedCompressionStrategy(config=P.strategy_config(P.shrink(P.published(name)), stage=2))
    trainer = pl.Trainer(
        accelerator="cpu", devices=ctx.world_size, strategy=strategy, max_steps=4, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, loader)
    net = model.model
    net.eval()
    with torch.no_grad():
        masked = net(probe).logits
        slim = clean(net, inplace=False)
        out = slim(probe).logits
    effective = {
        n: masking.effective_param(m, "weight").detach().clone()
        for n, m in net.named_modules() if masking.transformed_params(m) and "weight" in masking.transformed_params(m)
    }
    ctx.save({
        "callbacks": [type(c).__name__ for c in strategy._compression_callbacks],
        "effective": effective,
        "masked": masked, "slim": out, "slim_params": P.n_params(slim),
        "shapes": {k: tuple(v.shape) for k, v in slim.state_dict().items()},
    })


@scenario("dsconfig_pruning_row")
def pruning_row(ctx: Context) -> None:
    _run(ctx, "bert__filled__pruning_row")


@scenario("dsconfig_gpt2_w4or8")
def gpt2_w4or8(ctx: Context) -> None:
    _run(ctx, "gpt2__ds_config_W4or8A8_Qgroup64_fp32")
