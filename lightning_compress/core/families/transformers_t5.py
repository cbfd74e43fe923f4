"""Hugging Face T5 encoder / decoder blocks (transformers 5.x).

* **Attention**: a ``T5Attention``-shaped module: Linear ``q`` / ``k`` / ``v`` / ``o`` and int
  ``n_heads`` / ``key_value_proj_dim``.  Heads are masked (q/k/v rows, ``o`` columns: a masked head
  contributes nothing) but **not removed**: T5 computes one relative position bias
  ``[1, n_heads, q, k]`` in the stack's first layer and adds it in every layer, so each layer must
  keep all head positions; ``clean`` bakes the zeros and says so in its notes.
* **Feed-forward**: ``T5DenseActDense`` ``wi -> wo`` and ``T5DenseGatedActDense`` ``wi_0``, ``wi_1`` ->
  ``wo`` (gated: ``wo(act(wi_0(x)) * wi_1(x))``, one row mask for both producers).  After removal
  ``config.d_ff`` per layer / globally.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from lightning_compress.core.families._hf_common import (
    int_attr, join, layer_key, linears, model_config, modules_of_class, record_layers,
)
from lightning_compress.core.families.base import AttentionInfo, Family, Projection
from lightning_compress.core.families.registry import register_family
from lightning_compress.core.graph import ChannelSpace

_DENSE = ("T5DenseActDense",)
_GATED = ("T5DenseGatedActDense",)


@register_family
class HFT5(Family):
    name = "hf_t5"
    description = "Hugging Face T5: q/k/v/o attention (heads masked, kept); wi -> wo and wi_0 + wi_1 -> wo FFN"
    heuristic = "hf_heuristic"

    def attention(self, name: str, module: nn.Module, named: Mapping[str, nn.Module]) -> AttentionInfo | None:
        lin = linears(module, "q", "k", "v", "o")
        heads, size = int_attr(module, "n_heads"), int_attr(module, "key_value_proj_dim")
        if lin is None or heads is None or size is None or lin[0].out_features != heads * size:
            return None
        return AttentionInfo(
            family=self, name=name, module=module, num_heads=heads, head_size=size,
            inputs=[Projection.linear(join(name, a), m) for a, m in zip("qkv", lin)],
            output=Projection.linear(join(name, "o"), lin[3], with_bias=False),
            removable=False,
            kept_reason=("T5 adds one relative position bias over all heads, computed in the first layer, in every "
                         "layer, so each layer keeps every head position"),
        )

    def after_unit_removal(self, model: nn.Module) -> None:
        config = model_config(model)
        if config is None or not hasattr(config, "d_ff"):
            return
        named = dict(model.named_modules())
        widths = {layer_key(n): m.wi.out_features for n, m in modules_of_class(named, _DENSE) if linears(m, "wi", "wo")}
        widths.update({layer_key(n): m.wi_0.out_features for n, m in modules_of_class(named, _GATED)
                       if linears(m, "wi_0", "wi_1", "wo")})
        record_layers(config, "d_ff", widths)

    def channel_spaces(self, model: nn.Module, named: Mapping[str, nn.Module]) -> list[ChannelSpace]:
        out = []
        for n, m in modules_of_class(named, _DENSE):
            lin = linears(m, "wi", "wo")
            if lin is not None and lin[0].out_features == lin[1].in_features:
                out.append(ChannelSpace(producers={join(n, "wi"): lin[0]}, consumers={join(n, "wo"): lin[1]}))
        for n, m in modules_of_class(named, _GATED):
            lin = linears(m, "wi_0", "wi_1", "wo")
            if lin is not None and lin[0].out_features == lin[1].out_features == lin[2].in_features:
                out.append(ChannelSpace(producers={join(n, "wi_0"): lin[0], join(n, "wi_1"): lin[1]},
                                        consumers={join(n, "wo"): lin[2]}))
        return out
