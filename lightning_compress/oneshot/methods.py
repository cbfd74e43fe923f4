"""The one-shot method objects :func:`lightning_compress.oneshot.oneshot` takes, applied to one block
(decoder layer) at a time.

Each method checks its arguments at construction (``ValueError`` naming the method, the argument,
the value and the fix), says which calibration statistics it needs (``needs``: ``"hessian"``,
``"sq"``, ``"absmax"``, ``"norms"``; see :mod:`lightning_compress.oneshot.stats`), and in
:meth:`OneShotMethod.apply` compresses the block's linear layers from them.  Results ride on the
library's own machinery (:mod:`lightning_compress.core.masking`):

* pruners (:class:`Magnitude`, :class:`Wanda`, :class:`SparseGPT`) write the new weights (pruned
  entries 0) and register a ``"sparse_mask"`` keep-mask transform as ``SparsePruning`` does, the mask
  stored one bit per weight (:mod:`~lightning_compress.oneshot.packed_mask`; unpacked into a bool
  buffer of the weight's shape once training starts), so fine-tuning afterwards keeps the zeros and
  ``clean`` / ``RedundancyClean`` / the report see them;
* weight quantizers (:class:`RTN`, :class:`GPTQ`) write weights that lie on the grid and register a
  :class:`~lightning_compress.core.fake_quant.WeightFakeQuant` with the fixed ranges (kind
  ``"weight_quant"``, after the mask), so ``clean_for_storage`` packs them in low bits;
* :class:`SmoothQuant` folds smoothing factors into the norms and attaches 8-bit per-channel weight
  quantizers (min/max ranges fixed after smoothing) and dynamic per-token 8-bit input quantizers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_compress.core import masking
from lightning_compress.core.act_quantizer import attach_act_quantizers
from lightning_compress.core.dist import broadcast_
from lightning_compress.core.fake_quant import WeightFakeQuant
from lightning_compress.core.patterns import NMPattern, parse_pattern
from lightning_compress.core.quant_grid import WEIGHT_QUANT_KIND, QuantSpec
from lightning_compress.oneshot.gptq import gptq_quantize, rtn_quantize
from lightning_compress.oneshot.linear_view import (
    TransposedWeightFakeQuant, is_conv1d, out_in_shape, to_module_layout, weight_out_in, write_weight,
)
from lightning_compress.oneshot.magnitude import magnitude_mask
from lightning_compress.oneshot.packed_mask import PackedKeepMask, has_mask_storage, register_packed_mask
from lightning_compress.oneshot.smoothquant import can_fold, fold_smoothing, smoothing_scales
from lightning_compress.oneshot.sparsegpt import sparsegpt_prune
from lightning_compress.oneshot.stats import BlockStats
from lightning_compress.oneshot.wanda import wanda_mask

MASK_KIND = "sparse_mask"
MASK_BUFFER = masking.private_name("mask")
GPTQ_BITS = (2, 3, 4, 5, 6, 7, 8)


@dataclass
class BlockContext:
    """What a method sees of the block being calibrated."""

    block: nn.Module
    prefix: str  # qualified name of the block in the model
    targets: dict[str, nn.Module]  # linear layers, by name relative to the block
    stats: BlockStats | None
    owner: str

    def qualified(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name


class OneShotMethod:
    """Base class.  ``family``: ``"prune"`` / ``"weight_quant"`` / ``"smooth"`` (one of each at most
    per :func:`oneshot` call: two would fight over one weight)."""

    family = ""
    needs: tuple[str, ...] = ()

    def apply(self, ctx: BlockContext) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return repr(self)


def _fail(method: str, arg: str, value: Any, fix: str) -> ValueError:
    return ValueError(f"{method}: `{arg}`={value!r} {fix}")


def _parse_sparsity(method: str, sparsity: float | None, pattern: str) -> tuple[float, tuple[int, int] | None]:
    if not isinstance(pattern, str):
        raise _fail(method, "pattern", pattern, "must be a string: 'unstructured', '2:4', '4:8' or any 'N:M'.")
    if pattern in ("unstructured", "1x1"):
        nm = None
    else:
        try:
            pat = parse_pattern(pattern)
        except ValueError:
            pat = None
        if not isinstance(pat, NMPattern):
            raise _fail(method, "pattern", pattern, "is not supported by one-shot pruning; use 'unstructured' or an 'N:M' "
                        "pattern such as '2:4' (keep 2 of every 4 consecutive input weights).")
        nm = (pat.n, pat.m)
    if nm is not None:
        implied = (nm[1] - nm[0]) / nm[1]
        if sparsity is not None and abs(float(sparsity) - implied) > 1e-9:
            raise _fail(method, "sparsity", sparsity, f"contradicts pattern {pattern!r}, which prunes exactly {implied:g}; "
                        f"pass sparsity=None or {implied:g}.")
        return implied, nm
    if sparsity is None or isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise _fail(method, "sparsity", sparsity, "must be a number in [0, 1) (the fraction of weights zeroed).")
    return float(sparsity), nm


def current_keep(module: nn.Module) -> torch.Tensor | None:
    """The ``[out, in]`` keep-mask already on ``module`` (an earlier pruning), or None."""
    t = masking.find_transform(module, "weight", MASK_KIND)
    if t is None:
        return None
    if isinstance(t.fn, PackedKeepMask):
        m = t.fn.keep(module)
    else:
        m = getattr(module, MASK_BUFFER, None)
        if m is None:
            return None
    return (m.t() if is_conv1d(module) else m).bool()


def attach_mask(module: nn.Module, keep_out_in: torch.Tensor, owner: str, name: str) -> None:
    """Register ``keep`` (``[out, in]``) as the module's ``"sparse_mask"`` (as SparsePruning does), stored
    one bit per weight (:mod:`~lightning_compress.oneshot.packed_mask`)."""
    keep = to_module_layout(module, keep_out_in).bool().to(module.weight.device)
    if masking.find_transform(module, "weight", MASK_KIND) is not None and has_mask_storage(module):
        raise ValueError(f"oneshot: {name}.weight is already pruned (it carries a 'sparse_mask'); prune it once.")
    broadcast_(keep, 0)  # identical on every rank (rank 0's), a no-op without a process group
    register_packed_mask(module, keep, owner, MASK_KIND, name)


def attach_quantizer(module: nn.Module, spec: QuantSpec, ranges: Any, owner: str, name: str) -> None:
    """A fixed-range weight quantizer by ``spec`` (``WeightFakeQuant``; ``Conv1D``: the transposed one)."""
    if ranges is not None:
        ranges = (broadcast_(ranges[0].to(module.weight.device).contiguous(), 0),
                  broadcast_(ranges[1].to(module.weight.device).contiguous(), 0))
    if is_conv1d(module):
        q: Any = TransposedWeightFakeQuant(spec, ranges)
    else:
        q = WeightFakeQuant(spec)
        q.ranges = ranges
    masking.add_param_transform(module, "weight", owner, q, kind=WEIGHT_QUANT_KIND, priority=masking.QUANT_PRIORITY, module_name=name)


# ----------------------------------------------------------------------------------------------- pruners
class _Pruner(OneShotMethod):
    family = "prune"

    def __init__(self, sparsity: float | None = 0.5, pattern: str = "unstructured") -> None:
        self.sparsity, self.nm = _parse_sparsity(type(self).__name__, sparsity, pattern)
        self.pattern = pattern

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sparsity={self.sparsity:g}, pattern={self.pattern!r})"

    def check_shape(self, name: str, shape: tuple[int, int]) -> None:
        if self.nm is not None and shape[1] % self.nm[1]:
            raise ValueError(f"{type(self).__name__}: pattern {self.pattern!r} needs the input dimension of {name!r} "
                             f"({shape[1]}) to be a multiple of {self.nm[1]}; exclude the layer or use 'unstructured'.")

    def prune(self, w: torch.Tensor, ctx: BlockContext, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def apply(self, ctx: BlockContext) -> None:
        for name, module in ctx.targets.items():
            qname = ctx.qualified(name)
            self.check_shape(qname, out_in_shape(module))
            if current_keep(module) is not None:
                raise ValueError(f"{type(self).__name__}: {qname}.weight is already pruned; use one pruning method.")
            w = weight_out_in(module)
            new_w, keep = self.prune(w, ctx, name)
            write_weight(module, new_w * keep)
            attach_mask(module, keep, ctx.owner, qname)


class Magnitude(_Pruner):
    """Magnitude pruning baseline (per layer; N:M per group); needs no calibration data."""

    def prune(self, w: torch.Tensor, ctx: BlockContext, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return w, magnitude_mask(w, self.sparsity, self.nm)


class Wanda(_Pruner):
    """Wanda: ``|W| * ||X||_2`` per input column, compared per output row (or per N:M group)."""

    needs = ("sq",)

    def prune(self, w: torch.Tensor, ctx: BlockContext, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        assert ctx.stats is not None
        return w, wanda_mask(w, ctx.stats.linears[name].sq, self.sparsity, self.nm)


class SparseGPT(_Pruner):
    """SparseGPT (OBS with lazy blocked updates).  ``blocksize``: columns per lazy batch; ``damp``:
    fraction of ``mean(diag H)`` added to the diagonal."""

    needs = ("hessian",)

    def __init__(self, sparsity: float | None = 0.5, pattern: str = "unstructured", blocksize: int = 128, damp: float = 0.01) -> None:
        super().__init__(sparsity, pattern)
        _check_block_damp("SparseGPT", blocksize, damp)
        self.blocksize, self.damp = blocksize, damp

    def prune(self, w: torch.Tensor, ctx: BlockContext, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        assert ctx.stats is not None
        U, dead, _ = ctx.stats.linears[name].inverse_factor(self.damp)  # once for the layers sharing an input
        return sparsegpt_prune(w, None, self.sparsity, self.nm, blocksize=self.blocksize, damp=self.damp, factor=(U, dead))


def _check_block_damp(method: str, blocksize: Any, damp: Any) -> None:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise _fail(method, "blocksize", blocksize, "must be a positive integer (columns per lazy update batch, e.g. 128).")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0.0 < float(damp) <= 1.0:
        raise _fail(method, "damp", damp, "must be in (0, 1] (fraction of the mean Hessian diagonal added, e.g. 0.01).")


# ------------------------------------------------------------------------------------------- quantizers
class RTN(OneShotMethod):
    """Round-to-nearest weight quantization baseline (min/max ranges per channel or group)."""

    family = "weight_quant"

    def __init__(self, bits: int = 4, group_size: int | None = 128, symmetric: bool = True) -> None:
        name = type(self).__name__
        if isinstance(bits, bool) or not isinstance(bits, int) or bits not in GPTQ_BITS:
            raise _fail(name, "bits", bits, f"is not supported: use one of {list(GPTQ_BITS)} (2 = the library's ternary grid; "
                        f"5-7 bits are stored one code per byte by clean_for_storage, packed by compressed-tensors).")
        if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
            raise _fail(name, "group_size", group_size, "must be a positive integer (input columns per scale) or None (one scale per output channel).")
        if not isinstance(symmetric, bool):
            raise _fail(name, "symmetric", symmetric, "must be True or False.")
        self.bits, self.group_size, self.symmetric = bits, group_size, symmetric

    def spec_for(self, name: str, shape: tuple[int, int]) -> QuantSpec:
        gs = self.group_size
        if gs is not None and shape[1] % gs:
            raise ValueError(f"{type(self).__name__}: `group_size`={gs} does not divide the input dimension {shape[1]} of "
                             f"{name!r}; pick a divisor of {shape[1]} (e.g. {_divisor_hint(shape[1], gs)}) or group_size=None.")
        if gs is None or gs == shape[1]:
            return QuantSpec(self.bits, "channel", None, self.symmetric)
        return QuantSpec(self.bits, "group", gs, self.symmetric)

    def quantize(self, w: torch.Tensor, spec: QuantSpec, keep: torch.Tensor | None, ctx: BlockContext, name: str) -> tuple[torch.Tensor, Any]:
        return rtn_quantize(w, spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bits={self.bits}, group_size={self.group_size}, symmetric={self.symmetric})"

    @torch.no_grad()
    def apply(self, ctx: BlockContext) -> None:
        for name, module in ctx.targets.items():
            qname = ctx.qualified(name)
            spec = self.spec_for(qname, out_in_shape(module))
            if masking.find_transform(module, "weight", WEIGHT_QUANT_KIND) is not None:
                raise ValueError(f"{type(self).__name__}: {qname}.weight is already quantized; use one weight quantizer.")
            keep = current_keep(module)
            q, ranges = self.quantize(weight_out_in(module), spec, keep, ctx, name)
            write_weight(module, q)
            attach_quantizer(module, spec, ranges, ctx.owner, qname)


def _divisor_hint(n: int, gs: int) -> int:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return min(divs, key=lambda d: (abs(d - gs), -d))


class GPTQ(RTN):
    """GPTQ weight-only quantization: ``bits`` in 2..8 (2: ternary), ``group_size`` input columns per scale
    (None: per output channel), ``act_order`` (columns by decreasing Hessian diagonal, static groups),
    ``symmetric``, ``damp`` (fraction of the mean Hessian diagonal), ``blocksize`` (lazy batch)."""

    needs = ("hessian",)

    def __init__(self, bits: int = 4, group_size: int | None = 128, act_order: bool = False, symmetric: bool = True,
                 blocksize: int = 128, damp: float = 0.01) -> None:
        super().__init__(bits, group_size, symmetric)
        if not isinstance(act_order, bool):
            raise _fail("GPTQ", "act_order", act_order, "must be True or False.")
        _check_block_damp("GPTQ", blocksize, damp)
        self.act_order, self.blocksize, self.damp = act_order, blocksize, damp

    def quantize(self, w: torch.Tensor, spec: QuantSpec, keep: torch.Tensor | None, ctx: BlockContext, name: str) -> tuple[torch.Tensor, Any]:
        assert ctx.stats is not None
        factor = ctx.stats.linears[name].inverse_factor(self.damp, self.act_order)  # once per shared input
        return gptq_quantize(w, None, spec, act_order=self.act_order, keep=keep, blocksize=self.blocksize,
                             damp=self.damp, factor=factor)

    def __repr__(self) -> str:
        return (f"GPTQ(bits={self.bits}, group_size={self.group_size}, act_order={self.act_order}, "
                f"symmetric={self.symmetric})")


# ------------------------------------------------------------------------------------------ SmoothQuant
class SmoothQuant(OneShotMethod):
    """SmoothQuant with strength ``alpha`` in [0, 1], then W8A8: 8-bit symmetric per-output-channel
    weights (min/max after smoothing) and 8-bit symmetric dynamic per-token inputs on every linear
    layer of the block.  Norm -> linear pairs are found from the real forward (the linear's input is
    the norm's output tensor); the block's output is checked to be unchanged by the fold (relative
    squared error below ``sequential.FOLD_TOLERANCE`` = 1e-6) before quantizing, else ``RuntimeError``."""

    family = "smooth"
    needs = ("absmax", "norms")

    def __init__(self, alpha: float = 0.5) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
            raise _fail("SmoothQuant", "alpha", alpha, "must be in [0, 1] (migration strength; 0.5 is the paper's default).")
        self.alpha = float(alpha)
        #: ``{qualified norm name: [qualified linear names]}`` smoothed so far
        self.folded: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"SmoothQuant(alpha={self.alpha:g}) + W8A8"

    @torch.no_grad()
    def apply(self, ctx: BlockContext) -> None:
        assert ctx.stats is not None
        for norm_name, lin_names in ctx.stats.norm_consumers.items():
            norm = ctx.block.get_submodule(norm_name)
            mods = [ctx.targets[n] for n in lin_names]
            in_f = out_in_shape(mods[0])[1]
            if can_fold(norm, in_f) is not None:
                continue  # left unsmoothed (still W8A8); listed in self.folded only when folded
            s = smoothing_scales(ctx.stats.linears[lin_names[0]].absmax, [weight_out_in(m) for m in mods], self.alpha)
            fold_smoothing(norm, mods, s)
            self.folded[ctx.qualified(norm_name)] = [ctx.qualified(n) for n in lin_names]

    def quantize(self, ctx: BlockContext) -> None:
        """Attach the W8A8 quantizers (after :meth:`apply` and the fold check)."""
        for name, module in ctx.targets.items():
            qname = ctx.qualified(name)
            spec = QuantSpec(8, "channel", None, True)
            w = weight_out_in(module)
            attach_quantizer(module, spec, (w.amin(1), w.amax(1)), ctx.owner, qname)
        attach_act_quantizers({ctx.qualified(n): m for n, m in ctx.targets.items()}, 8, True, "dynamic", 0.95, ctx.owner)


__all__ = ["GPTQ", "RTN", "BlockContext", "Magnitude", "OneShotMethod", "SmoothQuant", "SparseGPT", "Wanda",
           "attach_mask", "attach_quantizer", "current_keep"]
