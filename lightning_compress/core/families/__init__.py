"""Model-family plugins: what lightning_compress knows about how kinds of models are built (pure PyTorch).

Head, row and channel pruning, ``clean``'s surgery and layer reduction never test for a model class
themselves; they ask this registry, which asks every registered :class:`~.base.Family`:

* :func:`find_attentions` ``(model) -> {name: AttentionInfo}``: every attention some family
  recognises (per module, the first family in :data:`FAMILIES` that answers wins).
  After ``clean`` sliced the heads, :func:`~lightning_compress.core.surgery.remove_units` calls
  ``info.family.update_after_head_removal(info, keep)``: the owning family fixes the module
  attributes / config (``num_attention_heads``, ``config.pruned_heads``, ...).
* :func:`family_channel_spaces` ``(model) -> (spaces, tags)``: coupled layers the families know
  without tracing (a BERT FFN's ``intermediate.dense -> output.dense``); :func:`channel_spaces` is
  ``torch.fx`` tracing (:mod:`lightning_compress.core.graph`) with these as the fallback.
* :func:`layer_count`, :func:`after_layer_reduction`, :func:`supports_attentions`: the layer-stack
  knowledge layer reduction / distillation use (``config.num_hidden_layers``, ``layer_types``,
  ``layer_idx``, attention outputs).

Built in: :mod:`.hf_bert` (BERT-family attention and FFN), :mod:`.hf_transformers` (config /
``layer_idx`` knowledge of any transformers model), :mod:`.torch_mha` (``nn.MultiheadAttention``).

**Adding a family** = one new module that subclasses :class:`~.base.Family`, overrides the methods
it knows and decorates the class with :func:`register_family`; importing it registers it (a file in this package
imports ``register_family`` from :mod:`.registry` and is imported at the bottom of this file; your own
code may simply import it from here)::

    from lightning_compress.core.families import register_family
    from lightning_compress.core.families.base import AttentionInfo, Family, Projection

    @register_family
    class MyAttentionFamily(Family):
        name = "my_attention"
        description = "MyAttention (q/k/v/o Linear layers)"

        def attention(self, name, module, named):
            if not isinstance(module, MyAttention):
                return None
            return AttentionInfo(
                family=self, name=name, module=module, num_heads=module.num_heads, head_size=module.head_dim,
                inputs=[Projection.linear(f"{name}.{a}", getattr(module, a)) for a in ("q", "k", "v")],
                output=Projection.linear(f"{name}.o", module.o, with_bias=False),
            )

        def update_after_head_removal(self, info, keep):
            info.module.num_heads = sum(keep)
"""

from lightning_compress.core.families.base import AttentionInfo, Family, Projection
from lightning_compress.core.families.registry import (
    FAMILIES,
    ChannelSpace,
    after_layer_reduction,
    channel_spaces,
    describe,
    family_channel_spaces,
    find_attentions,
    get_family,
    layer_count,
    register_family,
    supports_attentions,
    unregister_family,
)

__all__ = [
    "FAMILIES",
    "AttentionInfo",
    "ChannelSpace",
    "Family",
    "Projection",
    "after_layer_reduction",
    "channel_spaces",
    "describe",
    "family_channel_spaces",
    "find_attentions",
    "get_family",
    "layer_count",
    "register_family",
    "supports_attentions",
    "unregister_family",
]

# the built-in families, each registers itself on import (order = order asked)
from lightning_compress.core.families import hf_bert, hf_transformers, torch_mha  # noqa: E402,F401
