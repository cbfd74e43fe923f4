"""Layer-by-layer (sequential) calibration: the scheme of the GPTQ / SparseGPT papers.

1. **Capture** (:func:`capture_block_inputs`): the first block of the layer stack is replaced, for one
   pass per calibration batch, by a :class:`Catcher` that records the positional and keyword arguments
   the model passes it (hidden states, attention mask, position ids / embeddings, ...) and raises
   :class:`StopForward`, so nothing past the first block runs.  No fx tracing, no hooks on the model.
2. **Per block** (:func:`calibrate_blocks`): for each method in order, one pass of the block over the
   recorded inputs gathers the statistics it needs (:mod:`~lightning_compress.oneshot.stats`), then
   the method compresses the block's linear layers; then the compressed block's outputs become the
   next block's inputs (positional argument 0 replaced, keyword arguments reused).
3. Only one block's inputs and outputs and one block's statistics are held at a time (and the
   weight quantizers' kept evaluation results are dropped after each block's step, and the pages the
   C allocator keeps are handed back: :func:`~lightning_compress.core.trim_allocator.trim_allocator`); under ZeRO-3
   each block's parameters are gathered for its step only (``deepspeed.zero.GatheredParameters``,
   rank 0's edits broadcast on exit).  While gathered, the block's forward hooks (DeepSpeed's
   fetch / release hooks) are set aside and put back afterwards: a release inside the step would drop
   the edited full weights and re-partition the old ones (verified: the edits were lost).

Memory is *counted*, not sampled: per block, ``held_bytes`` = bytes of the recorded inputs + outputs of
all calibration batches + the block's statistics (Hessians ``[in, in]`` float32, vectors) + the block's
parameters.  :func:`whole_model_bytes` counts what a one-pass calibration of the whole model would
hold instead (every parameter, the activations autograd saves in one whole-model forward over the same
batches, and every block's statistics at once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from lightning_compress.core import masking
from lightning_compress.core.dist import gathered, is_zero3_param
from lightning_compress.core.trim_allocator import trim_allocator
from lightning_compress.core.distill_losses import first_tensor
from lightning_compress.oneshot.linear_view import linears
from lightning_compress.oneshot.methods import BlockContext, OneShotMethod, SmoothQuant
from lightning_compress.oneshot.stats import BlockStats, collect_stats

Record = tuple[tuple[Any, ...], dict[str, Any]]


class StopForward(Exception):
    """Raised by :class:`Catcher` once the first block's inputs are recorded."""


class Catcher(nn.Module):
    """Stands in for the first block during capture; attribute reads fall through to the block
    (Hugging Face models read e.g. ``layer.attention_type`` while looping)."""

    def __init__(self, block: nn.Module, records: list[Record]) -> None:
        super().__init__()
        self.block = block
        self.records = records

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.records.append((args, _without_cache(kwargs)))
        raise StopForward

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["block"], name)


def call_model(model: nn.Module, batch: Any) -> Any:
    """How a calibration batch is fed: a dict as keyword arguments, a tuple / list as positional
    arguments, anything else (a tensor) as the single argument."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor inside ``obj`` (nested tuples / lists / dicts); each storage once."""
    seen: set[int] = set()

    def walk(o: Any) -> int:
        if isinstance(o, torch.Tensor):
            key = o.untyped_storage().data_ptr() if o.device.type != "meta" else id(o)
            if key in seen:
                return 0
            seen.add(key)
            return o.untyped_storage().nbytes()
        if isinstance(o, dict):
            return sum(walk(v) for v in o.values())
        if isinstance(o, (tuple, list)):
            return sum(walk(v) for v in o)
        return 0

    return walk(obj)


@contextmanager
def _no_cache(model: nn.Module) -> Iterator[None]:
    """``config.use_cache = False`` on every (sub)module with a Hugging Face config during capture: a
    key/value cache passed to the blocks would grow with every calibration pass and change the outputs."""
    saved = []
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and getattr(cfg, "use_cache", None) and all(cfg is not c for c, _ in saved):
            saved.append((cfg, cfg.use_cache))
            cfg.use_cache = False
    try:
        yield
    finally:
        for cfg, old in saved:
            cfg.use_cache = old


