"""``ChannelPruning``: remove Conv2d output channels (and the hidden features of Linear layers) with
their BatchNorms and consumer inputs."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from torch import nn

from lightning_compress.callbacks._example_run import example_run
from lightning_compress.callbacks._pruning import PruneGroup
from lightning_compress.callbacks._structured import StructuredPruning
from lightning_compress.core.channel_trace import TracedSpace, record_channel_spaces
from lightning_compress.core.criteria import Criterion
from lightning_compress.core.graph import ChannelSpace, TracingError, trace_channel_spaces
from lightning_compress.core.select import filter_names
from lightning_compress.core.surgery import Member, UnitGroup
from lightning_compress.core.types import Rounding, ScheduleName, Scope, StructuredMethodName


class ChannelPruning(StructuredPruning):
    """Prune Conv2d output channels (and Linear output features); the BatchNorms and the consumers of
    those channels follow.

    Coupling is found by ``torch.fx`` tracing (:mod:`lightning_compress.core.graph`) where it works and
    resolves every space but the output layer's; otherwise (fx fails: a LightningModule without
    ``forward``, data-dependent control flow; or fx leaves a concat, a depthwise conv, a flatten -> Linear
    unresolved) by recording the real forward on an example
    (:mod:`lightning_compress.core.channel_trace`; the example comes from ``example_input``, the
    model's ``example_input_array``, or the first batch of the stage's dataloader run through
    ``training_step``, see :mod:`lightning_compress.callbacks._example_run`).  Either finds the
    BatchNorm after a conv, the convs and Linears that read it, and residual adds, which tie every conv
    writing into one stream to ONE shared channel mask (a ResNet stage's stem / last convs / downsample
    convs).  The recording also prunes depthwise convs with their input (one filter per kept channel),
    grouped convs periodically (the same channel positions kept in every group), concatenations (each
    input's channels at their offsets in the consumers: densenet, inception), a flatten -> Linear (the
    Linear's input features in blocks of ``H*W`` per channel: vgg, alexnet) and squeeze-excite blocks
    (the excite layer's channels are the scaled channels).  The mask zeroes each
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
        modules: regexes of Conv2d (or Linear) producers; a named layer tied to others by a residual add
            brings its whole group.  Default: every space whose consumers can all be narrowed; layers
            feeding the model output, a LayerNorm over channels, attention, a reshape that splits
            channels etc. are left alone.
        linear: also prune the output features of Linear layers whose consumers can be narrowed (an
            MLP head's hidden layer, a transformer MLP's hidden features); ``False``: convs only.
        example_input: a batch of the model's input (a tensor; a tuple = positional arguments, a dict
            = keyword arguments) for recording the real forward; default: ``example_input_array`` or
            the first batch of the dataloader.

    Raises:
        ValueError: at ``setup`` when fx cannot trace the model and no example is available (or the
            example run fails), when a named conv's channels reach an op
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
        linear: bool = True,
        example_input: Any = None,
    ) -> None:
        if not isinstance(linear, bool):
            raise ValueError(f"ChannelPruning: `linear`={linear!r} must be True or False.")
        self.linear = linear
        self.example_input = example_input
        self._context: tuple[Trainer | None, str | None] = (None, None)
        self._spaces_cache: tuple[int, list[ChannelSpace]] | None = None
        super().__init__(
            sparsity=sparsity, method=method, schedule=schedule, start_step=start_step, end_step=end_step,
            frequency=frequency, scope=scope, max_sparsity_per_layer=max_sparsity_per_layer, modules=modules,
            exclude=exclude, groups=groups, rounding=rounding,
        )

    def arguments(self) -> dict[str, Any]:
        out = super().arguments()
        if not self.linear:  # the default is left out (checkpoints written before it existed compare equal)
            out["linear"] = False
        return out

    def attach_model(self, trainer: Trainer | None, model: nn.Module, stage: str | None) -> None:
        self._context, self._spaces_cache = (trainer, stage), None
        try:
            super().attach_model(trainer, model, stage)
        finally:
            self._context, self._spaces_cache = (None, None), None

    def _spaces(self, model: nn.Module) -> list[ChannelSpace]:
        """fx's spaces when fx traces the model and resolves every space but the output layer's; else the
        recording of the real forward on an example (fx's, when no example is available)."""
        if self._spaces_cache is not None and self._spaces_cache[0] == id(model):
            return self._spaces_cache[1]
        fx_spaces, fx_error = None, None
        try:
            fx_spaces = trace_channel_spaces(model)
        except TracingError as err:
            fx_error = err
        spaces = fx_spaces
        if fx_spaces is None or any(not _only_output(sp) for sp in fx_spaces if self._kind_ok(sp)):
            found = example_run(model, self.example_input, *self._context)
            if found is None and fx_spaces is None:
                raise ValueError(
                    f"ChannelPruning: needs torch.fx to trace {type(model).__name__} or an example input to record "
                    f"its real forward, and has neither ({fx_error}). Pass `example_input=` (a batch of the model's "
                    f"input), set `example_input_array` on the model, or run it under `Trainer.fit` with a train "
                    f"dataloader (its first batch goes through `training_step`)."
                )
            if found is not None:
                run, what = found
                try:
                    spaces = record_channel_spaces(model, run)
                except Exception as err:  # the user's code failed on the example
                    raise ValueError(
                        f"ChannelPruning: recording the forward of {type(model).__name__} on {what} failed: "
                        f"{type(err).__name__}: {err}. Pass `example_input=` with an input the model accepts."
                    ) from err
        assert spaces is not None
        self._spaces_cache = (id(model), spaces)
        return spaces

    def _kind_ok(self, sp: ChannelSpace) -> bool:
        kinds = {isinstance(m, nn.Linear) for m in sp.producers.values()}
        return bool(sp.producers) and (kinds == {False} or (self.linear and kinds == {True}))

    def find_groups(self, model: nn.Module, group: PruneGroup) -> list[UnitGroup]:
        spaces = self._spaces(model)
        conv_spaces = [sp for sp in spaces if self._kind_ok(sp)]
        names = {id(m): n for n, m in model.named_modules()}
        # a space is left out when any of its producers matches an `exclude` regex
        kept = set(filter_names([n for sp in conv_spaces for n in sp.producers], None, group.exclude, owner="ChannelPruning"))
        allowed = [sp for sp in conv_spaces if all(n in kept for n in sp.producers)]
        if group.modules is None:
            default = [sp for sp in conv_spaces if sp.ok and sp.consumers and _units(sp) > 1]
            if not default:
                problems = "; ".join(p for sp in conv_spaces for p in sp.problems[:1])
                raise ValueError(
                    f"ChannelPruning: no Conv2d of {type(model).__name__} can be channel-pruned safely"
                    + (f" ({problems})" if problems else "") + "."
                )
            chosen = [sp for sp in default if any(sp is a for a in allowed)]
        else:
            types = (nn.Conv2d, nn.Linear) if self.linear else (nn.Conv2d,)
            cands = [n for n, m in model.named_modules() if isinstance(m, types) and n]
            named = set(filter_names(cands, group.modules, None, owner="ChannelPruning", what="Conv2d" + ("/Linear" if self.linear else "")))
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
        first = sorted(sp.producers)[0]
        name = first if len(sp.producers) == 1 else f"{first}+{len(sp.producers) - 1}"
        if isinstance(sp, TracedSpace):  # the recording's exact slices (offsets, widths, periods)
            u = sp.period
            members = [
                Member(s.name, s.module, s.role, s.params, s.dim, width=s.width, tiles=s.length // (u * s.width),
                       offset=s.offset, partial=True)
                for s in sp.slots
            ]
            return UnitGroup(name=name, kind=self.mask_kind, num_units=u, members=members, holder=sp.producers[first], unit="channel")
        members = []
        for n, m in sp.producers.items():
            members.append(Member(n, m, "out", ("weight", "bias") if m.bias is not None else ("weight",), 0))
        for n, m in sp.norms.items():
            params = tuple(p for p in ("weight", "bias") if getattr(m, p, None) is not None)
            members.append(Member(n, m, "out", params + tuple(b for b in ("running_mean", "running_var") if getattr(m, b, None) is not None), 0))
        for n, m in sp.consumers.items():
            members.append(Member(n, m, "in", ("weight",), 1))
        return UnitGroup(name=name, kind=self.mask_kind, num_units=sp.size, members=members, holder=sp.producers[first], unit="channel")


def _only_output(sp: ChannelSpace) -> bool:
    """fx resolved the space, or its only problem is reaching the model output (the classifier)."""
    return all(p.endswith("reach the model output") for p in sp.problems)


def _units(sp: ChannelSpace) -> int:
    return sp.period if isinstance(sp, TracedSpace) else sp.size
