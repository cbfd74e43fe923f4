"""Calibration statistics of a block's linear layers, from a pass over the block's inputs.

The statistics are gathered with forward pre-hooks on the linear layers (and forward hooks on the
normalization layers) registered for the duration of one calibration pass that
:mod:`lightning_compress.oneshot` itself runs, and removed in a ``finally``: no hook outlives the pass,
so Lightning's removal of hooks in validate/test/predict (DESIGN section 3) cannot interfere, and the
user's model is never left with one.  The input seen is the linear layer's first positional argument
before any input transform (activation quantizer) of that layer.

Per linear layer, over all ``n`` tokens of the pass (every position of every calibration sequence,
padding included as the model receives it), with ``x`` the ``[n, in]`` inputs in float32:

* ``xtx = x^T x`` (``[in, in]``); the GPTQ / SparseGPT Hessian is ``H = 2 xtx / n``.
* ``sq = sum_t x_t^2`` per input column (``[in]``): Wanda's ``||X_j||_2^2``.
* ``absmax = max_t |x_t|`` per input column (``[in]``): SmoothQuant's activation range.

Linear layers that receive the very same input tensor in a forward (Llama's q/k/v after
``input_layernorm``, gate/up after ``post_attention_layernorm``) share one :class:`LinearStats` object:
its statistics are accumulated once, and its damped inverse-Hessian factor is computed once
(:meth:`LinearStats.inverse_factor`).  Sharing is decided at the first forward; should a later
forward give such a layer an input of its own (a block whose forward depends on the data), the pass
is run again from the start with that layer on statistics of its own, so the result is always
exactly what separate statistics would hold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_compress.oneshot.hessian_inverse import factor_of
from lightning_compress.oneshot.linear_view import out_in_shape


@dataclass
class LinearStats:
    """Input statistics of one linear layer (see the module docstring for the definitions)."""

    in_features: int
    n: int = 0
    xtx: torch.Tensor | None = None
    sq: torch.Tensor | None = None
    absmax: torch.Tensor | None = None
    #: ``(damp, act_order) -> (U, dead, perm)`` of :meth:`inverse_factor` (shared by the layers sharing these stats)
    factors: dict = field(default_factory=dict, repr=False)

    def _check(self) -> None:
        if self.xtx is None or self.n == 0:
            raise RuntimeError("oneshot: no calibration tokens reached this layer; check `calib_data`.")

    def hessian(self) -> torch.Tensor:
        """``H = 2 x^T x / n`` (float32 ``[in, in]``, a new tensor)."""
        self._check()
        return self.xtx * (2.0 / self.n)

    def inverse_factor(self, damp: float, act_order: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(U, dead, perm)`` for the OBS methods: ``H`` = :meth:`hessian` damped as
        :func:`~lightning_compress.oneshot.hessian_inverse.damped_hessian` (``dead``: inputs never seen,
        whose weight columns the caller zeroes), with ``act_order`` its rows and columns permuted by
        decreasing diagonal (``perm``; else None), and ``U`` the upper Cholesky factor of its inverse
        (float32).  Computed once per ``(damp, act_order)`` and kept with these statistics."""
        key = (float(damp), bool(act_order))
        if key not in self.factors:
            self._check()
            self.factors[key] = factor_of(self.xtx, damp, 2.0 / self.n, act_order)
        return self.factors[key]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.xtx, self.sq, self.absmax) if t is not None)


@dataclass
class BlockStats:
    """Statistics of every linear layer of a block plus, when asked, which normalization layer's
    output each one consumes directly (``{norm name: [linear names]}``; SmoothQuant's fold targets)."""

    linears: dict[str, LinearStats]
    norm_consumers: dict[str, list[str]] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Bytes of the statistics, each shared :class:`LinearStats` once."""
        return sum(s.nbytes() for s in {id(s): s for s in self.linears.values()}.values())


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm) or name.endswith("RMSNorm") or name.endswith("LayerNorm")


class _SharingBroken(Exception):
    """A layer that shared another's input at the first forward got an input of its own later."""

    def __init__(self, name: str) -> None:
        self.name = name


