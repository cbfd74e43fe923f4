"""Hugging Face attentions with ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj`` and ``head_dim``:
Llama, Qwen2, Mistral (grouped-query attention), ViT (transformers 5) and others built the same way;
and their feed-forward blocks: SwiGLU ``gate_proj``, ``up_proj`` -> ``down_proj`` (any ``*MLP`` module
with those three Linear children), ViT's ``ViTMLP`` ``fc1 -> fc2``.

**Heads.** An attention with Linear ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` and int ``head_dim``
(its forward reshapes with ``-1`` heads, so sliced projections run).  Key/value heads:
``k_proj.out_features // head_dim``; query heads per key/value head ``G = q_proj.out_features //
k_proj.out_features`` (``num_key_value_groups``; 1 without GQA).  A unit is one key/value head with
its ``G`` query heads: ``head_dim`` rows of ``k_proj`` / ``v_proj``, ``G * head_dim`` rows of ``q_proj``
and the same columns of ``o_proj`` (query head ``j`` reads key/value head ``j // G``, as
``repeat_kv`` lays them out), so ``num_key_value_groups`` stays valid.  After removal: the module's
``num_attention_heads`` / ``num_heads`` / ``num_key_value_heads`` attributes where it has them, and the
config's ``num_attention_heads`` / ``num_key_value_heads`` per layer (``layer_idx``) and, when all
layers agree, globally (``head_dim`` is written into the config so ``hidden_size // num_attention_heads``
is never used to rebuild it).

**Feed-forward.** SwiGLU: ``down_proj(act(gate_proj(x)) * up_proj(x))``: ``gate_proj`` and ``up_proj``
are the producers of one space (one row mask; ``act(0) * 0 = 0``), ``down_proj`` the consumer.
``ViTMLP``: ``fc2(act(fc1(x)))``.  After removal, ``config.intermediate_size`` per layer / globally.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from lightning_compress.core.families._hf_common import (
    int_attr, join, layer_key, linears, model_config, modules_of_class, record_layers,
)
from lightning_compress.core.families.base import AttentionInfo, Family, Projection
from lightning_compress.core.families.registry import register_family
from lightning_compress.core.graph import ChannelSpace
from lightning_compress.core.masking import original_class

_FC_MLPS = ("ViTMLP",)


def _swiglu(module: nn.Module) -> list[nn.Linear] | None:
    """``[gate_proj, up_proj, down_proj]`` of a ``*MLP`` module built that way, else None."""
    lin = linears(module, "gate_proj", "up_proj", "down_proj")
    if lin is None or not original_class(module).__name__.endswith("MLP"):
        return None
    g, u, d = lin
    return lin if g.out_features == u.out_features == d.in_features else None


@register_family
class HFQKVOProj(Family):
    name = "hf_qkvo_proj"
    description = ("Hugging Face q_proj/k_proj/v_proj/o_proj attention with head_dim (Llama, Qwen2, Mistral with "
                   "grouped-query attention; ViT); SwiGLU gate_proj+up_proj -> down_proj; ViTMLP fc1 -> fc2")
    heuristic = "hf_heuristic"

    def attention(self, name: str, module: nn.Module, named: Mapping[str, nn.Module]) -> AttentionInfo | None:
        lin = linears(module, "q_proj", "k_proj", "v_proj", "o_proj")
        hd = int_attr(module, "head_dim")
        if lin is None or hd is None or hd < 1:
            return None
        q, k, v, o = lin
        if k.out_features % hd or k.out_features != v.out_features or q.out_features % k.out_features:
            return None
        kv = k.out_features // hd
        group = q.out_features // k.out_features
        if o.in_features != q.out_features:
            return None
        layer = int_attr(module, "layer_idx")
        return AttentionInfo(
            family=self, name=name, module=module, num_heads=kv, head_size=group * hd,
            inputs=[
                Projection.linear(join(name, "q_proj"), q, width=group * hd),
                Projection.linear(join(name, "k_proj"), k, width=hd),
                Projection.linear(join(name, "v_proj"), v, width=hd),
            ],
            output=Projection.linear(join(name, "o_proj"), o, with_bias=False, width=group * hd),
            layer_index=layer,
        )

    def update_after_head_removal(self, info: AttentionInfo, keep: Sequence[bool]) -> None:
        attn = info.module
        kv = sum(bool(k) for k in keep)
        group = info.head_size // int(attn.head_dim)
        for attr, value in (("num_key_value_heads", kv), ("num_heads", kv * group), ("num_attention_heads", kv * group)):
            if int_attr(attn, attr) is not None:
                setattr(attn, attr, value)

    def after_unit_removal(self, model: nn.Module) -> None:
        config = model_config(model)
        if config is None:
            return
        named = dict(model.named_modules())
        heads: dict[int | str, int] = {}
        kv_heads: dict[int | str, int] = {}
        for name, module in named.items():
            info = self.attention(name, module, named)
            if info is None:
                continue
            key = layer_key(name, info.layer_index)
            group = info.head_size // int(module.head_dim)
            heads[key], kv_heads[key] = info.num_heads * group, info.num_heads
        if heads:
            if getattr(config, "head_dim", None) is None and int_attr(config, "num_attention_heads"):
                first = next(m for n, m in named.items() if self.attention(n, m, named) is not None)
                config.head_dim = int(first.head_dim)
            record_layers(config, "num_attention_heads", heads)
            if hasattr(config, "num_key_value_heads"):
                record_layers(config, "num_key_value_heads", kv_heads)
        widths = {layer_key(n): lin[0].out_features for n, m in named.items() if (lin := _swiglu(m)) is not None}
        widths.update({layer_key(n): m.fc1.out_features for n, m in modules_of_class(named, _FC_MLPS)
                       if linears(m, "fc1", "fc2")})
        if widths and hasattr(config, "intermediate_size"):
            record_layers(config, "intermediate_size", widths)

    def channel_spaces(self, model: nn.Module, named: Mapping[str, nn.Module]) -> list[ChannelSpace]:
        out = []
        for name, module in named.items():
            lin = _swiglu(module)
            if lin is not None:
                g, u, d = lin
                out.append(ChannelSpace(producers={join(name, "gate_proj"): g, join(name, "up_proj"): u},
                                        consumers={join(name, "down_proj"): d}))
        for name, module in modules_of_class(named, _FC_MLPS):
            lin = linears(module, "fc1", "fc2")
            if lin is not None and lin[0].out_features == lin[1].in_features:
                out.append(ChannelSpace(producers={join(name, "fc1"): lin[0]}, consumers={join(name, "fc2"): lin[1]}))
        return out
