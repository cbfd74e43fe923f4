"""``HeadPruning``: remove whole attention heads (every attention a model family understands)."""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_compress.callbacks._pruning import PruneGroup
from lightning_compress.callbacks._structured import StructuredPruning
from lightning_compress.core.criteria import Criterion
from lightning_compress.core.families import describe, find_attentions
from lightning_compress.core.select import filter_names
from lightning_compress.core.surgery import UnitGroup, attention_group
from lightning_compress.core.types import Rounding, ScheduleName, Scope, StructuredMethodName


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
    * DistilBERT, ALBERT (one mask per shared layer), DeBERTa-v2, Llama / Qwen2 / Mistral
      (grouped-query attention: a unit is one key/value head with its query heads), HF ViT: removed
      by ``clean``; T5 and torchvision Swin: masked, kept (see :mod:`lightning_compress.core.families`).

    Args:
        sparsity: fraction of heads removed at ``end_step`` (per attention with ``scope="local"``).
        method: ``"l1"`` (mean ``|W|`` of the head's q/k/v rows) or ``"topk"`` (movement scores).
        schedule, start_step, end_step, frequency, scope, max_sparsity_per_layer, exclude, groups:
            as :class:`~lightning_compress.SparsePruning`.
        rounding: ``"nearest"`` (default) or ``"floor"``: a layer's pruned heads are
            ``round(sparsity * n)`` or ``floor(sparsity * n)`` (then ``ceil((1 - sparsity) * n)`` stay,
            DeepSpeed's count; the DeepSpeed importer sets it).
        modules: regexes of attention module names (``...attention.self`` or the
            ``MultiheadAttention``); default: every attention it understands.

    Raises:
        ValueError: at ``setup`` when the model has no attention it understands, when a ``modules`` regex
            matches none, or when ``sparsity`` would remove every head of a layer.

    Example (``model``, ``datamodule``: yours; ``x``: a batch of its input)::

        import torch
        from lightning.pytorch import Trainer
        from lightning_compress import HeadPruning, RedundancyClean

        callbacks = [HeadPruning(sparsity=0.5), RedundancyClean("slim")]
        Trainer(max_steps=1000, callbacks=callbacks).fit(model, datamodule)
        slim = torch.export.load("slim/model.pt2").module()  # runs without your model's code
        y = slim(x)  # exported in eval mode: call it as it is (it has no working .eval())
    """

    mask_kind = "head_mask"
    unit_word = "head"
    target_types = (nn.Module,)

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
        found = find_attentions(model)  # asks the model families (lightning_compress.core.families)
        if not found:
            raise ValueError(
                f"HeadPruning: {type(model).__name__} has no attention HeadPruning understands (model families "
                f"that know attentions: {describe('attention')}). Remove HeadPruning, use RowPruning on the "
                f"projections, or register a model family for it (lightning_compress.core.families)."
            )
        names = filter_names(list(found), group.modules, group.exclude, owner="HeadPruning", what="attention")
        out = []
        for n in names:
            info = found[n]
            if info.num_heads < 2:
                raise ValueError(
                    f"HeadPruning: attention {n!r} has {info.num_heads} head; at least 1 must stay, so nothing can "
                    f"be pruned. Exclude it."
                )
            out.append(attention_group(info, self.mask_kind))
        return out
