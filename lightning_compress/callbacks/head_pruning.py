"""``HeadPruning``: remove whole attention heads (Hugging Face BERT-family and nn.MultiheadAttention)."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from lightning_compress.callbacks._pruning import PruneGroup
from lightning_compress.callbacks._structured import StructuredPruning
from lightning_compress.core.criteria import Criterion
from lightning_compress.core.surgery import Member, UnitGroup
from lightning_compress.core.types import ScheduleName, Scope, StructuredMethodName


def find_attentions(model: nn.Module) -> dict[str, tuple[str, nn.Module, Any]]:
    """``{name: (kind, module, output projection)}`` for every attention HeadPruning understands.

    * ``"hf"``: a module with Linear ``query``, ``key``, ``value`` and int ``num_attention_heads`` /
      ``attention_head_size`` (BERT, RoBERTa, ELECTRA, ... self-attention), whose parent has
      ``output.dense`` (the output projection).
    * ``"mha"``: ``torch.nn.MultiheadAttention`` with a packed ``in_proj_weight``.
    """
    named = dict(model.named_modules())
    found: dict[str, tuple[str, nn.Module, Any]] = {}
    for name, m in named.items():
        if isinstance(m, nn.MultiheadAttention):
            if m.in_proj_weight is not None:
                found[name] = ("mha", m, m.out_proj)
            continue
        if all(isinstance(getattr(m, a, None), nn.Linear) for a in ("query", "key", "value")) and isinstance(
            getattr(m, "num_attention_heads", None), int
        ) and isinstance(getattr(m, "attention_head_size", None), int):
            parent = named.get(name.rsplit(".", 1)[0] if "." in name else "")
            out = getattr(getattr(parent, "output", None), "dense", None)
            if isinstance(out, nn.Linear) and getattr(parent, "self", None) is m:
                found[name] = ("hf", m, out)
    return found


class HeadPruning(StructuredPruning):
    """Prune whole attention heads; at least one head stays in every attention.

    Understood attentions (number of heads and head size are read from the model):

    * Hugging Face BERT-family self-attention (``query``/``key``/``value`` + the parent's
      ``output.dense``): the mask zeroes the head's q/k/v rows and biases and the output projection's
      columns; :func:`lightning_compress.clean` removes them and fixes ``num_attention_heads``,
      ``all_head_size`` and ``config.pruned_heads`` (``{layer index: [original head indices]}``) and
      ``config.num_attention_heads_per_layer``.
    * ``torch.nn.MultiheadAttention`` (packed ``in_proj``): the head's q/k/v rows and biases are
      masked (a zero value row makes the head contribute nothing).  An ``nn.MultiheadAttention``
      cannot be narrowed and stay one (its projection width is ``embed_dim``), so ``clean`` bakes the
      zeros (``out_proj`` columns too) but removes nothing; the report says so.

    Args:
        sparsity: fraction of heads removed at ``end_step`` (per attention with ``scope="local"``).
        method: ``"l1"`` (mean ``|W|`` of the head's q/k/v rows) or ``"topk"`` (movement scores).
        schedule, start_step, end_step, frequency, scope, max_sparsity_per_layer, exclude, groups:
            as :class:`~lightning_compress.SparsePruning`.
        modules: regexes of attention module names (``...attention.self`` or the
            ``MultiheadAttention``); default: every attention it understands.

    Raises:
        ValueError: at ``setup`` when the model has no attention it understands, when a ``modules`` regex
            matches none, or when ``sparsity`` would remove every head of a layer.

    Example::

        Trainer(callbacks=[HeadPruning(sparsity=0.5), RowPruning(sparsity=0.5), RedundancyClean("slim/")])
    """

    mask_kind = "head_mask"
    unit_word = "head"
    target_types = (nn.Module,)

    def __init__(
        self,
        sparsity: float | None = 0.5,
        method: StructuredMethodName | Criterion = "l1",
        schedule: ScheduleName = "exp",
        start_step: int = 0,
        end_step: int | None = None,
        frequency: int = 1,
        scope: Scope = "local",
        max_sparsity_per_layer: float = 0.98,
        modules: list[str] | None = None,
        exclude: list[str] | None = None,
        groups: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(
            sparsity=sparsity, method=method, schedule=schedule, start_step=start_step, end_step=end_step,
            frequency=frequency, scope=scope, max_sparsity_per_layer=max_sparsity_per_layer, modules=modules,
            exclude=exclude, groups=groups,
        )

    def find_groups(self, model: nn.Module, group: PruneGroup) -> list[UnitGroup]:
        found = find_attentions(model)
        if not found:
            raise ValueError(
                f"HeadPruning: {type(model).__name__} has no attention HeadPruning understands (Hugging Face "
                f"BERT-family self-attention with query/key/value + output.dense, or torch.nn.MultiheadAttention "
                f"with a packed in_proj_weight). Remove HeadPruning or use RowPruning on the projections."
            )
        names = list(found)
        if group.modules is not None:
            rxs = [re.compile(r) for r in group.modules]
            for rx in rxs:
                if not any(rx.search(n) for n in names):
                    raise ValueError(f"HeadPruning: `modules` regex {rx.pattern!r} matches no attention; attentions: {names[:6]}.")
            names = [n for n in names if any(rx.search(n) for rx in rxs)]
        if group.exclude:
            exc = [re.compile(r) for r in group.exclude]
            names = [n for n in names if not any(rx.search(n) for rx in exc)]
        all_names = {id(m): n for n, m in model.named_modules()}
        out = []
        for n in names:
            kind, m, proj = found[n]
            if kind == "hf":
                heads, d = int(m.num_attention_heads), int(m.attention_head_size)
                members = [
                    Member(f"{n}.{a}", getattr(m, a), "out", ("weight", "bias") if getattr(m, a).bias is not None else ("weight",), 0, width=d)
                    for a in ("query", "key", "value")
                ]
                members.append(Member(all_names[id(proj)], proj, "in", ("weight",), 1, width=d))
                out.append(UnitGroup(
                    name=n, kind=self.mask_kind, num_units=heads, members=members, holder=m, unit="head",
                    attention=m, attention_kind="hf", extra={"layer_index": getattr(m, "layer_idx", None)},
                ))
            else:
                heads, d = int(m.num_heads), int(m.head_dim)
                params = ("in_proj_weight", "in_proj_bias") if m.in_proj_bias is not None else ("in_proj_weight",)
                members = [
                    Member(n, m, "out", params, 0, width=d, tiles=3),
                    Member(f"{n}.out_proj", proj, "in", ("weight",), 1, width=d, masked=False),
                ]
                out.append(UnitGroup(
                    name=n, kind=self.mask_kind, num_units=heads, members=members, holder=m, unit="head",
                    attention=m, attention_kind="mha", removable=False,
                ))
            if heads < 2:
                raise ValueError(f"HeadPruning: attention {n!r} has {heads} head; at least 1 must stay, so nothing can be pruned. Exclude it.")
        return out
