"""Hugging Face DistilBERT (transformers 5.x).

* **Attention**: ``DistilBertSelfAttention``-shaped modules: Linear ``q_lin`` / ``k_lin`` / ``v_lin`` /
  ``out_lin`` and int ``n_heads`` / ``attention_head_size`` (the forward reshapes with ``-1`` heads).
  After removal ``n_heads`` is set; the config gets ``n_heads_per_layer`` (layer = first integer in the
  module name); ``config.n_heads`` stays (DistilBERT derives the head size as ``dim // n_heads``, so a
  config cannot express fewer heads: a slim model with pruned heads is not rebuilt by ``from_config``).
* **Feed-forward**: ``FFN``-shaped modules with Linear ``lin1 -> lin2`` (through the activation);
  after removal ``config.hidden_dim`` (DistilBERT's FFN width) per layer / globally.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from lightning_compress.core.families._hf_common import int_attr, join, layer_key, linears, model_config, record_layers
from lightning_compress.core.families.base import AttentionInfo, Family, Projection
from lightning_compress.core.families.registry import register_family
from lightning_compress.core.graph import ChannelSpace


def _ffn(module: nn.Module) -> list[nn.Linear] | None:
    lin = linears(module, "lin1", "lin2")
    return lin if lin is not None and lin[0].out_features == lin[1].in_features else None


@register_family
class HFDistilBert(Family):
    name = "hf_distilbert"
    description = "Hugging Face DistilBERT: q_lin/k_lin/v_lin/out_lin attention; ffn.lin1 -> lin2"
    heuristic = "hf_heuristic"

    def attention(self, name: str, module: nn.Module, named: Mapping[str, nn.Module]) -> AttentionInfo | None:
        lin = linears(module, "q_lin", "k_lin", "v_lin", "out_lin")
        heads, size = int_attr(module, "n_heads"), int_attr(module, "attention_head_size")
        if lin is None or heads is None or size is None or lin[0].out_features != heads * size:
            return None
        return AttentionInfo(
            family=self, name=name, module=module, num_heads=heads, head_size=size,
            inputs=[Projection.linear(join(name, a), m) for a, m in zip(("q_lin", "k_lin", "v_lin"), lin)],
            output=Projection.linear(join(name, "out_lin"), lin[3], with_bias=False),
        )

    def update_after_head_removal(self, info: AttentionInfo, keep: Sequence[bool]) -> None:
        info.module.n_heads = sum(bool(k) for k in keep)

    def after_unit_removal(self, model: nn.Module) -> None:
        config = model_config(model)
        if config is None:
            return
        named = dict(model.named_modules())
        heads = {layer_key(n): i.num_heads for n, m in named.items() if (i := self.attention(n, m, named)) is not None}
        if heads and hasattr(config, "n_heads"):
            record_layers(config, "n_heads", heads, set_global=False)  # head size is dim // n_heads
        widths = {layer_key(n): lin[0].out_features for n, m in named.items() if (lin := _ffn(m)) is not None}
        if widths and hasattr(config, "hidden_dim"):
            record_layers(config, "hidden_dim", widths)

    def channel_spaces(self, model: nn.Module, named: Mapping[str, nn.Module]) -> list[ChannelSpace]:
        return [
            ChannelSpace(producers={join(n, "lin1"): lin[0]}, consumers={join(n, "lin2"): lin[1]})
            for n, m in named.items() if (lin := _ffn(m)) is not None
        ]
