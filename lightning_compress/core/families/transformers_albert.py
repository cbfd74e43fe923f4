"""Hugging Face ALBERT (transformers 5.x): one layer's weights shared across depth.

ALBERT runs the same ``AlbertLayer`` module ``num_hidden_layers`` times, so each shared module appears
once in ``named_modules`` and gets one mask: the heads / rows pruned are pruned at every depth it runs.

* **Attention**: ``AlbertAttention``-shaped modules: Linear ``query`` / ``key`` / ``value`` / ``dense``
  (the output projection is a child of the attention itself) and int ``num_attention_heads`` /
  ``attention_head_size``.  After removal ``num_attention_heads`` / ``all_head_size``, and
  ``config.num_attention_heads_per_layer`` (ALBERT derives the head size as ``hidden_size //
  num_attention_heads``, so the global field cannot express fewer heads and stays).
* **Feed-forward**: a module with Linear ``ffn -> ffn_output``; after removal
  ``config.intermediate_size``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from lightning_compress.core.families._hf_common import int_attr, join, layer_key, linears, model_config, record_layers
from lightning_compress.core.families.base import AttentionInfo, Family, Projection
from lightning_compress.core.families.registry import register_family
from lightning_compress.core.graph import ChannelSpace


def _ffn(module: nn.Module) -> list[nn.Linear] | None:
    lin = linears(module, "ffn", "ffn_output")
    return lin if lin is not None and lin[0].out_features == lin[1].in_features else None


@register_family
class HFAlbert(Family):
    name = "hf_albert"
    description = "Hugging Face ALBERT: query/key/value/dense attention (shared layers: one mask each); ffn -> ffn_output"
    heuristic = "hf_heuristic"

    def attention(self, name: str, module: nn.Module, named: Mapping[str, nn.Module]) -> AttentionInfo | None:
        lin = linears(module, "query", "key", "value", "dense")
        heads, size = int_attr(module, "num_attention_heads"), int_attr(module, "attention_head_size")
        if lin is None or heads is None or size is None or lin[0].out_features != heads * size:
            return None
        return AttentionInfo(
            family=self, name=name, module=module, num_heads=heads, head_size=size,
            inputs=[Projection.linear(join(name, a), m) for a, m in zip(("query", "key", "value"), lin)],
            output=Projection.linear(join(name, "dense"), lin[3], with_bias=False),
        )

    def update_after_head_removal(self, info: AttentionInfo, keep: Sequence[bool]) -> None:
        attn = info.module
        attn.num_attention_heads = sum(bool(k) for k in keep)
        attn.all_head_size = attn.num_attention_heads * attn.attention_head_size

    def after_unit_removal(self, model: nn.Module) -> None:
        config = model_config(model)
        if config is None or getattr(config, "model_type", None) != "albert":
            return
        named = dict(model.named_modules())
        heads = {layer_key(n): i.num_heads for n, m in named.items() if (i := self.attention(n, m, named)) is not None}
        record_layers(config, "num_attention_heads", heads, set_global=False)  # head size = hidden // heads
        record_layers(config, "intermediate_size",
                      {layer_key(n): lin[0].out_features for n, m in named.items() if (lin := _ffn(m)) is not None})

    def channel_spaces(self, model: nn.Module, named: Mapping[str, nn.Module]) -> list[ChannelSpace]:
        return [
            ChannelSpace(producers={join(n, "ffn"): lin[0]}, consumers={join(n, "ffn_output"): lin[1]})
            for n, m in named.items() if (lin := _ffn(m)) is not None
        ]
