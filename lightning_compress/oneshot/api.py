"""``oneshot(model, methods, calib_data)``: post-training compression of a transformer, layer by layer."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from lightning_compress.core.distill_stack import find_layer_stack
from lightning_compress.oneshot.linear_view import linears, out_in_shape
from lightning_compress.oneshot.methods import OneShotMethod
from lightning_compress.oneshot.sequential import (
    OneShotReport, calibrate_blocks, call_model, capture_block_inputs, tensor_bytes,
)

_COUNTER = itertools.count()
_ORDER = {"prune": 0, "smooth": 1, "weight_quant": 1}


def check_methods(methods: Any, where: str = "oneshot") -> list[OneShotMethod]:
    """The methods as a list, checked: at least one, each a :class:`OneShotMethod`, at most one of each
    family, pruning first, not SmoothQuant (W8A8) together with a weight-only quantizer."""
    if isinstance(methods, OneShotMethod):
        methods = [methods]
    if not isinstance(methods, Sequence) or isinstance(methods, str) or not methods:
        raise ValueError(f"{where}: `methods`={methods!r} must be a non-empty list of method objects, e.g. "
                         f"[SparseGPT(0.5, '2:4'), GPTQ(4)].")
    out = list(methods)
    fams: list[str] = []
    for m in out:
        if not isinstance(m, OneShotMethod):
            raise ValueError(f"{where}: `methods` holds {m!r}, not a one-shot method object (SparseGPT, Wanda, Magnitude, "
                             f"GPTQ, RTN, SmoothQuant from lightning_compress.oneshot).")
        if m.family in fams:
            raise ValueError(f"{where}: `methods`={out!r} has two {m.family!r} methods; they would fight over the same "
                             f"weights. Keep one.")
        fams.append(m.family)
    if "smooth" in fams and "weight_quant" in fams:
        raise ValueError(f"{where}: `methods`={out!r} combines SmoothQuant (which quantizes weights to 8 bits) with a "
                         f"weight-only quantizer; use one of them.")
    if [_ORDER[f] for f in fams] != sorted(_ORDER[f] for f in fams):
        raise ValueError(f"{where}: `methods`={out!r}: pruning must come first (it rewrites weights a quantizer "
                         f"already put on its grid); reorder, e.g. [SparseGPT(...), GPTQ(...)].")
    return out


@torch.no_grad()
def oneshot(
    model: nn.Module,
    methods: OneShotMethod | Sequence[OneShotMethod],
    calib_data: Iterable[Any],
    *,
    layers: str | None = None,
    forward: Callable[[nn.Module, Any], Any] = call_model,
    measure_error: bool = True,
    owner: str | None = None,
    verbose: bool = False,
) -> OneShotReport:
    """Compress ``model``'s layer stack in place with ``methods``, in order, calibrating layer by layer.

    Args:
        model: a model with a stack of repeated blocks (Hugging Face Llama / Qwen2 / Mistral / GPT-2 / OPT
            decoders, or any ``nn.ModuleList`` of blocks); only the linear layers (``nn.Linear``,
            ``Conv1D``) inside the stack are compressed (embeddings and the LM head stay dense).
        methods: method objects (:class:`~lightning_compress.oneshot.SparseGPT`, ``Wanda``, ``Magnitude``,
            ``GPTQ``, ``RTN``, ``SmoothQuant``); at most one pruner first, then one quantizer.
        calib_data: an iterable of batches as ``forward(model, batch)`` takes them (default: a dict as
            keyword arguments, a tuple as positional ones, a tensor as the only argument).
        layers: qualified name of the stack (None: found as in :func:`~lightning_compress.core.distill_stack.find_layer_stack`).
        measure_error: also record each block's relative output error (one extra pass per block).
        owner: masking owner id of the masks / quantizers (default ``"oneshot#<n>"``); remove them with
            ``lightning_compress.core.masking.remove_owner`` or bake them with ``clean``.
        verbose: print one line per block.

    Returns:
        :class:`~lightning_compress.oneshot.sequential.OneShotReport` (per-block seconds, counted bytes held,
        output error).

    Raises:
        ValueError: bad ``methods`` / ``calib_data``; a pattern or group size that does not fit a layer;
            a layer already pruned / quantized by another owner.
    """
    methods = check_methods(methods)
    owner = owner or f"oneshot#{next(_COUNTER)}"
    prefix, stack = find_layer_stack(model, layers, owner="oneshot")
    for i, block in enumerate(stack):
        if not linears(block):
            raise ValueError(f"oneshot: block {prefix}.{i} holds no nn.Linear / Conv1D layer; pass `layers` = the decoder stack.")
    for m in methods:  # shape checks before any weight is touched
        for i, block in enumerate(stack):
            for n, lin in linears(block).items():
                shape = out_in_shape(lin)
                if hasattr(m, "check_shape"):
                    m.check_shape(f"{prefix}.{i}.{n}", shape)
                if hasattr(m, "spec_for"):
                    m.spec_for(f"{prefix}.{i}.{n}", shape)
    report = OneShotReport(methods=[m.describe() for m in methods])
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        records = capture_block_inputs(model, stack, calib_data, forward)
        report.capture_seconds = time.perf_counter() - t0
        report.calib_batches = len(records)
        report.calib_tokens = sum(int(a[0].numel() // a[0].shape[-1]) for a, _ in records)
        on_layer = (lambda r: print(f"oneshot {r.name}: {r.seconds:.2f}s held {r.held_bytes / 2**20:.1f} MiB "
                                    f"err {r.output_error}", flush=True)) if verbose else None
        calibrate_blocks(stack, prefix, records, methods, owner, measure_error=measure_error, report=report,
                         on_layer=on_layer)
    finally:
        model.train(was_training)
    for m in methods:
        report.smoothed.update(getattr(m, "folded", {}))
    report.total_seconds = time.perf_counter() - t0
    return report


def whole_model_bytes(
    model: nn.Module, calib_data: Iterable[Any], *, forward: Callable[[nn.Module, Any], Any] = call_model,
    hessians: bool = True, layers: str | None = None,
) -> int:
    """Counted bytes a one-pass (non-sequential) calibration holds: every parameter, the activations
    autograd saves in one whole-model forward over all ``calib_data`` batches with every graph kept,
    and (``hessians``) one ``[in, in]`` float32 Hessian per linear layer of the stack at once."""
    seen: set[int] = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            saved += t.untyped_storage().nbytes()
        return t

    keep = []
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for batch in calib_data:
            keep.append(forward(model, batch))
    del keep
    params = tensor_bytes(list(model.parameters()))
    h = 0
    if hessians:
        _, stack = find_layer_stack(model, layers, owner="oneshot")
        h = sum(out_in_shape(m)[1] ** 2 * 4 for b in stack for m in linears(b).values())
    return params + saved + h


__all__ = ["check_methods", "oneshot", "whole_model_bytes"]
