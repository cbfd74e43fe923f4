"""Hugging Face GPT-2 (transformers 5.x): ``Conv1D`` projections, fused q/k/v ``c_attn``.

``Conv1D(nf, nx)`` stores its weight ``[in, out]`` = ``[nx, nf]``; unit groups name its *logical*
dims (0 = outputs, 1 = inputs) and :func:`lightning_compress.core.surgery.physical_dim` masks and
slices the stored weight along the other one (the bias along its only dim).

* **Attention**: ``GPT2Attention``-shaped self-attention: ``Conv1D`` children ``c_attn`` (outputs
  ``[q heads | k heads | v heads]``, ``split_size`` each) and ``c_proj``, int ``num_heads`` /
  ``head_dim`` / ``split_size`` with ``split_size == num_heads * head_dim``, no ``q_attn`` (cross
  attention is not recognised).  The forward splits ``c_attn``'s output by ``split_size`` and reshapes
  with ``-1`` heads, so after removal ``num_heads`` and ``split_size`` are set and the slim module runs.
  The config keeps ``n_head`` (GPT-2 derives the head size as ``n_embd // n_head``, so a config cannot
  express fewer heads) and records ``n_head_per_layer`` (layer = ``layer_idx``).
* **Feed-forward**: ``GPT2MLP``-shaped modules: ``Conv1D`` ``c_fc -> c_proj`` through the activation.
  After removal ``config.n_inner`` per layer (``n_inner_per_layer``) and, when all layers agree,
  ``config.n_inner`` (``GPT2Block`` builds its MLP with ``n_inner``, so that config rebuilds it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from lightning_compress.core.conv1d import is_conv1d
from lightning_compress.core.families._hf_common import int_attr, join, layer_key, model_config, record_layers
from lightning_compress.core.families.base import AttentionInfo, Family, Projection
from lightning_compress.core.families.registry import register_family
from lightning_compress.core.graph import ChannelSpace


def _conv1ds(module: nn.Module, *attrs: str) -> list[nn.Module] | None:
    out = [getattr(module, a, None) for a in attrs]
    return out if all(m is not None and is_conv1d(m) for m in out) else None  # type: ignore[return-value]


def _mlp(module: nn.Module) -> list[nn.Module] | None:
    """``[c_fc, c_proj]`` of a GPT-2 MLP (``c_fc``'s outputs are ``c_proj``'s inputs), else None."""
    lin = _conv1ds(module, "c_fc", "c_proj")
    return lin if lin is not None and lin[0].nf == lin[1].nx else None


def _params(m: nn.Module) -> tuple[str, ...]:
    return ("weight", "bias") if getattr(m, "bias", None) is not None else ("weight",)


@register_family
class HFGPT2(Family):
    name = "hf_gpt2"
    description = "Hugging Face GPT-2: Conv1D c_attn (fused q/k/v) + c_proj attention; mlp.c_fc -> mlp.c_proj"
    heuristic = "hf_heuristic"

    def attention(self, name: str, module: nn.Module, named: Mapping[str, nn.Module]) -> AttentionInfo | None:
        lin = _conv1ds(module, "c_attn", "c_proj")
        heads, hd, split = int_attr(module, "num_heads"), int_attr(module, "head_dim"), int_attr(module, "split_size")
        if lin is None or heads is None or hd is None or split is None or hasattr(module, "q_attn"):
            return None
        qkv, proj = lin
        if heads < 1 or split != heads * hd or qkv.nf != 3 * split or proj.nx != split:
            return None
        return AttentionInfo(
            family=self, name=name, module=module, num_heads=heads, head_size=hd,
            inputs=[Projection(join(name, "c_attn"), qkv, _params(qkv), tiles=3)],
            output=Projection(join(name, "c_proj"), proj, ("weight",)),
            layer_index=int_attr(module, "layer_idx"),
        )

    def update_after_head_removal(self, info: AttentionInfo, keep: Sequence[bool]) -> None:
        attn = info.module
        attn.num_heads = sum(bool(k) for k in keep)
        attn.split_size = attn.num_heads * attn.head_dim

    def after_unit_removal(self, model: nn.Module) -> None:
        config = model_config(model)
        if config is None:
            return
        named = dict(model.named_modules())
        heads = {layer_key(n, i.layer_index): i.num_heads for n, m in named.items()
                 if (i := self.attention(n, m, named)) is not None}
        if heads and hasattr(config, "n_head"):
            record_layers(config, "n_head", heads, set_global=False)  # head size is n_embd // n_head
        widths = {layer_key(n): lin[0].nf for n, m in named.items() if (lin := _mlp(m)) is not None}
        if widths and hasattr(config, "n_inner"):
            record_layers(config, "n_inner", widths)

    def channel_spaces(self, model: nn.Module, named: Mapping[str, nn.Module]) -> list[ChannelSpace]:
        return [
            ChannelSpace(producers={join(n, "c_fc"): lin[0]}, consumers={join(n, "c_proj"): lin[1]})
            for n, m in named.items() if (lin := _mlp(m)) is not None
        ]
