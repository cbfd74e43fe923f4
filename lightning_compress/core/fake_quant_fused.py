"""The eager fast path of fake quantization: one ``torch.autograd.Function`` per quantizer that computes
the on-grid value with a short chain of in-place vectorized ops and saves only what the backward needs
(a bool mask, or nothing), instead of ``torch.fake_quantize_per_{tensor,channel}_affine`` (a scalar
loop on CPU) behind autograd-recorded ``minimum`` / ``maximum`` clips and ``q.detach() + (w - w.detach())``.

Bit-identical, values and gradients, to the ops it replaces for finite inputs (``tests/test_qat_exact.py``
compares both against a frozen copy of the old formulas, ties included):

* ``torch.fake_quantize_*`` computes per element ``q = zp + nearbyint(x * (1.0f / scale))`` in float32,
  output ``(clamp(q, qmin, qmax) - zp) * scale``, gradient ``grad * (qmin <= q <= qmax)``; the chain
  below does the same float32 operations in the same order (``torch.round`` is round half to even,
  as ``nearbyint``), and adds ``zp`` before the clamp so that a ``-0.0`` code comes out ``+0.0`` as the
  kernel's integer arithmetic gives.
* the sub-8-bit clip ``maximum(minimum(x, hi), lo)``: same values as ``clamp(x, lo, hi)``; its gradient
  is ``+0`` where ``x`` was clipped and half the incoming gradient where ``x`` equals a bound exactly
  (the tie rule of ``minimum`` / ``maximum``); both are reproduced.
* ``ste(w, q)``: ``q + (w - w)`` is ``q + 0.0`` (a ``-0.0`` becomes ``+0.0``), gradient ``grad`` unchanged.

Non-finite inputs are the exception, on purpose: the old kernel casts ``NaN`` / ``inf`` codes to an
integer (undefined behaviour; on x86 a NaN or +inf comes out as ``qmin * scale``, a silent finite
value); here a NaN stays NaN and ``+-inf`` clamps to ``qmax`` / ``qmin``.

:func:`fast_path` is False while tracing, exporting or compiling: the graph then records the
``torch.fake_quantize_*`` ops (ONNX QDQ, ``torch.export``; inductor fuses them itself).
:data:`ENABLED` switches the fast path off process-wide (a fallback, and the tests' reference).
:func:`capture` hands the backward state of each Function that runs (a mask, or nothing) to a weight's
training-path cache (:mod:`lightning_compress.core.fake_quant_cache`), whose backward replays
:func:`rows_backward` on it.  Pure PyTorch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: False: every quantizer takes the reference ops (``torch.fake_quantize_*``, autograd-recorded clips)
ENABLED = True


def fast_path() -> bool:
    """True when the fused eager path may run: :data:`ENABLED`, and not tracing / exporting / compiling."""
    return ENABLED and not (
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
    )


_LOCAL = threading.local()  # .records: the list :func:`capture` fills, None outside it

#: one Function's backward state: (kind, shape of its input, saved): kind ``"rows"`` (saved: the
#: tuple :func:`rows_backward` takes) or ``"identity"`` (the gradient passes unchanged; saved ``()``)
Record = tuple[str, torch.Size, tuple]


@contextmanager
def capture() -> Iterator[list[Record]]:
    """Collect a :data:`Record` of every fused Function that runs inside (this thread only)."""
    prev = getattr(_LOCAL, "records", None)
    _LOCAL.records = records = []
    try:
        yield records
    finally:
        _LOCAL.records = prev


def _record(kind: str, shape: torch.Size, saved: tuple) -> None:
    records = getattr(_LOCAL, "records", None)
    if records is not None:
        records.append((kind, shape, saved))


def rows_backward(grad: torch.Tensor, saved: tuple) -> torch.Tensor:
    """The gradient of :class:`_FakeQuantRows` from its saved state ``(mask,)`` or ``(mask, keep, tie)``:
    fake_quantize's ``grad * mask`` (mask None: all True, and ``grad * 1.0`` is ``grad`` bit for bit),
    then the clip's (``minimum`` / ``maximum``): half the gradient on a bound, ``+0`` where clipped."""
    # the bool mask read as uint8 (the same 0 / 1): on CPU ``float * uint8`` is vectorized, ``float * bool``
    # is not (~3x slower); the product, -0.0 and NaN included, is the same
    g = grad if saved[0] is None else grad * saved[0].view(torch.uint8)
    if len(saved) == 3:
        _, keep, tie = saved
        g = torch.where(tie, g / 2, g)  # minimum / maximum: half the gradient on a tie
        g = torch.where(keep, g, 0.0)  # ... and +0 where the value was clipped (masked_fill_)
    return g


