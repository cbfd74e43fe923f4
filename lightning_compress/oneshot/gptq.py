"""GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers"), pure PyTorch, onto the library's own weight grid.

On the ``[out, in]`` weight ``W`` with ``H = 2 X X^T / n`` + ``damp * mean(diag H)`` (default 0.01):
``U`` = upper Cholesky factor of ``H^-1``.  With ``act_order`` the columns are visited by decreasing
``H_jj``.  Column ``j`` is rounded to the grid, its error ``(w_j - q_j) / U_jj`` spread over the
remaining columns of the block, the block's errors over all later columns after it (lazy batches
of ``blocksize`` columns).

The grid is exactly :func:`~lightning_compress.core.fake_quant.fake_quant_weight`'s for a
:class:`~lightning_compress.core.quant_grid.QuantSpec` with fixed per-row ``ranges`` (rows of
:func:`~lightning_compress.core.quant_grid.as_rows`: one per output channel, or one per group of
``group_size`` consecutive input columns of an output channel): every column is rounded with
:func:`~lightning_compress.core.quant_grid.fake_quant_rows`, so a ``WeightFakeQuant(spec)`` with
``ranges`` maps the result onto itself.  Ranges are min / max of the group: taken from the
partially updated weights when the group's first column is reached (without ``act_order``, as in
the reference code), or from the original weights for all groups up front with ``act_order``
("static groups": contiguous groups stay storable).  ``bits=2`` is the library's ternary grid
(``{-a, 0, a}`` per row, ``a`` from TWN on the original weights, rounding to the nearest level).

``keep``: a keep-mask (True = kept, e.g. from SparseGPT): masked weights stay exactly 0 and
receive no error updates, so an earlier pruning's sparsity survives.
"""

from __future__ import annotations

import torch

from lightning_compress.core.fake_quant import ternary_rows
from lightning_compress.core.fake_quant_fused import fast_path
from lightning_compress.core.quant_grid import QuantSpec, affine_params, as_rows, fake_quant_rows, qrange
from lightning_compress.oneshot.hessian_inverse import prepare_hessian, upper_cholesky_of_inverse


def _group_cols(spec: QuantSpec, cols: int) -> int:
    return spec.group_size if spec.granularity == "group" else cols  # type: ignore[return-value]


