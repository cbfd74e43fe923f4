"""The training-path cache of a weight's fake-quantized value: paid once per optimizer step, not once
per forward.

With gradient accumulation (``accumulate_grad_batches=k``) a weight does not change across the ``k``
micro-batches of one optimizer step, yet each forward would quantize it again.  A
:class:`~lightning_compress.core.fake_quant.WeightFakeQuant` therefore keeps, from the first forward
with gradients of an optimizer step, the fake-quantized value and the backward state of its fused
Function (:func:`lightning_compress.core.fake_quant_fused.capture`: the straight-through mask, or
nothing), and answers the next forwards with the same key by :func:`replay`: an autograd Function whose
forward returns an alias of the cached value and whose backward is the uncached chain's, operation for
operation (``grad * mask``, the ``+0`` on clipped values, the half gradient on exact clip-bound ties,
and the casts / reshapes / transposes between the parameter and the quantizer): values and gradients
are bit-identical to recomputing.

Which quantizers cache: the integer grids on the fused eager path (affine and ``scheme="deepspeed"``,
every width and granularity; ternary / binary; calibrated ``ranges`` or any observer).  Not cached
(recomputed at every forward as before): the float schemes (FP8 / MX / NVFP4, whose Function records
no state here), the reference ops (:data:`~lightning_compress.core.fake_quant_fused.ENABLED` off),
tracing / exporting / compiling, a masked copy of the weight (pruning before the quantizer: a new
tensor at every call), a ZeRO-3 parameter (``ds_id``: gathered and released around each use) and
any tensor subclass (FSDP2's DTensor).

Key (all must match): the parameter object, its ``_version`` (in-place writes, ``load_state_dict``),
storage and dtype, whether it requires grad, the optimizer steps taken in this process (a torch
optimizer's ``step``, DeepSpeed's included: it steps a torch optimizer), and the quantizer's settings
(bits, spec, observer, layout, ranges object).  A write through ``param.data`` between two forwards of
one optimizer step changes none of these: call :func:`drop_training_caches` after such a write.

Memory: per quantized weight, one fake-quantized copy (the weight's dtype and shape) and one bool mask
per value (none when every code is in range; sub-8-bit widths with clipped values: three), held from
the first forward of an optimizer step until that step: every ``optimizer.step`` drops all training
caches (:func:`drop_training_caches`), so no training cache outlives its step.  :data:`ENABLED`
switches the cache off process-wide.  Pure PyTorch.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from lightning_compress.core.fake_quant_fused import Record, rows_backward

#: False: every forward with gradients quantizes the weight again (the tests' reference)
ENABLED = True

#: forwards answered from a training cache in this process (a counter for tests and benchmarks)
HITS = [0]

_HOLDERS: "weakref.WeakSet[Any]" = weakref.WeakSet()  # quantizers holding a training cache


def hold(quantizer: Any) -> None:
    """Note that ``quantizer`` holds a training cache (``quantizer._train``), to drop at the next step."""
    _HOLDERS.add(quantizer)


def drop_training_caches() -> None:
    """Forget every training cache (run after each optimizer step; call it after writing a quantized
    parameter through ``.data`` between the forwards of one optimizer step)."""
    for q in list(_HOLDERS):
        q._train = None
    _HOLDERS.clear()


def cacheable(records: list[Record], out: torch.Tensor) -> bool:
    """Whether the forward that produced ``out`` under :func:`capture` can be replayed exactly: one fused
    Function with a gradient, or none and no gradient (a frozen weight)."""
    return len(records) == 1 if out.requires_grad else not records


class _Replay(torch.autograd.Function):
    """Forward: an alias of the cached value (same strides as the first forward's result); backward: the
    uncached chain ``weight -> [t] -> rows view -> .float() -> Function -> reshape -> .to(dtype) -> [t]``
    in reverse, each step as autograd runs it (``.to`` backs off to the source dtype, a view to its
    base shape, the Function by :func:`rows_backward` or unchanged)."""

    @staticmethod
    def forward(ctx, weight, value, record, transposed):  # type: ignore[override]
        ctx.record, ctx.transposed, ctx.dtype = record, transposed, weight.dtype
        ctx.oriented = weight.t().shape if transposed else weight.shape
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        kind, shape, saved = ctx.record
        g = grad.t() if ctx.transposed else grad
        g = g.to(torch.float32).reshape(shape)  # out.reshape(w.shape).to(w.dtype), backwards
        if kind == "rows":
            g = rows_backward(g, saved)
        g = g.reshape(ctx.oriented).to(ctx.dtype)  # as_rows(w).float(), backwards
        return (g.t() if ctx.transposed else g), None, None, None


def replay(weight: torch.Tensor, value: torch.Tensor, record: Record | None, transposed: bool) -> torch.Tensor:
    """The cached ``value`` for ``weight``, with the uncached gradient (``record`` None: no gradient)."""
    HITS[0] += 1
    if record is None:
        return value
    return _Replay.apply(weight, value, record, transposed)
