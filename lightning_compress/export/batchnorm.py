"""BatchNorm folding: ``Conv2d -> BatchNorm2d`` pairs into the conv, eval semantics.

Every ``Conv2d -> BatchNorm2d`` pair whose BatchNorm reads only that conv, and whose conv output
nothing else reads, is folded into the conv's weight and bias (running statistics) and the
BatchNorm becomes ``nn.Identity``.  :func:`lightning_compress.export.clean` does it with
``fold_batchnorm=True``; off by default there: the folded model computes the same outputs in
``eval()`` but is no longer the model you trained (no BatchNorm in ``train()``, BatchNorm keys gone
from the ``state_dict``, convs gain a bias), which is right for deployment and wrong for further
fine-tuning.  A slim model's narrow convs make the per-channel BatchNorm a larger share of its run
time than in the dense model, so folding matters more after channel pruning.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    w = conv.weight
    mean = bn.running_mean.detach().double()  # type: ignore[union-attr]
    var = bn.running_var.detach().double()  # type: ignore[union-attr]
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    new_w = (w.detach().double() * scale.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
    new_b = ((b - mean) * scale + beta).to(w.dtype)
    conv.weight = nn.Parameter(new_w.contiguous(), requires_grad=w.requires_grad)
    conv.bias = nn.Parameter(new_b.to(w.device), requires_grad=w.requires_grad)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, skip: Sequence[str] = ()) -> list[str]:
    """Fold every ``Conv2d -> BatchNorm2d`` pair into the conv (eval semantics), in place.

    A pair is folded when, in the ``torch.fx`` graph of ``model``, the BatchNorm2d's only input is
    the output of one Conv2d, that output has no other reader, each module is called exactly once,
    and the BatchNorm tracks running statistics.  The conv's weight is scaled per output channel by
    ``gamma / sqrt(running_var + eps)``, its bias becomes ``(bias - running_mean) * scale + beta``
    (computed in float64, stored in the conv's dtype), and the BatchNorm is replaced by
    ``nn.Identity``.  In ``eval()`` the model computes the same outputs; in ``train()`` it no longer
    normalises (fold only for inference).

    Args:
        model: any ``nn.Module`` (plain: call after :func:`lightning_compress.export.clean`, not on a wrapped model).
        skip: qualified names of convs not to fold (e.g. weight-quantized convs, whose weights would
            leave the quantization grid).

    Returns:
        Notes (strings): what was folded (one summary line) and every BatchNorm left alone with the
        reason; a model fx cannot trace, or without such pairs, is left unchanged and says so.
    """
    import torch.fx as fx

    try:
        gm = fx.symbolic_trace(model)
    except Exception as err:  # fx raises many kinds of errors on dynamic code
        return [f"fold_batchnorm: torch.fx could not trace {type(model).__name__} ({type(err).__name__}); no BatchNorm folded."]
    modules = dict(model.named_modules())
    calls: dict[int, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = modules.get(str(node.target))
            if m is not None:
                calls[id(m)] = calls.get(id(m), 0) + 1
    notes: list[str] = []
    pairs: list[tuple[str, str]] = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), nn.BatchNorm2d):
            continue
        bn_name = str(node.target)
        bn = modules[bn_name]
        src = node.args[0] if node.args else None
        conv = modules.get(str(src.target)) if isinstance(src, fx.Node) and src.op == "call_module" else None
        why = None
        if len(node.args) != 1 or node.kwargs or not isinstance(conv, nn.Conv2d):
            what = f"{src.op} {src.target}" if isinstance(src, fx.Node) else repr(src)
            why = f"its input is not a Conv2d output ({what})"
        elif len(src.users) != 1:
            others = sorted(u.name for u in src.users if u is not node)
            why = f"the output of Conv2d {str(src.target)!r} is also read by {others}"
        elif calls.get(id(conv), 0) != 1 or calls.get(id(bn), 0) != 1:
            why = f"Conv2d {str(src.target)!r} or the BatchNorm is called more than once"
        elif not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
            why = "it has no running statistics (track_running_stats=False)"
        elif str(src.target) in skip:
            why = f"Conv2d {str(src.target)!r} is weight-quantized (folding would move its weights off the quantization grid)"
        if why is not None:
            notes.append(f"fold_batchnorm: {bn_name!r} not folded: {why}.")
            continue
        pairs.append((str(src.target), bn_name))
    for conv_name, bn_name in pairs:
        _fold_into_conv(modules[conv_name], modules[bn_name])  # type: ignore[arg-type]
        parent_name, _, leaf = bn_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, nn.Identity())
    if pairs:
        notes.insert(0, f"fold_batchnorm: folded {len(pairs)} BatchNorm2d into the preceding Conv2d (eval semantics).")
    elif not notes:
        notes.append("fold_batchnorm: no Conv2d -> BatchNorm2d pair found; nothing folded.")
    return notes