#: rows of at least this many values read their in-range check from the rows' known min / max
#: (``bounds``) instead of two reductions over the codes; below it the reductions are cheaper
BOUNDS_MIN_NUMEL = 1 << 17


def _grid(
    rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int, mask: bool,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``fake_quantize_per_channel_affine(rows, scale, zp, 0, qmin, qmax)`` of float32 ``rows [R, n]``
    (``R == 1``: the per-tensor op) and, with ``mask``, its gradient mask ``qmin <= code <= qmax``.

    ``bounds``: the exact min and max of each row of ``rows`` (``[R]``, or 0-dim for ``R == 1``), when
    the caller has them.  CPU shortcuts with the same bits (host reads are free there): the in-range
    check reads the codes of ``bounds`` (the code ``round(x * inv) + zp`` is monotone in ``x``, so the
    codes' min / max are the codes of the rows' min / max) instead of reducing the codes; an all-zero
    ``zp`` skips the ``+ zp`` pass (and ends with ``code * scale + 0.0``, see :func:`_dequant`)."""
    s = scale.reshape(-1, 1)
    z = zp.reshape(-1, 1).float()
    inv = 1.0 / s  # the kernels' float inv_scale = 1.0f / scale
    cpu = rows.device.type == "cpu"
    zero = cpu and not bool(zp.any())
    t = rows * inv
    t.round_()  # nearbyint
    if not zero:
        t.add_(z)  # + zero point in float32
    if mask and cpu and _in_range(t, inv, z, zero, qmin, qmax, bounds):
        return _dequant(t, z, s, zero), None  # every code in range: the clamp is a no-op, the mask all True
    if mask:
        c = t.clamp(qmin, qmax)
        m = _equal(c, t, into_b=True)  # t is not read again
    else:
        c, m = t.clamp_(qmin, qmax), None
    return _dequant(c, z, s, zero), m


def _in_range(t: torch.Tensor, inv: torch.Tensor, z: torch.Tensor, zero: bool, qmin: int, qmax: int,
              bounds: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
    """Every code of ``t`` in ``[qmin, qmax]`` (CPU: read on the host)."""
    if bounds is None or t.numel() < BOUNDS_MIN_NUMEL:
        return bool(t.amin() >= qmin) and bool(t.amax() <= qmax)
    ends = torch.stack([bounds[0].reshape(-1, 1), bounds[1].reshape(-1, 1)]).mul_(inv).round_()  # [2, R, 1]
    if not zero:
        ends.add_(z)
    return bool(ends[0].amin() >= qmin) and bool(ends[1].amax() <= qmax)


def _dequant(c: torch.Tensor, z: torch.Tensor, s: torch.Tensor, zero: bool) -> torch.Tensor:
    """``(c - z) * s`` in place.  ``zero`` (``z`` all zero, the ``+ z`` before the clamp skipped, so codes
    may be ``-0.0``): ``c * s + 0.0``, the bits of ``((c + 0) - 0) * s``: the ``+ 0.0`` turns a ``-0.0``
    into ``+0.0`` and leaves every other product alone (``|c| >= 1`` and ``s > 0``: a product is never a
    zero by underflow).  (``addcmul`` would do it in one pass but is ~4x slower on CPU.)"""
    if zero:
        return c.mul_(s).add_(0.0)
    return c.sub_(z).mul_(s)


def _equal(a: torch.Tensor, b: torch.Tensor, into_b: bool = False) -> torch.Tensor:
    """``a == b`` (bool).  On CPU by way of a float32 0 / 1 result (written into ``b`` when ``into_b``:
    the caller no longer needs it), then a cast to bool: the same mask (NaN compares unequal either way)
    in ~0.06 ms instead of ~0.15 ms per 262k values (comparisons that write bool are not vectorized there)."""
    if a.device.type != "cpu" or a.dtype != torch.float32 or b.dtype != torch.float32 or a.shape != b.shape:
        return a == b
    return torch.eq(a, b, out=b if into_b else torch.empty_like(a)).to(torch.bool)


class _FakeQuantRows(torch.autograd.Function):
    """Values of :func:`_grid` after the optional clip to ``[lo_v, hi_v]`` (per row, sub-8-bit widths);
    backward: ``grad * mask``, then the clip's gradient (``+0`` outside, half on a bound).  On CPU, where
    reading a reduction costs no device sync, two shortcuts with the same bits: rows strictly inside
    their clip bounds skip the clip and its masks, and codes all in range skip the clamp, the mask and
    the backward multiply (``grad * 1.0 == grad``)."""

    @staticmethod
    def forward(ctx, rows, scale, zp, qmin, qmax, lo_v, hi_v, bounds):  # type: ignore[override]
        if lo_v is None or rows.device.type != "cpu":
            inside = lo_v is None  # read on the host only on CPU (no device sync elsewhere)
        else:
            lo, hi = (rows.amin(1), rows.amax(1)) if bounds is None else bounds
            inside = bool((lo.reshape(-1, 1) > lo_v).all()) and bool((hi.reshape(-1, 1) < hi_v).all())
        if inside:  # nothing clipped, no value on a bound: the clip is the identity, values and gradient
            out, m = _grid(rows, scale, zp, qmin, qmax, True, bounds)
            ctx.save_for_backward(m)  # None: every code in range, the gradient passes unchanged
            _record("rows", rows.shape, (m,))
            return out
        c = torch.clamp(rows, lo_v, hi_v)  # the values of maximum(minimum(rows, hi_v), lo_v) (lo_v < hi_v)
        keep = _equal(c, rows)
        tie = (rows == lo_v).logical_or_(rows == hi_v)
        out, m = _grid(c, scale, zp, qmin, qmax, True)
        ctx.save_for_backward(m, keep, tie)
        _record("rows", rows.shape, (m, keep, tie))
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return rows_backward(grad, ctx.saved_tensors), None, None, None, None, None, None, None


def fake_quant_grid(
    rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int,
    lo_v: torch.Tensor | None = None, hi_v: torch.Tensor | None = None,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Fused ``fake_quantize`` of float32 ``rows [R, n]`` with one (``scale`` float32, ``zp`` int32) per
    row and codes in ``[qmin, qmax]``, after clipping to ``[lo_v, hi_v]`` (``[R, 1]``) when given; the
    mask is computed and saved only when a gradient is needed.  ``bounds``: the exact per-row min / max
    of ``rows`` when the caller computed them (``[R]``; 0-dim for ``R == 1``), read by the CPU shortcuts
    instead of reducing again (see :func:`_grid`)."""
    if torch.is_grad_enabled() and rows.requires_grad:
        return _FakeQuantRows.apply(rows, scale, zp, qmin, qmax, lo_v, hi_v, bounds)
    if lo_v is not None:
        rows = torch.clamp(rows, lo_v, hi_v)
    return _grid(rows, scale, zp, qmin, qmax, False)[0]


class _StraightThrough(torch.autograd.Function):
    """Value ``q + 0.0`` (what ``q.detach() + (w - w.detach())`` gives for finite ``w``), gradient of ``w``."""

    @staticmethod
    def forward(ctx, w, q, plus_zero):  # type: ignore[override]
        _record("identity", w.shape, ())
        return q.add(0.0) if plus_zero else q.clone() if q is w else q

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad, None, None


def straight_through(w: torch.Tensor, q: torch.Tensor, plus_zero: bool = True) -> torch.Tensor:
    """Fused ``ste(w, q)``: ``q`` (detached) as value, the identity gradient to ``w``.  ``plus_zero=False``
    skips the ``+ 0.0`` pass for callers whose ``q`` holds no ``-0.0``."""
    q = q.detach()
    if torch.is_grad_enabled() and w.requires_grad:
        return _StraightThrough.apply(w, q, plus_zero)
    return q.add(0.0) if plus_zero else q
