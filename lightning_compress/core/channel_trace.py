"""Channel spaces found on the model's real forward (pure PyTorch): a recording of one example run.

:mod:`lightning_compress.core.graph` finds the coupled layers with ``torch.fx``, which fails on
data-dependent control flow, on Hugging Face models and on a LightningModule without ``forward``.
:func:`record_channel_spaces` instead *runs* the model once on an example (``run()``: e.g.
``model(x)`` or ``module.training_step(batch, 0)``), in eval mode under ``torch.no_grad`` (BatchNorm
statistics are not updated), and interprets every op as it executes:

* forward hooks on the leaf ``Linear`` / ``Conv2d`` / ``BatchNorm1d|2d`` modules see each call's input
  and output tensors (ops inside those modules, e.g. their masks, are not interpreted);
* a :class:`torch.overrides.TorchFunctionMode` sees every other ``torch`` / ``Tensor`` /
  ``torch.nn.functional`` call, its real arguments and shapes.

Every tensor carries a *layout*: the dimension that holds channels and its segments, each
``(space, channels, width)`` (``width`` consecutive entries per channel: ``channels x H x W``
after a flatten) or an untracked block (``space=None``: a concat with the image, say).  Rules:

* a Linear (last dim) or a ``groups=1`` Conv2d (dim 1) *consumes* its input's segments (its input
  columns at their offsets, in blocks of ``width``) and *produces* a new space;
* a depthwise conv (``groups == in == out``) and a BatchNorm keep the layout: their dim-0 slices join
  the spaces of their input's segments;
* a grouped conv (``groups`` g) consumes one whole space and produces one; both are pruned
  periodically (the same channel positions in every group, as Torch-Pruning does), so a space's
  units are its channels modulo its *period* (the gcd of the group widths);
* per-element ops (activations, dropout, ``to``/``clone``), spatial pooling, means over spatial
  dims, reshapes that keep the channel dim or merge it with the dims after it (flatten -> Linear),
  permute / transpose / squeeze keep the channels (the channel dim may move);
* ``add`` / ``sub`` / ``mul`` of two tracked tensors merge their spaces (residuals, the scale of a
  squeeze-excite block); an untracked operand must broadcast along the channel dim (size 1);
  dividing by a tracked tensor is refused (a removed channel would give inf in the masked model);
* ``cat`` along the channel dim concatenates the segments (densenet, inception); along another dim
  it needs the same layout on every input.

Anything else that reads a tracked tensor (LayerNorm over channels, attention, softmax, indexing a
channel, a loss, the model's output) makes its spaces *unresolvable*, the reason naming the layers and
the op.  The recording sees what the example run does: code paths the example does not take and
tensors that leave through Python (``.tolist()``) are not seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from lightning_compress.core.traced_space import Slot, TracedSpace, merge_spaces
from lightning_compress.core.union_find import UnionFind

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_UNARY = {
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "sigmoid", "sigmoid_", "silu", "gelu", "hardswish",
    "hardsigmoid", "tanh", "tanh_", "elu", "elu_", "leaky_relu", "leaky_relu_", "mish", "softplus", "dropout",
    "dropout1d", "dropout2d", "alpha_dropout", "feature_alpha_dropout", "clone", "contiguous", "to", "float",
    "half", "double", "bfloat16", "detach", "abs", "neg", "__neg__", "exp", "threshold", "threshold_", "selu",
    "celu", "logsigmoid", "hardshrink", "silu_", "data",
}
_POOL = {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "max_pool2d_with_indices",
         "adaptive_max_pool2d_with_indices", "lp_pool2d", "interpolate", "upsample", "max_pool1d", "avg_pool1d",
         "adaptive_avg_pool1d"}
_BINARY = {"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__",
           "mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__itruediv__", "true_divide"}
_DIVIDE = {"div", "div_", "__truediv__", "__itruediv__", "true_divide"}
_REDUCE = {"mean", "sum", "amax", "amin"}
_RESHAPE = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "squeeze_", "unsqueeze_"}
_META_PROPS = {"shape", "dtype", "device", "ndim", "requires_grad", "is_cuda", "grad_fn", "is_sparse", "layout",
               "is_leaf", "is_quantized", "is_meta", "itemsize", "nbytes", "names", "is_nested"}
_META_FUNCS = {"size", "dim", "numel", "__len__", "__format__", "is_floating_point", "get_device", "is_contiguous",
               "element_size", "nelement", "stride", "data_ptr", "is_complex"}
_SHAPE_ONLY = {"zeros_like", "ones_like", "empty_like", "new_zeros", "new_ones", "new_empty", "new_full", "full_like"}


@dataclass(frozen=True)
class _Lay:
    cdim: int
    segs: tuple[tuple[int | None, int, int], ...]  # (space or None, channels, width)

    @property
    def length(self) -> int:
        return sum(n * w for _, n, w in self.segs)


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.names = {id(m): n for n, m in model.named_modules()}
        self.tensors: dict[int, tuple[torch.Tensor, _Lay]] = {}
        self.sets = UnionFind()  # the spaces merged so far
        self.spaces: list[dict[str, Any]] = []
        self.depth = 0
        self.calls = 0

    # ---------------------------------------------------------------- spaces
    def new_space(self, name: str, module: nn.Module, channels: int) -> int:
        sid = len(self.spaces)
        self.sets.add(sid)
        self.spaces.append({"producers": {name: module}, "slots": [], "problems": [], "channels": channels,
                            "period": channels, "passthrough": {}})
        return sid

    def find(self, i: int) -> int:
        return self.sets.find(i)

    def union(self, a: int, b: int) -> None:
        self.sets.union(a, b)

    def who(self, sid: int) -> str:
        root = self.find(sid)
        names = sorted(n for i, sp in enumerate(self.spaces) if self.find(i) == root for n in sp["producers"])
        return ", ".join(repr(n) for n in names[:4]) + (f" (+{len(names) - 4})" if len(names) > 4 else "")

    def problem(self, lay: _Lay | None, text: str) -> None:
        if lay is None:
            return
        for sid, _, _ in lay.segs:
            if sid is not None:
                self.spaces[sid]["problems"].append(f"{self.who(sid)} -> {text}")

    def slot(self, sid: int, *args: Any) -> None:
        self.spaces[sid]["slots"].append(Slot(*args))

    def lay_of(self, t: Any) -> _Lay | None:
        if isinstance(t, torch.Tensor):
            e = self.tensors.get(id(t))
            if e is not None and e[0] is t:
                return e[1]
        return None

    def set_lay(self, t: torch.Tensor, lay: _Lay | None) -> None:
        if lay is None or not lay.segs or all(s is None for s, _, _ in lay.segs):
            self.tensors.pop(id(t), None)
        else:
            self.tensors[id(t)] = (t, lay)

    # ---------------------------------------------------------------- modules
    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        if self.depth == 0:
            module.__dict__["_lc_trace_in"] = (args[0] if args else None, self.lay_of(args[0]) if args else None)
        self.depth += 1

    def post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.depth -= 1
        if self.depth:
            return
        x, lay = module.__dict__.pop("_lc_trace_in", (None, None))
        name = self.names.get(id(module), type(module).__name__)
        if not isinstance(output, torch.Tensor) or not isinstance(x, torch.Tensor):
            self.problem(lay, f"{name!r} ({type(module).__name__}) called without one tensor in and out")
            return
        out_lay = None
        if isinstance(module, nn.Linear):
            self.consume(lay, x, name, module, x.dim() - 1, 1)
            sid = self.new_space(name, module, module.out_features)
            self.slot(sid, name, module, "out", ("weight", "bias") if module.bias is not None else ("weight",), 0, 0, module.out_features, 1)
            out_lay = _Lay(output.dim() - 1, ((sid, module.out_features, 1),))
        elif isinstance(module, nn.Conv2d):
            out_lay = self.conv(module, name, x, lay, output)
        elif isinstance(module, _BN):
            if lay is not None and lay.cdim != 1:
                self.problem(lay, f"{name!r} ({type(module).__name__}) normalises dim 1, the channels are on dim {lay.cdim}")
            elif lay is not None:
                params = tuple(p for p in ("weight", "bias", "running_mean", "running_var") if getattr(module, p, None) is not None)
                self.per_channel(lay, name, module, params)
                out_lay = lay
        self.set_lay(output, out_lay)

    def per_channel(self, lay: _Lay, name: str, module: nn.Module, params: tuple[str, ...]) -> None:
        off = 0
        for sid, n, w in lay.segs:
            if w != 1:
                self.problem(lay, f"{name!r} reads channels spread over {w} entries")
                return
            if sid is not None:
                self.slot(sid, name, module, "out", params, 0, off, n, 1)
                self.spaces[sid]["passthrough"][name] = module
            off += n

    def consume(self, lay: _Lay | None, x: torch.Tensor, name: str, module: nn.Module, want: int, dim: int) -> None:
        if lay is None:
            return
        if lay.cdim != want:
            self.problem(lay, f"{name!r} ({type(module).__name__}) reads dim {want} of a tensor whose channels are on dim {lay.cdim}")
            return
        off = 0
        for sid, n, w in lay.segs:
            if sid is not None:
                self.slot(sid, name, module, "in", ("weight",), dim, off, n * w, w)
            off += n * w

    def conv(self, m: nn.Conv2d, name: str, x: torch.Tensor, lay: _Lay | None, out: torch.Tensor) -> _Lay | None:
        params = ("weight", "bias") if m.bias is not None else ("weight",)
        g = m.groups
        if lay is not None and (lay.cdim != x.dim() - 3 or any(w != 1 for _, _, w in lay.segs)):
            self.problem(lay, f"{name!r} (Conv2d) reads dim {x.dim() - 3}, the channels are on dim {lay.cdim}")
            lay = None
        if g > 1 and g == m.in_channels == m.out_channels:  # depthwise: channel c in -> channel c out
            if lay is None:
                return None
            self.per_channel(lay, name, m, params)
            return lay
        if g == 1:
            self.consume(lay, x, name, m, lay.cdim if lay else 1, 1)
        elif lay is not None:
            if len(lay.segs) != 1 or lay.segs[0][0] is None:
                self.problem(lay, f"grouped conv {name!r} (groups={g}) reads a concatenation")
            else:
                sid = lay.segs[0][0]
                a = m.in_channels // g
                self.slot(sid, name, m, "in", ("weight",), 1, 0, a, 1)
                sp = self.spaces[sid]
                sp["period"] = math.gcd(sp["period"], a)
        sid = self.new_space(name, m, m.out_channels)
        self.slot(sid, name, m, "out", params, 0, 0, m.out_channels, 1)
        if g > 1:
            self.spaces[sid]["period"] = math.gcd(m.out_channels, m.out_channels // g)
        return _Lay(out.dim() - 3, ((sid, m.out_channels, 1),))

    # ---------------------------------------------------------------- functions
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth:
            return out
        self.calls += 1
        name = getattr(func, "__name__", str(func))
        ins = [a for a in _tensors((args, kwargs)) if self.lay_of(a) is not None]
        if not ins:
            return out
        if name == "__get__":  # a property: harmless metadata, or .data
            name = getattr(getattr(func, "__self__", None), "__name__", "")
            if name in _META_PROPS:
                return out
        if name in _SHAPE_ONLY or name in _META_FUNCS:
            return out
        try:
            res = self.interpret(name, args, kwargs, out)
        except _Refused as err:
            for t in ins:
                self.problem(self.lay_of(t), f"{name} ({err}) at op #{self.calls}")
            res = None
        else:
            if res is None:
                for t in ins:
                    self.problem(self.lay_of(t), f"{name} at op #{self.calls}, an op the channel analysis does not understand")
        outs = out if isinstance(out, tuple | list) else (out,)
        for i, o in enumerate(outs):
            if isinstance(o, torch.Tensor):
                self.set_lay(o, res[i] if isinstance(res, list) and i < len(res) else (res if not isinstance(res, list) else None))
        return out

    def interpret(self, name: str, args: tuple, kwargs: dict, out: Any) -> _Lay | list | None:
        x = args[0] if args else None
        lay = self.lay_of(x)
        first = isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor)
        o = out[0] if first else out
        if name in _UNARY or name == "type_as":
            if lay is None or not isinstance(o, torch.Tensor) or o.shape != x.shape:
                raise _Refused("a tracked tensor is not its first operand")
            return lay
        if name in _POOL:
            if lay is None or lay.cdim != x.dim() - 3 and not (x.dim() == 3 and lay.cdim == 1):
                raise _Refused("pools over the channel dim")
            return [lay, None] if first else lay
        if name in _BINARY:
            return self.binary(name, args, o)
        if name in _REDUCE:
            return self.reduce(x, lay, args, kwargs, o)
        if name in _RESHAPE:
            return _reshaped(lay, tuple(x.shape), tuple(o.shape))
        if name in ("permute", "transpose", "transpose_", "t", "swapaxes"):
            return self.permuted(name, x, lay, args, kwargs)
        if name in ("cat", "concat", "concatenate"):
            return self.cat(args, kwargs, o)
        if name == "__getitem__":
            return self.getitem(x, lay, args[1], o)
        return None

    def binary(self, name: str, args: tuple, out: torch.Tensor) -> _Lay:
        nd = out.dim()
        lays: list[_Lay] = []
        if len(args) < 2:
            raise _Refused("an operand outside the positional arguments")
        for i, a in enumerate(args[:2]):
            lay = self.lay_of(a)
            if lay is not None:
                if i == 1 and name in _DIVIDE:
                    raise _Refused("divides by channels that may be removed")
                lays.append(_Lay(lay.cdim + nd - a.dim(), lay.segs))
        if not lays:
            raise _Refused("the tracked tensor is not an operand")
        cdim = lays[0].cdim
        for a in args[:2]:
            lay = self.lay_of(a)
            if isinstance(a, torch.Tensor) and lay is None and a.dim() > 0:
                k = cdim - (nd - a.dim())
                if k >= 0 and a.shape[k] != 1:
                    raise _Refused(f"the other operand (shape {tuple(a.shape)}) has entries per channel")
        if any(l.cdim != cdim for l in lays) or out.shape[cdim] != lays[0].length:
            raise _Refused("operands' channels do not line up")
        if len(lays) == 2:
            a, b = lays
            if [(n, w) for _, n, w in a.segs] != [(n, w) for _, n, w in b.segs]:
                raise _Refused("operands' channel segments differ")
            for (sa, _, _), (sb, _, _) in zip(a.segs, b.segs):
                if (sa is None) != (sb is None):
                    raise _Refused("a tracked channel meets an untracked one")
                if sa is not None:
                    if self.spaces[self.find(sa)]["channels"] != self.spaces[self.find(sb)]["channels"]:
                        raise _Refused("merged spaces have different widths")
                    self.union(sa, sb)
        return lays[0]

    def reduce(self, x: torch.Tensor, lay: _Lay, args: tuple, kwargs: dict, out: torch.Tensor) -> _Lay:
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        if dims is None:
            raise _Refused("reduces over the channels")
        dims = [int(d) % x.dim() for d in (dims if isinstance(dims, list | tuple) else [dims])]
        if lay.cdim in dims:
            raise _Refused("reduces over the channel dim")
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        return lay if keep else _Lay(lay.cdim - sum(d < lay.cdim for d in dims), lay.segs)

    def permuted(self, name: str, x: torch.Tensor, lay: _Lay, args: tuple, kwargs: dict) -> _Lay:
        nd = x.dim()
        if name == "permute":
            rest = args[1:]
            order = rest[0] if len(rest) == 1 and isinstance(rest[0], list | tuple) else rest
            order = list(kwargs.get("dims", order))
            return _Lay([int(d) % nd for d in order].index(lay.cdim), lay.segs)
        d0, d1 = (1, 0) if name == "t" else (int(args[1]) % nd, int(args[2]) % nd)
        return _Lay(d1 if lay.cdim == d0 else d0 if lay.cdim == d1 else lay.cdim, lay.segs)

    def cat(self, args: tuple, kwargs: dict, out: torch.Tensor) -> _Lay:
        ts = list(args[0]) if args else list(kwargs.get("tensors"))
        dim = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
        lays = [self.lay_of(t) for t in ts]
        cd = {l.cdim for l in lays if l is not None}
        if len(cd) != 1:
            raise _Refused("inputs carry channels on different dims")
        cdim = cd.pop()
        if dim == cdim:
            segs: list = []
            for t, l in zip(ts, lays):
                segs.extend(l.segs if l is not None else [(None, int(t.shape[dim]), 1)])
            return _Lay(cdim, tuple(segs))
        if any(l is None for l in lays):
            raise _Refused("concatenates tracked channels with an untracked tensor along another dim")
        return self.binary("add", (ts[0], ts[1]), out) if len(ts) == 2 else _same(lays)

    def getitem(self, x: torch.Tensor, lay: _Lay, idx: Any, out: torch.Tensor) -> _Lay:
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(i is Ellipsis for i in idx):
            k = idx.index(Ellipsis)
            real = sum(1 for i in idx if i is not None and i is not Ellipsis)
            idx = idx[:k] + (slice(None),) * (x.dim() - real) + idx[k + 1:]
        src = dst = 0
        cdim = None
        for i in idx:
            if i is None:
                dst += 1
                continue
            if isinstance(i, bool) or not isinstance(i, int | slice):
                raise _Refused("advanced indexing")
            if src == lay.cdim:
                if i != slice(None):
                    raise _Refused("indexes the channels")
                cdim = dst
            dst += isinstance(i, slice)
            src += 1
        return _Lay(cdim if cdim is not None else dst + lay.cdim - src, lay.segs)


class _Refused(Exception):
    pass


def _same(lays: list) -> _Lay:
    first = lays[0]
    if any(l.segs != first.segs or l.cdim != first.cdim for l in lays):
        raise _Refused("inputs carry different channels")
    return first


def _reshaped(lay: _Lay, src: tuple[int, ...], dst: tuple[int, ...]) -> _Lay:
    """The layout after a reshape: the channel dim kept, or merged with the dims after it (widths grow)."""
    c = lay.cdim
    pre = math.prod(src[:c])
    for k in range(len(dst) + 1):
        if math.prod(dst[:k]) != pre or k == len(dst):
            continue
        for j in range(c + 1, len(src) + 1):
            if dst[k] == math.prod(src[c:j]) and math.prod(src[j:]) == math.prod(dst[k + 1:]):
                w = math.prod(src[c + 1:j])
                return _Lay(k, tuple((s, n, wd * w) for s, n, wd in lay.segs))
    raise _Refused(f"reshapes {src} -> {dst} across the channel dim {c}")


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, list | tuple):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def record_channel_spaces(model: nn.Module, run: Callable[[], Any]) -> list[TracedSpace]:
    """The channel spaces of ``model`` on the real forward ``run()`` (see the module docstring).

    ``run`` is called once in eval mode under ``torch.no_grad`` (training flags restored after); its
    return value is the model output (a tracked tensor in it makes its spaces unresolvable).  Spaces
    whose producers are all Linear, or all Conv2d, are returned (``problems`` empty = prunable)."""
    rec = _Recorder(model)
    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, *_BN)):
            handles.append(m.register_forward_pre_hook(rec.pre_hook))
            handles.append(m.register_forward_hook(rec.post_hook))
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), rec:
            result = run()
    finally:
        for h in handles:
            h.remove()
        for m, t in flags:
            m.training = t
        for m in model.modules():
            m.__dict__.pop("_lc_trace_in", None)
    for t in _tensors(_plain_outputs(result)):
        rec.problem(rec.lay_of(t), "reach the model output")
    return merge_spaces(rec)


def _plain_outputs(result: Any) -> Any:
    if isinstance(result, dict) or hasattr(result, "to_tuple"):
        return list(result.values()) if isinstance(result, dict) else list(result.to_tuple())
    return result


__all__ = ["Slot", "TracedSpace", "record_channel_spaces"]
