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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_compress.oneshot.linear_view import out_in_shape


@dataclass
class LinearStats:
    """Input statistics of one linear layer (see the module docstring for the definitions)."""

    in_features: int
    n: int = 0
    xtx: torch.Tensor | None = None
    sq: torch.Tensor | None = None
    absmax: torch.Tensor | None = None

    def hessian(self) -> torch.Tensor:
        """``H = 2 x^T x / n`` (float32 ``[in, in]``)."""
        if self.xtx is None or self.n == 0:
            raise RuntimeError("oneshot: no calibration tokens reached this layer; check `calib_data`.")
        return self.xtx * (2.0 / self.n)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.xtx, self.sq, self.absmax) if t is not None)


@dataclass
class BlockStats:
    """Statistics of every linear layer of a block plus, when asked, which normalization layer's
    output each one consumes directly (``{norm name: [linear names]}``; SmoothQuant's fold targets)."""

    linears: dict[str, LinearStats]
    norm_consumers: dict[str, list[str]] = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.linears.values())


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm) or name.endswith("RMSNorm") or name.endswith("LayerNorm")


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
    (the very same tensor object)."""
    stats = {n: LinearStats(out_in_shape(m)[1]) for n, m in targets.items()}
    norm_out: dict[int, tuple[str, torch.Tensor]] = {}  # the tensor is kept alive so ids stay unique
    consumers: dict[str, list[str]] = {}
    handles = []

    def pre_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            s = stats[name]
            if norms and id(x) in norm_out and norm_out[id(x)][1] is x:
                lst = consumers.setdefault(norm_out[id(x)][0], [])
                if name not in lst:
                    lst.append(name)
            x2 = x.detach().reshape(-1, x.shape[-1]).float()
            s.n += x2.shape[0]
            sq = x2.pow(2).sum(0)
            am = x2.abs().amax(0)
            s.sq = sq if s.sq is None else s.sq + sq
            s.absmax = am if s.absmax is None else torch.maximum(s.absmax, am)
            if hessian:
                xtx = x2.t() @ x2
                s.xtx = xtx if s.xtx is None else s.xtx.add_(xtx)

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
    finally:
        for h in handles:
            h.remove()
    return BlockStats(stats, consumers)


__all__ = ["BlockStats", "LinearStats", "collect_stats"]
