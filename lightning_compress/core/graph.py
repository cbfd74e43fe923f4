"""Which layers are coupled, for structured pruning (pure PyTorch).

A *channel space* is the set of output channels (Conv2d) or output features (Linear) that several
layers share: the producers that write it, the BatchNorms that normalise it per channel, and the
consumers that read it (a Linear's input columns, a Conv2d's input channels).  Removing channel ``c``
is exact only when it is removed from every member of its space at once.  A residual add merges the
spaces of its two operands (a ResNet stage: stem conv, every block's last conv and the downsample
convs share one space, hence one channel mask).

How it is found: :func:`torch.fx.symbolic_trace` of the whole model, then a forward walk over the
graph (:func:`trace_channel_spaces`).  Ops known to act per channel keep the space (activations,
dropout, pooling, BatchNorm, scalar arithmetic, ``flatten``/``view(n, -1)``/``mean`` only once the
spatial size is 1 after global pooling); ``add`` of two spaces merges them.  Anything else that reads
a space (``cat``, ``LayerNorm``, ``softmax``, a reshape of a spatial map, an add with an untracked
tensor, the model output, a module fx does not enter) makes the space *unresolvable*; the reason
names the layers and the op.  When fx cannot trace the model (Hugging Face models use data-dependent
control flow) it raises :class:`TracingError`; the model families then say what they know
(:func:`lightning_compress.core.families.channel_spaces`).  :func:`related_spaces` builds spaces from
explicit ``related_modules``, which override both.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_compress.core import masking
from lightning_compress.core.union_find import UnionFind

#: modules that act per channel / per feature (output channel c depends only on input channel c)
_PER_CHANNEL_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Hardswish,
    nn.Hardsigmoid, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d,
)
_PER_CHANNEL_FUNCS = {
    torch.relu, torch.nn.functional.relu, torch.nn.functional.gelu, torch.nn.functional.silu,
    torch.sigmoid, torch.tanh, torch.nn.functional.dropout, torch.nn.functional.max_pool2d,
    torch.nn.functional.avg_pool2d, torch.nn.functional.leaky_relu, torch.nn.functional.relu6,
    torch.nn.functional.hardswish, torch.nn.functional.elu, torch.nn.functional.mish,
}
_PER_CHANNEL_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "float", "to", "type_as"}
_ADD = {operator.add, operator.iadd, torch.add}
_SCALAR_OPS = {operator.mul, operator.imul, operator.truediv, torch.mul}
_HARMLESS_METHODS = {"size", "dim"}


@dataclass
class ChannelSpace:
    """One coupled set of channels.

    Attributes:
        producers: ``{name: module}`` Linear / Conv2d layers whose output channels form the space.
        norms: ``{name: BatchNorm}`` normalising it per channel.
        consumers: ``{name: module}`` reading it (Linear input columns, Conv2d input channels).
        problems: why the space cannot be pruned (empty = prunable).
    """

    producers: dict[str, nn.Module] = field(default_factory=dict)
    norms: dict[str, nn.Module] = field(default_factory=dict)
    consumers: dict[str, nn.Module] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        m = next(iter(self.producers.values()))
        return int(m.out_features if isinstance(m, nn.Linear) else m.out_channels)

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        return f"producers={sorted(self.producers)} consumers={sorted(self.consumers)}"


class TracingError(RuntimeError):
    """fx could not trace the model."""


def _conv_ok(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups == 1


def trace_channel_spaces(model: nn.Module) -> list[ChannelSpace]:
    """Channel spaces of ``model`` by ``torch.fx`` (raises :class:`TracingError` when fx fails)."""
    import torch.fx as fx

    class _Tracer(fx.Tracer):
        """A module carrying masks / quantizers is a leaf: tracing into its forward would run the
        transforms and store their results on ``model`` as ``_tensor_constant*`` attributes."""

        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return masking.is_wrapped(m) or super().is_leaf_module(m, qualname)

    try:
        gm = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as err:  # fx raises many kinds of errors on dynamic code
        raise TracingError(f"torch.fx.symbolic_trace failed on {type(model).__name__}: {type(err).__name__}: {err}") from err
    modules = dict(gm.named_modules())
    uf = UnionFind()
    spaces: dict[int, ChannelSpace] = {}
    # per node: (space id, spatial_is_one) or None for untracked values
    state: dict[fx.Node, tuple[int, bool] | None] = {}
    counter = [0]

    def new_space(name: str, module: nn.Module) -> int:
        i = counter[0]
        counter[0] += 1
        uf.add(i)
        spaces[i] = ChannelSpace(producers={name: module})
        return i

    def space_of(arg) -> tuple[int, bool] | None:
        return state.get(arg) if isinstance(arg, fx.Node) else None

    def problem(sid: int, text: str) -> None:
        spaces[sid].problems.append(text)

    def tracked_args(node: fx.Node) -> list[tuple[int, bool]]:
        out = []
        for a in node.all_input_nodes:
            s = state.get(a)
            if s is not None:
                out.append(s)
        return out

    def producers_text(sid: int) -> str:
        root = uf.find(sid)
        names = sorted(n for i, sp in spaces.items() if uf.find(i) == root for n in sp.producers)
        return ", ".join(repr(n) for n in names)

    for node in gm.graph.nodes:
        state[node] = None
        ins = tracked_args(node)
        if node.op == "call_module":
            name = str(node.target)
            m = modules[name]
            src = space_of(node.args[0]) if node.args else None
            if isinstance(m, nn.Linear) or _conv_ok(m):
                if src is not None:
                    if isinstance(m, nn.Linear) and not src[1] and src[0] in spaces and _is_conv_space(spaces, uf, src[0]):
                        problem(src[0], f"{producers_text(src[0])} -> Linear {name!r} reads a spatial map (flatten without global pooling)")
                    else:
                        spaces[src[0]].consumers[name] = m
                state[node] = (new_space(name, m), isinstance(m, nn.Linear))
                continue
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) and src is not None:
                spaces[src[0]].norms[name] = m
                state[node] = src
                continue
            if isinstance(m, _PER_CHANNEL_MODULES) and src is not None:
                state[node] = src
                continue
            if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d) and src is not None:
                size = m.output_size
                one = size in (1, (1, 1))
                state[node] = (src[0], one)
                continue
            if isinstance(m, nn.Flatten) and src is not None:
                if src[1]:
                    state[node] = src
                else:
                    problem(src[0], f"{producers_text(src[0])} -> {name!r} ({type(m).__name__}) flattens a spatial map")
                continue
            for s in ins:
                problem(s[0], f"{producers_text(s[0])} -> {name!r} ({type(m).__name__}), a module the channel analysis does not understand")
            continue
        if node.op == "call_function":
            fn = node.target
            if fn in _ADD and len(ins) == 2:
                uf.union(ins[0][0], ins[1][0])
                state[node] = (uf.find(ins[0][0]), ins[0][1] and ins[1][1])
                continue
            if (fn in _ADD or fn in _SCALAR_OPS) and len(ins) == 1 and len(node.all_input_nodes) == 1:
                state[node] = ins[0]  # tensor (+|*) python scalar
                continue
            if fn in _PER_CHANNEL_FUNCS and len(ins) == 1:
                state[node] = ins[0]
                continue
            if fn is torch.nn.functional.adaptive_avg_pool2d and len(ins) == 1:
                out = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
                state[node] = (ins[0][0], out in (1, (1, 1)))
                continue
            if fn is torch.flatten and len(ins) == 1:
                if ins[0][1]:
                    state[node] = ins[0]
                else:
                    problem(ins[0][0], f"{producers_text(ins[0][0])} -> torch.flatten of a spatial map at node {node.name!r}")
                continue
            if fn is torch.mean and len(ins) == 1:
                if _spatial_mean(node):
                    state[node] = (ins[0][0], True)
                    continue
            if fn is getattr and ins:
                continue  # x.shape: not a tensor flow
            for s in ins:
                problem(s[0], f"{producers_text(s[0])} -> {getattr(fn, '__name__', fn)} at node {node.name!r}, an op the channel analysis does not understand")
            continue
        if node.op == "call_method":
            meth = node.target
            if meth in _HARMLESS_METHODS:
                continue
            if ins and node.args and space_of(node.args[0]) is not None:
                s = space_of(node.args[0])
                assert s is not None
                if meth in _PER_CHANNEL_METHODS:
                    state[node] = s
                    continue
                if meth == "mean" and _spatial_mean(node):
                    state[node] = (s[0], True)
                    continue
                if meth in ("flatten", "view", "reshape") and s[1] and _keeps_batch_flat(node):
                    state[node] = s
                    continue
                if meth in ("add", "add_") and len(ins) == 2:
                    uf.union(ins[0][0], ins[1][0])
                    state[node] = (uf.find(ins[0][0]), s[1])
                    continue
            for s in ins:
                problem(s[0], f"{producers_text(s[0])} -> .{meth}() at node {node.name!r}, an op the channel analysis does not understand")
            continue
        if node.op == "output":
            for s in ins:
                problem(s[0], f"{producers_text(s[0])} reach the model output")
            continue
    # merge per union-find root
    merged: dict[int, ChannelSpace] = {}
    for i, sp in spaces.items():
        root = uf.find(i)
        tgt = merged.setdefault(root, ChannelSpace())
        tgt.producers.update(sp.producers)
        tgt.norms.update(sp.norms)
        tgt.consumers.update(sp.consumers)
        tgt.problems.extend(sp.problems)
    out = []
    for sp in merged.values():
        kinds = {type(m) for m in sp.producers.values()}
        sizes = {(m.out_features if isinstance(m, nn.Linear) else m.out_channels) for m in sp.producers.values()}
        if len(sizes) > 1:
            sp.problems.append(f"{sorted(sp.producers)} are added together but have different widths {sorted(sizes)}")
        if any(k is nn.Linear for k in kinds) and any(k is not nn.Linear for k in kinds):
            sp.problems.append(f"{sorted(sp.producers)} mix Linear and Conv2d producers")
        out.append(sp)
    return out


def _is_conv_space(spaces: dict[int, ChannelSpace], uf: UnionFind, sid: int) -> bool:
    root = uf.find(sid)
    return any(isinstance(m, nn.Conv2d) for i, sp in spaces.items() if uf.find(i) == root for m in sp.producers.values())


def _spatial_mean(node) -> bool:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if isinstance(dims, list | tuple):
        return sorted(int(d) for d in dims) in ([2, 3], [-2, -1])
    return False


def _keeps_batch_flat(node) -> bool:
    if node.target == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return start == 1
    rest = [a for a in node.args[1:]]
    if len(rest) == 1 and isinstance(rest[0], list | tuple):
        rest = list(rest[0])
    return len(rest) == 2 and rest[1] == -1


def related_spaces(
    model: nn.Module, related: dict[str, list[str]], owner: str, pairing: str = "all"
) -> list[ChannelSpace]:
    """Spaces named by hand: ``{producer regex: [consumer regexes]}`` (each producer its own space).

    ``pairing="all"``: every module a consumer regex matches reads every producer its key matches.
    ``pairing="index"`` (DeepSpeed's ``related_modules``): the j-th producer the key matches (in
    ``named_modules`` order) is read by the j-th module each consumer regex matches, so each regex
    must match as many modules as the key.  Either way a consumer whose input width
    (``in_features`` / ``in_channels``) differs from its producer's output width is refused.

    Raises:
        ValueError: a regex matches nothing, the counts differ under ``"index"``, or a pairing's
            shapes do not fit (the message names both modules and their widths).
    """
    import re

    from lightning_compress.core.args import check_regexes, compile_regex

    if pairing not in ("all", "index"):
        raise ValueError(f"{owner}: `related_pairing`={pairing!r} must be 'all' or 'index'.")
    named = dict(model.named_modules())

    def width(m: nn.Module, attr: str) -> int:
        return int(getattr(m, attr))

    out = []
    for prx, crxs in related.items():
        compile_regex(prx, "related_modules", owner)
        crxs = check_regexes(crxs, f"related_modules[{prx!r}]", owner, allow_none=False)
        prods = {n: m for n, m in named.items() if n and re.search(prx, n) and isinstance(m, nn.Linear | nn.Conv2d)}
        if not prods:
            raise ValueError(f"{owner}: `related_modules` key {prx!r} matches no Linear/Conv2d module of {type(model).__name__}.")
        matched: list[dict[str, nn.Module]] = []
        for crx in crxs:
            found = {n: m for n, m in named.items() if n and re.search(crx, n) and isinstance(m, nn.Linear | nn.Conv2d)}
            if not found:
                raise ValueError(f"{owner}: `related_modules` consumer regex {crx!r} (for {prx!r}) matches no Linear/Conv2d module.")
            if pairing == "index" and len(found) != len(prods):
                raise ValueError(
                    f"{owner}: `related_modules` pairs the j-th module matched by {prx!r} with the j-th matched by "
                    f"{crx!r} (DeepSpeed's rule), but {prx!r} matches {len(prods)} modules ({sorted(prods)[:4]}...) and "
                    f"{crx!r} matches {len(found)} ({sorted(found)[:4]}...); make both match one module per layer."
                )
            matched.append(found)
        for j, (pname, pm) in enumerate(prods.items()):
            cons: dict[str, nn.Module] = {}
            for found in matched:
                cons.update(dict([list(found.items())[j]]) if pairing == "index" else found)
            p_out = width(pm, "out_features" if isinstance(pm, nn.Linear) else "out_channels")
            for cname, cm in cons.items():
                c_in = width(cm, "in_features" if isinstance(cm, nn.Linear) else "in_channels")
                if c_in != p_out:
                    raise ValueError(
                        f"{owner}: `related_modules` makes {cname!r} (input width {c_in}) a consumer of {pname!r} "
                        f"(output width {p_out}); their shapes do not fit, so removing rows of {pname!r} cannot "
                        f"narrow {cname!r}. Fix the regexes so each producer is paired with the layer reading it."
                    )
            out.append(ChannelSpace(producers={pname: pm}, consumers=cons))
    return out
