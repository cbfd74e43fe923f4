"""Model-family plugins: what lightning_compress knows about how kinds of models are built (pure PyTorch).

Head, row and channel pruning, ``clean``'s surgery and layer reduction never test for a model class
themselves; they ask this registry, which asks every registered :class:`~.base.Family`:

* :func:`find_attentions` ``(model) -> {name: AttentionInfo}``: every attention some family
  recognises (per module, the first family in :data:`FAMILIES` that answers wins).  After ``clean``
  sliced the heads, :func:`~lightning_compress.core.surgery.remove_units` calls
  ``info.family.update_after_head_removal(info, keep)``: the owning family fixes the module's
  attributes and the config (``num_attention_heads``, ``config.pruned_heads``, ...).
* :func:`family_channel_spaces` ``(model) -> (spaces, tags)``: coupled layers the families know
  without tracing (a BERT FFN's ``intermediate.dense -> output.dense``); :func:`channel_spaces` is
  ``torch.fx`` tracing (:mod:`lightning_compress.core.graph`) with these as the fallback.
* :func:`layer_count`, :func:`after_layer_reduction`, :func:`supports_attentions`: the layer-stack
  knowledge layer reduction / distillation use (``config.num_hidden_layers``, ``layer_types``,
  ``layer_idx``, attention outputs).
* :func:`takes_keyword_inputs`: whether the model is called with named inputs (for exporters).

Built in: :mod:`.hf_bert` (BERT-family attention and FFN), :mod:`.hf_transformers` (config /
``layer_idx`` knowledge of any transformers model), :mod:`.torch_mha` (``nn.MultiheadAttention``),
:mod:`.torchvision_swin` (Swin window attention), :mod:`.transformers_albert`,
:mod:`.transformers_deberta_v2`, :mod:`.transformers_distilbert`, :mod:`.transformers_qkvo_proj`
(Llama / Qwen2 / Mistral with grouped-query attention and SwiGLU, HF ViT), :mod:`.transformers_t5`.
After ``clean`` removed units, :func:`after_unit_removal` lets every family fix config sizes
(``intermediate_size``, ``num_key_value_heads``, ...) from the slim shapes.
Every module of this package other than ``base`` and ``registry`` is imported when the package is,
in alphabetical order of file name, which is the order the families are asked.

**Adding a family** = one new file: subclass :class:`~.base.Family`, set ``name`` (and
``description``), override the methods you know, decorate the class with :func:`register_family`.
Dropped into this package it registers itself on import (import ``register_family`` from
:mod:`.registry` there); anywhere else, importing your module registers it::

    from lightning_compress.core.families import AttentionInfo, Family, Projection, register_family

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

        def update_after_head_removal(self, info, keep):  # keep[h]: original head h stayed
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
    takes_keyword_inputs,
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
    "takes_keyword_inputs",
    "unregister_family",
]


def _import_builtin_families() -> None:
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name not in ("base", "registry") and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_builtin_families()
