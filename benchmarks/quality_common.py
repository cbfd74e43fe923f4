"""What both sides of ``benchmarks/quality.py`` share: the prepared batches, the start model, the
optimizer and its schedule, and the evaluation.

This file runs in two interpreters: the project's (torch 2.14, transformers 5) for our rows and the
Intel Neural Compressor venv's (torch 2.13, transformers 4.57) for INC's rows, so it imports only
torch and transformers and nothing of lightning_compress.  Identical inputs for both sides:

* :func:`prepare` (project side, once per task and seed) tokenizes the GLUE TSVs and writes one
  ``.pt`` file of plain tensors: the ``steps`` training batches in their order (a seeded Python
  ``random.Random`` permutation of the training rows, a fresh permutation per pass over them),
  each padded to its own longest row (dynamic padding, capped at ``max_length``), and the dev set in
  batches of 64; plus the start weights: the pretrained MiniLM with its classification head and
  pooler initialised from ``torch.Generator`` seeded with ``seed`` (normal(0, 0.02), zero bias).
* both sides build ``BertForSequenceClassification`` from the packaged config, load those weights,
  train on the batches in order with :func:`make_optimizer` (AdamW, weight decay 0.01 except biases
  and LayerNorm, linear warm-up over the first 6% of the steps, then linear decay to 0: the same
  rule as ``examples.bert.model.GlueBert``), ``torch.manual_seed(seed)`` right before the first step
  (dropout), and score with :func:`evaluate`.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

TASKS = {"sst2": "SST-2", "mrpc": "MRPC"}
#: header columns holding (text_a, text_b or None, label)
COLUMNS = {"sst2": ("sentence", None, "label"), "mrpc": ("#1 String", "#2 String", "Quality")}
EVAL_BATCH = 64
WARMUP_RATIO = 0.06
WEIGHT_DECAY = 0.01
#: the weights counted as "sparsity reached": every 2-D weight of the encoder's layers
ENCODER_WEIGHT = r"(^|\.)encoder\.layer\.\d+\..*\.weight$"


def read_tsv(path: Path, task: str) -> list[tuple[str, str | None, int]]:
    """Rows ``(text_a, text_b or None, label)`` of a GLUE TSV; the header (BOM allowed) names the columns."""
    col_a, col_b, col_l = COLUMNS[task]
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    header = [h.strip() for h in lines[0].split("\t")]
    missing = [c for c in (col_a, col_b, col_l) if c is not None and c not in header]
    if missing:
        raise ValueError(f"{path}: header {header} lacks column(s) {missing} for task {task!r}")
    ia, il = header.index(col_a), header.index(col_l)
    ib = header.index(col_b) if col_b else None
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) < len(header):
            raise ValueError(f"{path}:{n}: {len(f)} fields, header has {len(header)}")
        rows.append((f[ia], f[ib] if ib is not None else None, int(f[il])))
    return rows


def _encode(tokenizer: Any, rows: list[tuple[str, str | None, int]], max_length: int) -> dict[str, torch.Tensor]:
    a = [r[0] for r in rows]
    b = [r[1] for r in rows] if rows[0][1] is not None else None
    enc = tokenizer(a, b, truncation=True, max_length=max_length, padding="longest", return_tensors="pt")
    out = {k: enc[k].clone() for k in ("input_ids", "attention_mask", "token_type_ids")}
    out["labels"] = torch.tensor([r[2] for r in rows], dtype=torch.long)
    return out


def order(n_rows: int, n_needed: int, seed: int) -> list[int]:
    """Training row indices in the order used: passes over the rows, pass ``p`` shuffled by ``Random(seed + p)``."""
    out: list[int] = []
    p = 0
    while len(out) < n_needed:
        idx = list(range(n_rows))
        random.Random(seed + p).shuffle(idx)
        out.extend(idx)
        p += 1
    return out[:n_needed]


def init_head(model: torch.nn.Module, seed: int) -> None:
    """Classifier and pooler weights from a generator seeded with ``seed`` (normal(0, 0.02), zero bias):
    the same start for every row whichever transformers version builds the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in (model.bert.pooler.dense, model.classifier):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.02)
            lin.bias.zero_()


def build_model(model_dir: str, attn: str = "eager") -> torch.nn.Module:
    """``BertForSequenceClassification`` (2 labels) of the packaged config, random weights (the caller loads the start)."""
    from transformers import AutoConfig, BertForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir, num_labels=2, local_files_only=True)
    config._attn_implementation = attn
    return BertForSequenceClassification(config)


def prepare(task: str, data_dir: Path, model_dir: str, out: Path, steps: int, batch: int, max_length: int,
            seed: int, dev_rows: int | None = None) -> Path:
    """Write ``out`` (see the module docstring) unless it exists with the same settings; return it.
    ``dev_rows``: only the first rows of the dev split (smoke tests); None = all."""
    settings = {"task": task, "steps": steps, "batch": batch, "max_length": max_length, "seed": seed,
                "model_dir": model_dir, "data_dir": str(data_dir), "dev_rows": dev_rows}
    if out.exists():
        have = torch.load(out, weights_only=True)
        if json.loads(have["settings"]) == settings:
            return out
    from transformers import AutoTokenizer, BertForSequenceClassification

    folder = data_dir / TASKS[task]
    train = read_tsv(folder / "train.tsv", task)
    dev = read_tsv(folder / "dev.tsv", task)[:dev_rows]
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    idx = order(len(train), steps * batch, seed)
    train_batches = [_encode(tok, [train[i] for i in idx[s * batch:(s + 1) * batch]], max_length) for s in range(steps)]
    dev_batches = [_encode(tok, dev[i:i + EVAL_BATCH], max_length) for i in range(0, len(dev), EVAL_BATCH)]
    model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2, local_files_only=True)
    init_head(model, seed)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"settings": json.dumps(settings), "train": train_batches, "dev": dev_batches, "state": state,
                "train_rows": len(train), "dev_rows": len(dev)}, out)
    return out


def load_prepared(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def make_optimizer(model: torch.nn.Module, lr: float, total: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (decay 0.01, none on biases / LayerNorm) and the warm-up + linear-decay LambdaLR, stepped per optimizer step."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if (p.dim() < 2 or "LayerNorm" in name) else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    warmup = int(math.ceil(WARMUP_RATIO * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Accuracy and F1 of class 1 (MRPC's metric) of ``model`` in eval mode over the dev batches."""
    was = model.training
    model.eval()
    tp = fp = fn = correct = n = 0
    for b in batches:
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
        logits = out.logits if hasattr(out, "logits") else out["logits"]
        pred, y = logits.argmax(-1), b["labels"]
        correct += int((pred == y).sum())
        n += y.numel()
        tp += int(((pred == 1) & (y == 1)).sum())
        fp += int(((pred == 1) & (y == 0)).sum())
        fn += int(((pred == 0) & (y == 1)).sum())
    model.train(was)
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    return {"acc": correct / max(1, n), "f1": f1}


def encoder_sparsity(state: dict[str, torch.Tensor], dense_numel: int) -> float:
    """1 - (nonzero encoder weights of ``state``) / (encoder weights of the dense model): counts zeros
    left in place and rows / heads removed alike."""
    import re

    nz = sum(int(torch.count_nonzero(v)) for k, v in state.items() if re.search(ENCODER_WEIGHT, k) and v.dim() == 2)
    return 1.0 - nz / dense_numel


def encoder_numel(state: dict[str, torch.Tensor]) -> int:
    import re

    return sum(v.numel() for k, v in state.items() if re.search(ENCODER_WEIGHT, k) and v.dim() == 2)


class Timer:
    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0
