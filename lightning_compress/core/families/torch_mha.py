"""``torch.nn.MultiheadAttention`` with a packed ``in_proj_weight`` (rows ``[q | k | v]``, ``embed_dim`` each).

Its heads are masked but never removed: the projection width is tied to ``embed_dim``
(``head_dim = embed_dim // num_heads``; ``kdim`` / ``vdim`` are input sizes, not projection sizes), so
a narrower one is no longer an ``nn.MultiheadAttention``.  The mask zeroes a head's q/k/v rows and
biases; a zero value row makes the head's output zero, so ``out_proj`` needs no mask in forward
(``F.multi_head_attention_forward`` reads ``out_proj.weight`` directly; other methods' transforms on it
still act, see :mod:`lightning_compress.core.direct_reads`); ``clean`` bakes the zeros into the
``out_proj`` columns too.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from lightning_compress.core.families.base import AttentionInfo, Family, Projection
from lightning_compress.core.families.registry import register_family


@register_family
class TorchMHA(Family):
    name = "torch_mha"
    description = "torch.nn.MultiheadAttention with a packed in_proj_weight"

    def attention(self, name: str, module: nn.Module, named: Mapping[str, nn.Module]) -> AttentionInfo | None:
        if not isinstance(module, nn.MultiheadAttention) or module.in_proj_weight is None:
            return None
        params = ("in_proj_weight", "in_proj_bias") if module.in_proj_bias is not None else ("in_proj_weight",)
        return AttentionInfo(
            family=self, name=name, module=module, num_heads=int(module.num_heads), head_size=int(module.head_dim),
            inputs=[Projection(name, module, params, tiles=3)],
            output=Projection(f"{name}.out_proj" if name else "out_proj", module.out_proj, ("weight",)),
            mask_output=False, removable=False,
            kept_reason="nn.MultiheadAttention cannot be narrowed and remain nn.MultiheadAttention (projection width is embed_dim)",
        )
