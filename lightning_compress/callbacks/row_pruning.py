"""``RowPruning``: remove output rows (neurons) of Linear layers and the matching consumer columns."""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from lightning_compress.callbacks._pruning import PruneGroup
from lightning_compress.callbacks._structured import StructuredPruning
from lightning_compress.core import args
from lightning_compress.core.conv1d import is_conv1d, out_in_shape
from lightning_compress.core.criteria import Criterion
from lightning_compress.core.families import channel_spaces
from lightning_compress.core.graph import ChannelSpace
from lightning_compress.core.related import PAIRINGS, paired_spaces
from lightning_compress.core.select import filter_names
from lightning_compress.core.surgery import Member, UnitGroup
from lightning_compress.core.types import Rounding, ScheduleName, Scope, StructuredMethodName


class RowPruning(StructuredPruning):
    """Prune whole output rows of Linear layers (FFN neurons); the consumers' input columns go too.

    Which layers read a Linear's outputs is found by tracing the model (``torch.fx``; for Hugging Face
    models, which fx cannot trace, the feed-forward blocks the model families know: BERT's
    ``intermediate.dense -> output.dense``, SwiGLU ``gate_proj`` + ``up_proj -> down_proj``, ...), see
    :mod:`lightning_compress.core.graph`.  Producers whose outputs are combined elementwise (a SwiGLU
    gate and up projection) share one row mask and must be selected together.  The mask zeroes the row's weight and bias and the
    consumers' columns, so the masked model computes exactly what the slim model from
    :func:`lightning_compress.clean` computes.

    Args:
        sparsity: fraction of the rows (weighted by parameters per row) removed at ``end_step``, in [0, 1).
        method: ``"l1"`` (mean ``|W|`` of the row) or ``"topk"`` (movement scores).
        schedule, start_step, end_step, frequency, scope, max_sparsity_per_layer, exclude, groups:
            as :class:`~lightning_compress.SparsePruning` (steps are optimizer steps).
        rounding: ``"nearest"`` (default) or ``"floor"``: a layer's pruned rows are
            ``round(sparsity * n)`` or ``floor(sparsity * n)`` (then ``ceil((1 - sparsity) * n)`` stay,
            DeepSpeed's count; the DeepSpeed importer sets it).
        modules: regexes of Linear layers whose rows are pruned; default: every Linear whose outputs
            feed only other Linear layers (a transformer FFN's first projection; never the residual
            stream or the model output).
        related_modules: ``{producer regex: [consumer regexes]}`` naming the consumers by hand
            (tracing is skipped for those producers).  Producers that share a consumer share one row
            mask: ``{"gate_proj": ["down_proj"], "up_proj": ["down_proj"]}`` prunes a SwiGLU per layer
            (:mod:`lightning_compress.core.related`).
        related_pairing: ``"auto"`` (default): per layer when a key matches several producers (the
            j-th matched producer is read by the j-th module each consumer regex matches, DeepSpeed's
            ``related_modules`` rule), else every module a consumer regex matches; ``"index"`` /
            ``"all"`` force one of the two.  At ``setup``, counts that differ under per-layer pairing
            and a consumer whose input width differs from its producer's output width are refused.

    Raises:
        ValueError: at ``setup`` when a named layer's outputs go somewhere that cannot be narrowed
            (the message names the layers and the op), when tracing fails and no BERT-style block is
            found, or when ``sparsity`` would remove every row of a layer.

    Example (``model``, ``datamodule``: yours; ``x``: a batch of its input)::

        import torch
        from lightning.pytorch import Trainer
        from lightning_compress import RedundancyClean, RowPruning

        callbacks = [RowPruning(sparsity=0.5), RedundancyClean("slim")]
        Trainer(max_steps=1000, callbacks=callbacks).fit(model, datamodule)
        slim = torch.export.load("slim/model.pt2").module()  # runs without your model's code
        y = slim(x)  # exported in eval mode: call it as it is (it has no working .eval())
    """

    mask_kind = "row_mask"
    unit_word = "row"
    target_types = (nn.Linear,)

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
        related_modules: dict[str, list[str]] | None = None,
        rounding: Rounding = "nearest",
        related_pairing: Literal["auto", "all", "index"] = "auto",
    ) -> None:
        super().__init__(
            sparsity=sparsity, method=method, schedule=schedule, start_step=start_step, end_step=end_step,
            frequency=frequency, scope=scope, max_sparsity_per_layer=max_sparsity_per_layer, modules=modules,
            exclude=exclude, groups=groups, rounding=rounding,
        )
        related_modules = args.check_mapping(
            related_modules, "related_modules", "RowPruning", what="a dict {producer regex: [consumer regexes]}"
        )
        if related_modules is not None:
            if not related_modules:
                args.fail("RowPruning", "related_modules", related_modules, "is empty", "name producers and their consumers, or pass None to trace them")
            for prx, crxs in related_modules.items():
                args.compile_regex(prx, "related_modules", "RowPruning")
                related_modules[prx] = args.check_regexes(crxs, f"related_modules[{prx!r}]", "RowPruning", allow_none=False)
        args.check_choice(related_pairing, "related_pairing", "RowPruning", PAIRINGS)
        self.related_modules = related_modules
        self.related_pairing = related_pairing

    def arguments(self) -> dict[str, Any]:
        return {**super().arguments(), "related_modules": self.related_modules}

    def _spaces(self, model: nn.Module) -> list[ChannelSpace]:
        if self.related_modules:
            return paired_spaces(model, self.related_modules, "RowPruning", self.related_pairing)
        try:  # fx tracing, else what the model families know (a BERT FFN block)
            spaces, _ = channel_spaces(model)
        except ValueError as err:
            raise ValueError(f"RowPruning: {err}") from None
        return spaces

    def find_groups(self, model: nn.Module, group: PruneGroup) -> list[UnitGroup]:
        spaces = self._spaces(model)
        by_producer = {n: sp for sp in spaces for n in sp.producers}
        names = {id(m): n for n, m in model.named_modules()}

        def usable(sp: ChannelSpace) -> bool:  # several producers: one row mask (SwiGLU gate and up)
            return (
                sp.ok and bool(sp.producers) and bool(sp.consumers)
                and all(_linear(m) for m in [*sp.producers.values(), *sp.consumers.values()])
                and len({out_in_shape(m)[0] for m in sp.producers.values()}) == 1 and not sp.norms
            )

        if group.modules is None:
            default = [n for n, sp in by_producer.items() if usable(sp)]
            if not default:
                raise ValueError(
                    f"RowPruning: no Linear layer of {type(model).__name__} feeds only other Linear layers, so "
                    f"nothing can be row-pruned safely; name layers with `modules` and their consumers with `related_modules`."
                )
            chosen = filter_names(default, None, group.exclude, owner="RowPruning")
        else:
            cands = [n for n, m in model.named_modules() if _linear(m) and n]
            chosen = filter_names(cands, group.modules, group.exclude, owner="RowPruning", what="Linear layer")
            for n in chosen:
                sp = by_producer.get(n)
                if sp is None:
                    raise ValueError(f"RowPruning: tracing found no consumer of {n!r}; name them with `related_modules`.")
                if not usable(sp):
                    why = "; ".join(sp.problems) or f"its outputs are shared or read by non-Linear layers ({sp.describe()})"
                    raise ValueError(
                        f"RowPruning: cannot prune the rows of {n!r}: {why}. Leave it out (`exclude`) or name its "
                        f"consumers with `related_modules`."
                    )
        out = []
        done: set[int] = set()
        for n in chosen:
            sp = by_producer[n]
            if id(sp) in done:
                continue
            done.add(id(sp))
            left_out = sorted(set(sp.producers) - set(chosen))
            if left_out:
                raise ValueError(
                    f"RowPruning: {n!r} shares its rows with {left_out} (their outputs are combined elementwise, "
                    f"e.g. a SwiGLU gate and up projection), so they take one row mask: select all of "
                    f"{sorted(sp.producers)} or none (`modules` / `exclude`)."
                )
            members = [
                Member(pn, pm, "out", ("weight", "bias") if pm.bias is not None else ("weight",), 0)
                for pn, pm in sp.producers.items()
            ]
            for cn, cm in sp.consumers.items():
                members.append(Member(names.get(id(cm), cn), cm, "in", ("weight",), 1))
            prod = sp.producers[n]
            out.append(UnitGroup(name=n, kind=self.mask_kind, num_units=out_in_shape(prod)[0], members=members, holder=prod, unit="row"))
        return out


def _linear(m: nn.Module) -> bool:
    """A Linear layer, or a Hugging Face ``Conv1D`` (GPT-2: a Linear stored ``[in, out]``; its unit
    groups name logical dims, see :func:`lightning_compress.core.surgery.physical_dim`)."""
    return isinstance(m, nn.Linear) or is_conv1d(m)