def _ranges_of(block: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    b = block.float()
    return b.amin(1), b.amax(1)


class _ColumnGrid:
    """One group's grid, prepared once for all its columns: the values of
    ``fake_quant_rows(col[:, None], scale, zp, bits, symmetric)[:, 0]`` for a column ``col [rows]``,
    computed with the same float32 operations in the same order as its eager fast path
    (:func:`~lightning_compress.core.fake_quant_fused.fake_quant_grid`: the sub-8-bit clip to
    ``[lo_v, hi_v]``, ``x * (1 / scale)``, round half to even, ``+ zp``, clamp to the 8-bit codes,
    ``- zp``, ``* scale``), so the bits are the same; while tracing / compiling, or with the fast path
    switched off, it calls ``fake_quant_rows`` itself."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> None:
        self.scale, self.zp = affine_params(lo, hi, bits, symmetric)
        self.bits, self.symmetric = bits, symmetric
        self.fast = fast_path()
        qmin, qmax = qrange(bits, symmetric)
        self.q8 = qrange(8, symmetric)
        self.lo_v = self.hi_v = None
        if bits < 8:
            self.lo_v = ((qmin - 0.49 - self.zp).float() * self.scale).unsqueeze(1)
            self.hi_v = ((qmax + 0.49 - self.zp).float() * self.scale).unsqueeze(1)
        self.s = self.scale.reshape(-1, 1)
        self.inv = 1.0 / self.s
        self.z = self.zp.reshape(-1, 1).float()

    def __call__(self, col: torch.Tensor) -> torch.Tensor:
        x = col.unsqueeze(1)
        if not self.fast:
            return fake_quant_rows(x, self.scale, self.zp, self.bits, self.symmetric).squeeze(1)
        t = torch.clamp(x, self.lo_v, self.hi_v).mul_(self.inv) if self.lo_v is not None else x * self.inv
        return t.round_().add_(self.z).clamp_(*self.q8).sub_(self.z).mul_(self.s).squeeze(1)


@torch.no_grad()
def gptq_quantize(
    w: torch.Tensor,
    h: torch.Tensor | None,
    spec: QuantSpec,
    *,
    act_order: bool = False,
    keep: torch.Tensor | None = None,
    blocksize: int = 128,
    damp: float = 0.01,
    factor: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """``(quantized weight [out, in] float32 on the grid, ranges (lo, hi) per as_rows row or None for
    ternary)``.  ``factor``: ``(U, dead, perm)`` already computed from ``h``, ``damp`` and ``act_order``
    (:meth:`~lightning_compress.oneshot.stats.LinearStats.inverse_factor`; ``h`` then unused)."""
    W = w.detach().float().clone()
    rows, cols = W.shape
    gcols = _group_cols(spec, cols)
    if cols % gcols:
        raise ValueError(f"oneshot: GPTQ group_size={gcols} does not divide the input dimension {cols}")
    ngroups = cols // gcols
    keepf = None if keep is None else keep.to(W.device).float()
    if keepf is not None:
        W *= keepf
    if factor is None:
        assert h is not None
        H, dead = prepare_hessian(h, W, damp)
        perm = torch.argsort(torch.diag(H), descending=True) if act_order else None
        if perm is not None:
            H = H[perm][:, perm]
        U = upper_cholesky_of_inverse(H)
        del H
    else:
        U, dead, perm = factor
        W[:, dead.to(W.device)] = 0
    ternary = spec.bits == 2
    static = act_order or ternary
    grids: list[_ColumnGrid | None] = [None] * ngroups
    # per (row, group) ranges, filled in up front (static) or when a group starts
    lo = torch.zeros(rows, ngroups, device=W.device)
    hi = torch.zeros(rows, ngroups, device=W.device)
    alpha = torch.zeros(rows, ngroups, device=W.device)
    if static:
        grp = W.reshape(rows, ngroups, gcols)
        if ternary:
            alpha = ternary_rows(grp.reshape(-1, gcols))[1].reshape(rows, ngroups)
        else:
            lo, hi = grp.amin(2), grp.amax(2)
            grids = [_ColumnGrid(lo[:, g], hi[:, g], spec.bits, spec.symmetric) for g in range(ngroups)]
    if perm is None:
        perm = torch.arange(cols, device=W.device)
    else:
        W = W[:, perm]
    kp = None if keepf is None else keepf[:, perm]
    Q = torch.zeros_like(W)
    perm_list = perm.tolist()
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            g = perm_list[i1 + i] // gcols
            if not static and grids[g] is None:
                # the group's columns in the current (partially updated) weights; without act_order
                # perm is the identity, so they are W1[:, i:...] then the not yet updated W[:, i2:...]
                start = i1 + i
                end = g * gcols + gcols
                cur = torch.cat([W1[:, i : i + (end - start)], W[:, i2:end]], dim=1) if end > i2 else W1[:, i : i + (end - start)]
                lo[:, g], hi[:, g] = _ranges_of(cur, spec)
                grids[g] = _ColumnGrid(lo[:, g], hi[:, g], spec.bits, spec.symmetric)
            wcol = W1[:, i]
            if ternary:
                a = alpha[:, g]
                q = torch.sign(wcol) * a * (wcol.abs() > a / 2)
            else:
                q = grids[g](wcol)  # type: ignore[misc]
            if kp is not None:
                q = q * kp[:, i1 + i]
            Q1[:, i] = q
            err = (wcol - q) / U1[i, i]
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)
            if kp is not None:
                W1[:, i:] *= kp[:, i1 + i : i2]
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        if i2 < cols:
            W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1.0)
            if kp is not None:
                W[:, i2:] *= kp[:, i2:]
    inv = torch.argsort(perm)
    Q = Q[:, inv]
    if ternary:
        return Q, None
    ranges = (lo.reshape(-1), hi.reshape(-1))
    return Q, ranges


@torch.no_grad()
def rtn_quantize(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Round-to-nearest baseline on the same grid: min / max ranges per as_rows row of ``w`` ``[out, in]``."""
    from lightning_compress.core.fake_quant import fake_quant_weight

    W = w.detach().float()
    if spec.bits == 2:
        return fake_quant_weight(W, spec), None
    r = as_rows(W, spec.granularity, spec.group_size)
    ranges = (r.amin(1), r.amax(1))
    return fake_quant_weight(W, spec, ranges), ranges


__all__ = ["gptq_quantize", "rtn_quantize"]
