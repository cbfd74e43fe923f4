"""LayerReductionKD under DeepSpeedCompressionStrategy, ZeRO 2 and 3, 2 CPU ranks.

What each rank saves: whether the teacher is whole (no ``ds_id``, full shapes, non-empty data, not in the
engine), whether the student is partitioned (ZeRO-3), the per-step losses and KD terms, the teacher's
weights before/after training, and the reduced depth.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress.callbacks.layer_reduction_kd import LayerReductionKD
from tests.distributed.harness import Context, scenario


class Block(nn.Module):
    def __init__(self, h: int) -> None:
        super().__init__()
        self.fc = nn.Linear(h, h)
        self.norm = nn.LayerNorm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + torch.tanh(self.fc(x)))


class Net(nn.Module):
    def __init__(self, n: int = 4, h: int = 16) -> None:
        super().__init__()
        self.inp = nn.Linear(8, h)
        self.blocks = nn.ModuleList(Block(h) for _ in range(n))
        self.head = nn.Linear(h, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


class Lit(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.model = net

    def training_step(self, batch, batch_idx):
        x, y = batch
        if x.dtype == torch.long:  # token ids (BERT)
            return self.model(input_ids=x, labels=y).loss
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


class Probe(pl.Callback):
    def __init__(self, kd: LayerReductionKD) -> None:
        self.kd = kd
        self.result: dict = {"losses": [], "terms": []}

    def on_fit_start(self, trainer, pl_module):
        teacher = self.kd.teacher
        assert teacher is not None
        engine_ids = {id(p) for p in trainer.model.parameters()}
        tparams = dict(teacher.named_parameters())
        self.result.update(
            teacher_ds_id=any(hasattr(p, "ds_id") for p in tparams.values()),
            teacher_in_engine=any(id(p) in engine_ids for p in tparams.values()),
            teacher_shapes={k: tuple(p.shape) for k, p in tparams.items()},
            teacher_numel_ok=all(p.data.numel() == math.prod(p.shape) and p.data.numel() > 0 for p in tparams.values()),
            teacher_requires_grad=any(p.requires_grad for p in tparams.values()),
            teacher_training=teacher.training,
            teacher_device=str(next(iter(tparams.values())).device),
            student_ds_id=all(hasattr(p, "ds_id") for p in pl_module.parameters()),
            engine_is_deepspeed=type(trainer.model).__name__,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.result["losses"].append(float(loss))
        self.result["terms"].append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("kd/")})

    def on_train_end(self, trainer, pl_module):
        teacher = self.kd.teacher
        self.result["teacher_after"] = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
        self.result["teacher_grads"] = [p.grad is not None for p in teacher.parameters()]


def loader(tokens: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    if tokens:
        x = torch.randint(0, 40, (32, 7), generator=g)
        y = torch.randint(0, 3, (32,), generator=g)
    else:
        x = torch.randn(32, 8, generator=g)
        y = (x[:, :4].argmax(1)).long()
    return DataLoader(TensorDataset(x, y), batch_size=4)


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=3, attn_implementation="eager",
    )
    return BertForSequenceClassification(cfg)


def run(ctx: Context, stage: int, bert: bool = False, prune: bool = False) -> None:
    pl.seed_everything(0)
    net = tiny_bert() if bert else Net(n=4)
    teacher_before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    full_shapes = {k: tuple(p.shape) for k, p in net.named_parameters()}
    weights = {"logits": 1.0, "hidden": 1.0, "labels": 1.0}
    if bert:
        weights["attention"] = 1.0
    kd = LayerReductionKD(keep_layers=[1, 3], weights=weights)
    probe = Probe(kd)
    callbacks: list = [kd]
    if prune:  # composes with a masking callback: it prunes the reduced student, never the teacher
        from lightning_compress.callbacks.sparse_pruning import SparsePruning

        pruner = SparsePruning(sparsity=0.5, method="l1", start_step=0, end_step=1)
        callbacks.append(pruner)
    trainer = ctx.trainer(stage=stage, callbacks=[*callbacks, probe], max_steps=3)
    lit = Lit(net)
    trainer.fit(lit, loader(tokens=bert))
    r = probe.result
    r["teacher_before"] = teacher_before
    r["full_shapes"] = full_shapes
    r["keep"] = kd.keep
    r["stack_name"] = kd.stack_name
    r["student_depth"] = len(net.bert.encoder.layer) if bert else len(net.blocks)
    r["config_layers"] = net.config.num_hidden_layers if bert else None
    r["global_step"] = trainer.global_step
    if prune:
        from lightning_compress.core import masking

        r["pruned"] = {k: float(m.float().mean()) for k, m in pruner.masks().items()}
        r["teacher_wrapped"] = any(masking.is_wrapped(m) for m in kd.teacher.modules())
    ctx.save(r)


@scenario("kd_layer_reduction_zero2")
def kd_zero2(ctx: Context) -> None:
    run(ctx, 2)


@scenario("kd_layer_reduction_zero3")
def kd_zero3(ctx: Context) -> None:
    run(ctx, 3, prune=True)


@scenario("kd_bert_zero3")
def kd_bert_zero3(ctx: Context) -> None:
    run(ctx, 3, bert=True)