#: keyword arguments of a block that carry a key/value cache (dropped from the records)
CACHE_KWARGS = ("past_key_value", "past_key_values", "layer_past", "cache_position")


def _without_cache(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {k: (None if k in CACHE_KWARGS[:3] else v) for k, v in kwargs.items()}
    if "use_cache" in out:
        out["use_cache"] = False
    return out


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, stack: nn.Module, calib_data: Iterable[Any], forward: Callable[[nn.Module, Any], Any] = call_model
) -> list[Record]:
    """The ``(args, kwargs)`` every calibration batch gives ``stack[0]`` (see the module docstring)."""
    records: list[Record] = []
    first = stack[0]
    stack[0] = Catcher(first, records)
    try:
        with _no_cache(model):
            for batch in calib_data:
                n = len(records)
                try:
                    forward(model, batch)
                except StopForward:
                    pass
                if len(records) != n + 1:
                    raise RuntimeError(
                        "oneshot: a calibration batch did not reach the first layer of the stack exactly once "
                        f"({len(records) - n} times); the stack found is not the model's decoder stack; pass `layers`."
                    )
    finally:
        stack[0] = first
    if not records:
        raise ValueError("oneshot: `calib_data` gave no batches; pass an iterable of at least one batch.")
    return records


def _first_output(out: Any) -> torch.Tensor:
    """A block's hidden state (:func:`~lightning_compress.core.distill_losses.first_tensor`)."""
    try:
        return first_tensor(out)
    except ValueError:
        raise TypeError(f"oneshot: a layer returned {type(out).__name__}; expected a tensor or a tuple starting with one.") from None