@torch.no_grad()
def collect_stats(
    block: nn.Module,
    targets: dict[str, nn.Module],
    run: Callable[[], Iterable[object]],
    *,
    hessian: bool = False,
    norms: bool = False,
) -> BlockStats:
    """Run ``run()`` (a pass of the block over its calibration inputs) with hooks that accumulate
    :class:`LinearStats` for every module of ``targets`` (``{name: linear}``); ``hessian`` also
    accumulates ``x^T x``; ``norms`` also records which norm layer's output feeds which linear
    (the very same tensor object).  Layers fed the same input tensor share statistics (module
    docstring); ``run`` is called again when that sharing breaks."""
    own: set[str] = set()  # layers that must keep statistics of their own (sharing broke once)
    while True:
        try:
            return _collect(block, targets, run, hessian, norms, own)
        except _SharingBroken as e:
            own.add(e.name)


def _collect(block: nn.Module, targets: dict[str, nn.Module], run: Callable[[], Iterable[object]], hessian: bool,
             norms: bool, own: set[str]) -> BlockStats:
    stats = {n: LinearStats(out_in_shape(m)[1]) for n, m in targets.items()}
    norm_out: dict[int, tuple[str, torch.Tensor]] = {}  # the tensor is kept alive so ids stay unique
    seen: dict[int, tuple[str, torch.Tensor]] = {}  # this forward: id(input) -> (layer accumulating it, input)
    shares: dict[str, str | None] = {}  # layer -> the layer whose statistics it shares (None: its own)
    first: dict[str, int] = {}  # layer -> the forward of its first call
    called: set[str] = set()  # layers called in this forward
    forward = [0]
    consumers: dict[str, list[str]] = {}
    handles = []

    def pre_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if norms and id(x) in norm_out and norm_out[id(x)][1] is x:
                lst = consumers.setdefault(norm_out[id(x)][0], [])
                if name not in lst:
                    lst.append(name)
            called.add(name)
            hit = seen.get(id(x))
            src = hit[0] if hit is not None and hit[1] is x and name not in own else None
            if name not in shares:  # its first call: share when a layer first called in this same forward
                shares[name] = src if src is not None and first[src] == forward[0] else None  # took this very tensor
                first[name] = forward[0]
            elif shares[name] != src and shares[name] is not None:
                raise _SharingBroken(name)
            if shares[name] is not None:
                return
            seen[id(x)] = (name, x)
            s = stats[name]
            x2 = x.detach().reshape(-1, x.shape[-1]).float()
            s.n += x2.shape[0]
            sq = x2.pow(2).sum(0)
            am = x2.abs().amax(0)
            s.sq = sq if s.sq is None else s.sq + sq
            s.absmax = am if s.absmax is None else torch.maximum(s.absmax, am)
            if hessian:  # accumulated in place: no [in, in] temporary per batch
                s.xtx = x2.t() @ x2 if s.xtx is None else s.xtx.addmm_(x2.t(), x2)

        return hook

    def norm_hook(name: str):
        def hook(module: nn.Module, args: tuple, out: object) -> None:
            if isinstance(out, torch.Tensor):
                norm_out[id(out)] = (name, out)

        return hook

    try:
        for n, m in targets.items():
            handles.append(m.register_forward_pre_hook(pre_hook(n)))
        if norms:
            for n, m in block.named_modules():
                if n and _is_norm(m):
                    handles.append(m.register_forward_hook(norm_hook(n)))
        for _ in run():
            norm_out.clear()  # ids are only meaningful within one forward
            seen.clear()
            for name, src in shares.items():  # a sharer skipped a forward its source saw, or the reverse
                if src is not None and (name in called) != (src in called):
                    raise _SharingBroken(name)
            called.clear()
            forward[0] += 1
    finally:
        for h in handles:
            h.remove()
        norm_out.clear()
        seen.clear()
    for name, src in shares.items():
        if src is not None:
            stats[name] = stats[src]
    return BlockStats(stats, consumers)


__all__ = ["BlockStats", "LinearStats", "collect_stats"]
