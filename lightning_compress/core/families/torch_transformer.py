"""``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer``: the feed-forward block.

``torch.fx`` keeps these layers as leaves (they are ``torch.nn`` modules), so tracing never sees
inside them; this family names their feed-forward block: ``linear2(dropout(activation(linear1(x))))``,
``linear1``'s outputs read only by ``linear2``.  A narrower ``linear1`` / ``linear2`` runs on both the
regular and the fast path (``torch._transformer_encoder_layer_fwd`` takes the weights as they are).
The attention inside is an ``nn.MultiheadAttention`` (:mod:`.torch_mha`: heads masked, kept).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from lightning_compress.core.families._hf_common import join, linears
from lightning_compress.core.families.base import Family
from lightning_compress.core.families.registry import register_family
from lightning_compress.core.graph import ChannelSpace


@register_family
class TorchTransformerLayer(Family):
    name = "torch_transformer"
    description = "torch.nn.TransformerEncoderLayer / TransformerDecoderLayer: linear1 -> linear2"
    heuristic = "torch_transformer"

    def channel_spaces(self, model: nn.Module, named: Mapping[str, nn.Module]) -> list[ChannelSpace]:
        out = []
        for name, module in named.items():
            if not isinstance(module, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
                continue
            lin = linears(module, "linear1", "linear2")
            if lin is not None and lin[0].out_features == lin[1].in_features:
                out.append(ChannelSpace(producers={join(name, "linear1"): lin[0]}, consumers={join(name, "linear2"): lin[1]}))
        return out
