"""Any Hugging Face transformers model: config-level layer knowledge, ``layer_idx``, attention outputs.

Recognised by duck typing (no transformers import), per question: a ``model.config`` with the
fields named below.

* **Layer count**: ``config.num_hidden_layers`` (layer reduction prefers the stack of that length).
* **After layer reduction**: every submodule of a kept layer with an int ``layer_idx`` gets its new
  index (transformers' KV caches index by it; done for any model that uses the attribute), and when
  the config counted the reduced stack, ``num_hidden_layers = len(keep)`` and ``layer_types`` (one
  entry per layer, e.g. sliding vs full attention) keeps the kept layers' entries.
* **Attention outputs**: a model with ``config.output_attentions`` whose attention implementation is
  eager and whose ``forward`` accepts ``output_attentions`` returns attention probabilities.
* **Keyword inputs**: a model with ``config.model_type`` (a ``PreTrainedModel``) is called with named
  inputs (``input_ids=...``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from torch import nn

from lightning_compress.core.families.base import Family
from lightning_compress.core.families.registry import register_family


def _config_layers(model: nn.Module) -> int | None:
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _accepts_kwarg(module: nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@register_family
class HFTransformers(Family):
    name = "hf_transformers"
    description = "any Hugging Face transformers model: config.num_hidden_layers / layer_types, layer_idx, output_attentions, keyword inputs"

    def layer_count(self, model: nn.Module) -> int | None:
        return _config_layers(model)

    def after_layer_reduction(self, model: nn.Module, kept_layers: Sequence[nn.Module], num_before: int,
                              keep: Sequence[int]) -> None:
        for new_idx, layer in enumerate(kept_layers):
            for m in layer.modules():
                if isinstance(getattr(m, "layer_idx", None), int) and not isinstance(m.layer_idx, bool):
                    m.layer_idx = new_idx
        if _config_layers(model) != num_before:
            return
        config = model.config
        config.num_hidden_layers = len(keep)
        types = getattr(config, "layer_types", None)
        if isinstance(types, (list, tuple)) and len(types) == num_before:
            config.layer_types = [types[i] for i in keep]

    def returns_attentions(self, model: nn.Module) -> bool:
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "output_attentions"):
            return False
        impl = getattr(config, "_attn_implementation", None) or "eager"
        return impl == "eager" and _accepts_kwarg(model, "output_attentions")

    def takes_keyword_inputs(self, model: nn.Module) -> bool:
        return hasattr(getattr(model, "config", None), "model_type")
