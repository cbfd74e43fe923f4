"""``torch.nn.MultiheadAttention`` with a packed ``in_proj_weight`` (rows ``[q | k | v]``, ``embed_dim`` each).

The mask zeroes a head's q/k/v rows and biases; a zero value row makes the head's output zero, so
``out_proj`` needs no mask in forward (``F.multi_head_attention_forward`` reads ``out_proj.weight``
directly; other methods' transforms on it still act, see :mod:`lightning_compress.core.direct_reads`).
``clean`` removes the heads: ``in_proj`` rows and ``out_proj`` columns are sliced and the module
becomes a :class:`~lightning_compress.core.narrow_mha.NarrowMultiheadAttention` in place (an
``nn.MultiheadAttention`` whose projection width is ``num_heads * head_dim``, same forward).  Modules
it cannot narrow (``add_bias_kv``, ``add_zero_attn``) keep their width: the zeros are baked in.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from lightning_compress.core.families.base import AttentionInfo, Family, Projection
from lightning_compress.core.families.registry import register_family
from lightning_compress.core.narrow_mha import narrow_in_place, narrowable


@register_family
class TorchMHA(Family):
    name = "torch_mha"
    description = "torch.nn.MultiheadAttention with a packed in_proj_weight"

    def attention(self, name: str, module: nn.Module, named: Mapping[str, nn.Module]) -> AttentionInfo | None:
        if not isinstance(module, nn.MultiheadAttention) or module.in_proj_weight is None:
            return None
        params = ("in_proj_weight", "in_proj_bias") if module.in_proj_bias is not None else ("in_proj_weight",)
        why = narrowable(module)
        return AttentionInfo(
            family=self, name=name, module=module, num_heads=int(module.num_heads), head_size=int(module.head_dim),
            inputs=[Projection(name, module, params, tiles=3)],
            output=Projection(f"{name}.out_proj" if name else "out_proj", module.out_proj, ("weight",)),
            mask_output=False, removable=not why,
            kept_reason=f"this nn.MultiheadAttention has {why}, which NarrowMultiheadAttention does not support" if why else "",
        )

    def update_after_head_removal(self, info: AttentionInfo, keep) -> None:  # noqa: ANN001
        if any(not k for k in keep):
            narrow_in_place(info.module, keep)
