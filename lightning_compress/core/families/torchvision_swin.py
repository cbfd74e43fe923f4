"""torchvision Swin Transformer (v1 and v2) window attention: ``ShiftedWindowAttention(V2)``.

A module with a packed Linear ``qkv`` (rows ``[q heads | k heads | v heads]``, ``dim`` each), a Linear
``proj`` and int ``num_heads``.  Its forward hands ``qkv.weight`` / ``proj.weight`` to
``shifted_window_attention`` directly; the masks still act because the attention substitutes its
children's effective weights (:mod:`lightning_compress.core.direct_reads`).  Heads are masked (the
head's q/k/v rows and biases, ``proj`` columns: a masked head contributes nothing; its relative
position bias and, in v2, its logit scale then act on zeros) but **not removed**:
``shifted_window_attention`` derives the head size as ``input channels // num_heads``, so a narrower
``qkv`` would be split wrongly.  ``clean`` bakes the zeros and says so in its notes.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from lightning_compress.core.families._hf_common import int_attr, join, linears
from lightning_compress.core.families.base import AttentionInfo, Family, Projection
from lightning_compress.core.families.registry import register_family
from lightning_compress.core.masking import original_class

_CLASSES = ("ShiftedWindowAttention", "ShiftedWindowAttentionV2")


@register_family
class TorchvisionSwin(Family):
    name = "torchvision_swin"
    description = "torchvision Swin ShiftedWindowAttention(V2): packed qkv + proj (heads masked, kept)"

    def attention(self, name: str, module: nn.Module, named: Mapping[str, nn.Module]) -> AttentionInfo | None:
        if original_class(module).__name__ not in _CLASSES:
            return None
        lin = linears(module, "qkv", "proj")
        heads = int_attr(module, "num_heads")
        if lin is None or heads is None or heads < 1:
            return None
        qkv, proj = lin
        dim = proj.in_features
        if qkv.out_features != 3 * dim or dim % heads:
            return None
        params = ("weight", "bias") if qkv.bias is not None else ("weight",)
        return AttentionInfo(
            family=self, name=name, module=module, num_heads=heads, head_size=dim // heads,
            inputs=[Projection(join(name, "qkv"), qkv, params, tiles=3)],
            output=Projection(join(name, "proj"), proj, ("weight",)),
            removable=False,
            kept_reason="torchvision's shifted_window_attention derives the head size as channels // num_heads",
        )
