"""Hugging Face DeBERTa-v2 / v3 (transformers 5.x) disentangled attention.

* **Attention**: a ``DisentangledSelfAttention``-shaped module: Linear ``query_proj`` / ``key_proj`` /
  ``value_proj`` (and ``pos_key_proj`` / ``pos_query_proj`` when relative attention does not share the
  key projection: their rows are head-major too and go with the head), int ``num_attention_heads`` /
  ``attention_head_size``, that is its parent's ``self`` with the output projection ``output.dense``.
  The relative-position terms are computed per head from the same projections, so a removed head
  takes its share of every term with it.  After removal ``num_attention_heads`` / ``all_head_size``
  (the forward reshapes with them) and ``config.num_attention_heads_per_layer`` (the global field
  stays: DeBERTa builds ``attention.output.dense`` as ``hidden_size x hidden_size``, so a config cannot
  express fewer heads).
* **Feed-forward**: ``intermediate.dense -> output.dense`` is the BERT-family block
  (:mod:`.hf_bert` finds it and sets ``config.intermediate_size``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from lightning_compress.core.families._hf_common import (
    int_attr, join, layer_key, linears, model_config, parent_name, record_layers,
)
from lightning_compress.core.families.base import AttentionInfo, Family, Projection
from lightning_compress.core.families.registry import register_family


@register_family
class HFDebertaV2(Family):
    name = "hf_deberta_v2"
    description = "Hugging Face DeBERTa-v2: query_proj/key_proj/value_proj (+ pos_key_proj/pos_query_proj) + output.dense"

    def attention(self, name: str, module: nn.Module, named: Mapping[str, nn.Module]) -> AttentionInfo | None:
        lin = linears(module, "query_proj", "key_proj", "value_proj")
        heads, size = int_attr(module, "num_attention_heads"), int_attr(module, "attention_head_size")
        if lin is None or heads is None or size is None or lin[0].out_features != heads * size:
            return None
        parent = named.get(parent_name(name))
        out = getattr(getattr(parent, "output", None), "dense", None)
        if not isinstance(out, nn.Linear) or getattr(parent, "self", None) is not module:
            return None
        inputs = [Projection.linear(join(name, a), m) for a, m in zip(("query_proj", "key_proj", "value_proj"), lin)]
        for extra in ("pos_key_proj", "pos_query_proj"):
            m = getattr(module, extra, None)
            if isinstance(m, nn.Linear):
                inputs.append(Projection.linear(join(name, extra), m))
        return AttentionInfo(
            family=self, name=name, module=module, num_heads=heads, head_size=size, inputs=inputs,
            output=Projection.linear(join(parent_name(name), "output.dense"), out, with_bias=False),
        )

    def update_after_head_removal(self, info: AttentionInfo, keep: Sequence[bool]) -> None:
        attn = info.module
        attn.num_attention_heads = sum(bool(k) for k in keep)
        attn.all_head_size = attn.num_attention_heads * attn.attention_head_size

    def after_unit_removal(self, model: nn.Module) -> None:
        config = model_config(model)
        if config is None or getattr(config, "model_type", None) not in ("deberta-v2", "deberta_v2"):
            return
        named = dict(model.named_modules())
        heads = {layer_key(n): i.num_heads for n, m in named.items() if (i := self.attention(n, m, named)) is not None}
        record_layers(config, "num_attention_heads", heads, set_global=False)  # output.dense is hidden x hidden