def run_block(block: nn.Module, records: list[Record], hidden: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Yield ``block``'s output for every calibration batch (input ``hidden[i]``, other arguments recorded)."""
    for (args, kwargs), h in zip(records, hidden):
        yield _first_output(block(h, *args[1:], **kwargs))


@dataclass
class LayerRecord:
    """One block's calibration: seconds, counted bytes held (see the module docstring), and the
    relative squared error ``||Y_c - Y||^2 / ||Y||^2`` of its output (compressed vs. dense block,
    same inputs); ``None`` when not measured."""

    index: int
    name: str
    seconds: float
    held_bytes: int
    stats_bytes: int
    output_error: float | None


@dataclass
class OneShotReport:
    """What :func:`lightning_compress.oneshot.oneshot` did: per-block records, totals, and the bytes the
    sequential scheme held at most vs. a whole-model calibration (when measured)."""

    methods: list[str]
    layers: list[LayerRecord] = field(default_factory=list)
    capture_seconds: float = 0.0
    total_seconds: float = 0.0
    calib_batches: int = 0
    calib_tokens: int = 0
    whole_model_bytes: int | None = None
    smoothed: dict[str, list[str]] = field(default_factory=dict)

    @property
    def peak_held_bytes(self) -> int:
        return max((r.held_bytes for r in self.layers), default=0)

    def table(self) -> str:
        lines = ["| layer | time (s) | held (MiB) | Hessians (MiB) | output rel. error |", "|---|---|---|---|---|"]
        for r in self.layers:
            err = "-" if r.output_error is None else f"{r.output_error:.3g}"
            lines.append(f"| {r.name} | {r.seconds:.2f} | {r.held_bytes / 2**20:.1f} | {r.stats_bytes / 2**20:.1f} | {err} |")
        return "\n".join(lines)


def _error(ys: list[torch.Tensor], yd: list[torch.Tensor]) -> float:
    num = sum(float((a.float() - b.float()).pow(2).sum()) for a, b in zip(ys, yd))
    den = sum(float(b.float().pow(2).sum()) for b in yd)
    return num / max(den, 1e-30)


def calibrate_blocks(
    stack: nn.Module,
    prefix: str,
    records: list[Record],
    methods: list[OneShotMethod],
    owner: str,
    *,
    measure_error: bool = True,
    report: OneShotReport,
    on_layer: Callable[[LayerRecord], None] | None = None,
) -> None:
    """Steps 2-3 of the module docstring over every block of ``stack`` (in place)."""
    hidden = [a[0] for a, _ in records]
    for i, block in enumerate(stack):
        t0 = time.perf_counter()
        name = f"{prefix}.{i}" if prefix else str(i)
        params = list(block.parameters())
        zero3 = any(is_zero3_param(p) for p in params)
        with gathered(params, modifier_rank=0), _forward_hooks_set_aside(block, zero3):
            targets = linears(block)
            dense = list(run_block(block, records, hidden)) if measure_error else None
            stats_peak = 0
            for method in methods:
                stats: BlockStats | None = None
                if method.needs:
                    stats = collect_stats(block, targets, lambda: run_block(block, records, hidden),
                                          hessian="hessian" in method.needs, norms="norms" in method.needs)
                    stats_peak = max(stats_peak, stats.nbytes())
                ctx = BlockContext(block, name, targets, stats, owner)
                if isinstance(method, SmoothQuant):
                    before = list(run_block(block, records, hidden))
                    method.apply(ctx)
                    _check_fold(block, records, hidden, before, name)
                    del before
                    method.quantize(ctx)
                else:
                    method.apply(ctx)
                del stats
            out = list(run_block(block, records, hidden))
            err = _error(out, dense) if dense is not None else None
            held = tensor_bytes(hidden) + tensor_bytes(out) + stats_peak + sum(p.numel() * p.element_size() for p in params)
            _drop_eval_caches(targets)
        del dense
        trim_allocator()
        hidden = [o.detach() for o in out]
        rec = LayerRecord(i, name, time.perf_counter() - t0, held, stats_peak, err)
        report.layers.append(rec)
        if on_layer is not None:
            on_layer(rec)


def _drop_eval_caches(targets: dict[str, nn.Module]) -> None:
    """Forget the no-grad results the block's new weight quantizers kept while the block's outputs were
    computed (``WeightFakeQuant`` keeps one float copy of its weight for repeated evaluation forwards):
    kept for every block, they would add a second copy of every quantized weight to calibration's memory."""
    for m in targets.values():
        for t in masking.param_transforms(m, "weight"):
            drop = getattr(t.fn, "drop_cache", None)
            if callable(drop):
                drop()


_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
               "_forward_hooks_always_called")


@contextmanager
def _forward_hooks_set_aside(block: nn.Module, active: bool) -> Iterator[None]:
    """Every module of ``block`` runs without its forward hooks inside (when ``active``); restored after."""
    if not active:
        yield
        return
    saved = []
    for m in block.modules():
        saved.append((m, {k: getattr(m, k) for k in _HOOK_DICTS if hasattr(m, k)}))
        for k in saved[-1][1]:
            setattr(m, k, type(getattr(m, k))())
    try:
        yield
    finally:
        for m, dicts in saved:
            for k, v in dicts.items():
                setattr(m, k, v)


#: relative squared output error above which a smoothing fold counts as having changed the block
#: (float32 folds measure ~1e-12 on the test models)
FOLD_TOLERANCE = 1e-6


def _check_fold(block: nn.Module, records: list[Record], hidden: list[torch.Tensor],
                before: list[torch.Tensor], name: str) -> None:
    """Refuse when folding the smoothing factors changed what the block computes."""
    after = list(run_block(block, records, hidden))
    err = _error(after, before)
    if err > FOLD_TOLERANCE:
        raise RuntimeError(
            f"SmoothQuant: folding the smoothing factors changed the output of {name} (relative squared error "
            f"{err:.3g}); a normalization layer there does not compute normalize(x) * weight. Exclude SmoothQuant "
            f"for this model family."
        )


__all__ = ["Catcher", "LayerRecord", "OneShotReport", "StopForward", "calibrate_blocks", "call_model",
           "capture_block_inputs", "run_block", "tensor_bytes"]
