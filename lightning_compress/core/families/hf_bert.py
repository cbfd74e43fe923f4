"""Hugging Face BERT-family encoders (BERT, RoBERTa, ELECTRA, ... in transformers 5.x).

What is known, by module structure (no transformers import):

* **Attention**: a self-attention module with Linear ``query`` / ``key`` / ``value`` and int
  ``num_attention_heads`` / ``attention_head_size``, that is its parent's ``self`` and whose parent has
  Linear ``output.dense`` (the output projection).  The forward reshapes with ``-1`` heads, so sliced
  projections run; after removal ``num_attention_heads`` / ``all_head_size`` are set, and the config
  records, per layer (``layer_idx``, else the module name), ``pruned_heads`` (original head indices
  gone, as transformers' old ``prune_heads`` did) and ``num_attention_heads_per_layer``.
* **Feed-forward** (for ``RowPruning`` when ``torch.fx`` cannot trace the model, which is the case for
  every Hugging Face model): a module with children ``intermediate.dense`` and ``output.dense``; the
  former's outputs are read only by the latter (through the activation), so they form one space.
  After removal ``config.intermediate_size_per_layer`` and, when all layers agree,
  ``config.intermediate_size`` (see :mod:`._hf_common`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from lightning_compress.core.families._hf_common import layer_key, model_config, record_layers
from lightning_compress.core.families.base import AttentionInfo, Family, Projection
from lightning_compress.core.families.registry import register_family
from lightning_compress.core.graph import ChannelSpace


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _prefix(name: str) -> str:
    return f"{name}." if name else ""


@register_family
class HFBert(Family):
    name = "hf_bert"
    description = "Hugging Face BERT-family: query/key/value self-attention + output.dense; intermediate.dense -> output.dense FFN"
    heuristic = "hf_heuristic"

    def attention(self, name: str, module: nn.Module, named: Mapping[str, nn.Module]) -> AttentionInfo | None:
        if not all(isinstance(getattr(module, a, None), nn.Linear) for a in ("query", "key", "value")):
            return None
        heads, size = getattr(module, "num_attention_heads", None), getattr(module, "attention_head_size", None)
        if not isinstance(heads, int) or not isinstance(size, int):
            return None
        parent_name = _parent(name)
        parent = named.get(parent_name)
        out = getattr(getattr(parent, "output", None), "dense", None)
        if not isinstance(out, nn.Linear) or getattr(parent, "self", None) is not module:
            return None
        layer = getattr(module, "layer_idx", None)
        return AttentionInfo(
            family=self, name=name, module=module, num_heads=heads, head_size=size,
            inputs=[Projection.linear(f"{name}.{a}", getattr(module, a)) for a in ("query", "key", "value")],
            output=Projection.linear(f"{_prefix(parent_name)}output.dense", out, with_bias=False),
            layer_index=layer if isinstance(layer, int) and not isinstance(layer, bool) else None,
        )

    def update_after_head_removal(self, info: AttentionInfo, keep: Sequence[bool]) -> None:
        attn = info.module
        kept = sum(bool(k) for k in keep)
        attn.num_attention_heads = kept
        attn.all_head_size = kept * attn.attention_head_size
        pruned_now = [i for i, k in enumerate(keep) if not k]
        config = getattr(attn, "config", None)
        if config is None or not pruned_now:
            return
        key = info.layer_index if info.layer_index is not None else info.name
        ph = dict(getattr(config, "pruned_heads", None) or {})
        ph[key] = sorted(set(ph.get(key, [])) | set(pruned_now))
        config.pruned_heads = ph
        per = dict(getattr(config, "num_attention_heads_per_layer", None) or {})
        per[key] = kept
        config.num_attention_heads_per_layer = per

    def channel_spaces(self, model: nn.Module, named: Mapping[str, nn.Module]) -> list[ChannelSpace]:
        out = []
        for name, (a, b) in _ffn_blocks(named):
            p = _prefix(name)
            out.append(ChannelSpace(producers={f"{p}intermediate.dense": a}, consumers={f"{p}output.dense": b}))
        return out

    def after_unit_removal(self, model: nn.Module) -> None:
        widths = {layer_key(name): a.out_features for name, (a, _) in _ffn_blocks(dict(model.named_modules()))}
        config = model_config(model)
        if widths and hasattr(config, "intermediate_size"):
            record_layers(config, "intermediate_size", widths)


def _ffn_blocks(named: Mapping[str, nn.Module]) -> list[tuple[str, tuple[nn.Linear, nn.Linear]]]:
    """``(layer name, (intermediate.dense, output.dense))`` of every BERT-style feed-forward block."""
    out = []
    for name, module in named.items():
        a = getattr(getattr(module, "intermediate", None), "dense", None)
        b = getattr(getattr(module, "output", None), "dense", None)
        if isinstance(a, nn.Linear) and isinstance(b, nn.Linear) and a.out_features == b.in_features:
            out.append((name, (a, b)))
    return out
