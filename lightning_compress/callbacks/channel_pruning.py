"""``ChannelPruning``: remove Conv2d output channels with their BatchNorm and consumer inputs."""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_compress.callbacks._pruning import PruneGroup
from lightning_compress.callbacks._structured import StructuredPruning
from lightning_compress.core.criteria import Criterion
from lightning_compress.core.graph import ChannelSpace, TracingError, trace_channel_spaces
from lightning_compress.core.select import filter_names
from lightning_compress.core.surgery import Member, UnitGroup
from lightning_compress.core.types import Rounding, ScheduleName, Scope, StructuredMethodName


class ChannelPruning(StructuredPruning):
    """Prune Conv2d output channels; the BatchNorms and the consumers of those channels follow.

    Coupling is found by ``torch.fx`` tracing (:mod:`lightning_compress.core.graph`): the BatchNorm
    after a conv, the convs (and the Linear after global pooling) that read it, and residual adds,
    which tie every conv writing into one stream to ONE shared channel mask (a ResNet stage's stem /
    last convs / downsample convs), so ResNets work without naming anything.  The mask zeroes each
    producer's weight and bias of the channel, the BatchNorm weight and bias of that channel (so the
    BatchNorm outputs 0 there), and the consumers' input channels: the masked model computes exactly
    what the slim model computes (BatchNorm in eval mode; running statistics are sliced, not folded).

    Args:
        sparsity: fraction of the channels (weighted by parameters per channel) removed at ``end_step``.
        method: ``"l1"`` (mean ``|W|`` of the channel's filters) or ``"topk"`` (movement scores).
        schedule, start_step, end_step, frequency, scope, max_sparsity_per_layer, exclude, groups:
            as :class:`~lightning_compress.SparsePruning`.
        rounding: ``"nearest"`` (default) or ``"floor"``: a layer's pruned channels are
            ``round(sparsity * n)`` or ``floor(sparsity * n)`` (then ``ceil((1 - sparsity) * n)`` stay,
            DeepSpeed's count; the DeepSpeed importer sets it).
        modules: regexes of Conv2d layers; a named conv tied to others by a residual add brings its
            whole group.  Default: every conv whose consumers can all be fixed (groups=1 convs,
            BatchNorm, Linear after global pooling); convs feeding the model output, a concat, a
            depthwise conv, a reshape of a spatial map etc. are left alone.

    Raises:
        ValueError: at ``setup`` when fx cannot trace the model, when a named conv's channels reach an op
            that cannot be narrowed (the message names the layers and the op), or when ``sparsity``
            would remove every channel of a group.

    Example (``model``, ``datamodule``: yours; ``x``: a batch of its input)::

        import torch
        from lightning.pytorch import Trainer
        from lightning_compress import ChannelPruning, RedundancyClean

        callbacks = [ChannelPruning(sparsity=0.5), RedundancyClean("slim")]
        Trainer(max_steps=1000, callbacks=callbacks).fit(model, datamodule)
        slim = torch.export.load("slim/model.pt2").module()  # runs without your model's code
        y = slim(x)  # exported in eval mode: call it as it is (it has no working .eval())
    """

    mask_kind = "channel_mask"
    unit_word = "channel"
    target_types = (nn.Conv2d,)

    def __init__(
        self,
        sparsity: float | None = 0.5,
        method: StructuredMethodName | Criterion = "l1",
        schedule: ScheduleName = "exp",
        start_step: int | float = 0,
        end_step: int | float | None = None,
        frequency: int | float = 1,
        scope: Scope = "local",
        max_sparsity_per_layer: float = 0.98,
        modules: list[str] | None = None,
        exclude: list[str] | None = None,
        groups: dict[str, dict[str, Any]] | None = None,
        rounding: Rounding = "nearest",
    ) -> None:
        super().__init__(
            sparsity=sparsity, method=method, schedule=schedule, start_step=start_step, end_step=end_step,
            frequency=frequency, scope=scope, max_sparsity_per_layer=max_sparsity_per_layer, modules=modules,
            exclude=exclude, groups=groups, rounding=rounding,
        )

    def find_groups(self, model: nn.Module, group: PruneGroup) -> list[UnitGroup]:
        try:  # fx only: the model families know Linear FFN blocks, never convs with their BatchNorms
            spaces = trace_channel_spaces(model)
        except TracingError as err:
            raise ValueError(
                f"ChannelPruning: needs torch.fx to trace {type(model).__name__} to find the convs' BatchNorms, "
                f"consumers and residual groups, and tracing failed: {err}"
            ) from None
        conv_spaces = [sp for sp in spaces if sp.producers and all(isinstance(m, nn.Conv2d) for m in sp.producers.values())]
        names = {id(m): n for n, m in model.named_modules()}
        # a space is left out when any of its producers matches an `exclude` regex
        kept = set(filter_names([n for sp in conv_spaces for n in sp.producers], None, group.exclude, owner="ChannelPruning"))
        allowed = [sp for sp in conv_spaces if all(n in kept for n in sp.producers)]
        if group.modules is None:
            default = [sp for sp in conv_spaces if sp.ok and sp.consumers]
            if not default:
                problems = "; ".join(p for sp in conv_spaces for p in sp.problems[:1])
                raise ValueError(
                    f"ChannelPruning: no Conv2d of {type(model).__name__} can be channel-pruned safely"
                    + (f" ({problems})" if problems else "") + "."
                )
            chosen = [sp for sp in default if any(sp is a for a in allowed)]
        else:
            cands = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n]
            named = set(filter_names(cands, group.modules, None, owner="ChannelPruning", what="Conv2d"))
            chosen = []
            for sp in allowed:
                hit = [n for n in sp.producers if n in named]
                if not hit:
                    continue
                if not sp.ok:
                    raise ValueError(
                        f"ChannelPruning: cannot prune the channels of {hit}: tracing found a coupling it cannot "
                        f"resolve: {'; '.join(sp.problems)}. Leave these convs out (`exclude`)."
                    )
                chosen.append(sp)
        return [self._group(sp, names) for sp in chosen]

    def _group(self, sp: ChannelSpace, names: dict[int, str]) -> UnitGroup:
        members = []
        for n, m in sp.producers.items():
            members.append(Member(n, m, "out", ("weight", "bias") if m.bias is not None else ("weight",), 0))
        for n, m in sp.norms.items():
            params = tuple(p for p in ("weight", "bias") if getattr(m, p, None) is not None)
            members.append(Member(n, m, "out", params + tuple(b for b in ("running_mean", "running_var") if getattr(m, b, None) is not None), 0))
        for n, m in sp.consumers.items():
            members.append(Member(n, m, "in", ("weight",), 1))
        first = sorted(sp.producers)[0]
        size = sp.size
        name = first if len(sp.producers) == 1 else f"{first}+{len(sp.producers) - 1}"
        return UnitGroup(name=name, kind=self.mask_kind, num_units=size, members=members, holder=sp.producers[first], unit="channel")
