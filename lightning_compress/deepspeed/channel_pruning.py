"""``compression_training.channel_pruning`` -> one :class:`~lightning_compress.callbacks.ChannelPruning`
per group.

Each group: ``sparsity = 1 - dense_ratio`` of the output channels of its ``modules`` (convolutions;
``ceil(dense_ratio * channels)`` stay, DeepSpeed's count), ``method`` l1 | topk (default l1) from
``schedule_offset`` (default 1000): topk recomputed every step after it, l1 once at it.  DeepSpeed's
``related_modules`` are not needed: ChannelPruning finds the coupled BatchNorms and consumer convolutions
by tracing the model, so they are left out with a warning.
"""

from __future__ import annotations

from typing import Any

from lightning_compress.callbacks.channel_pruning import ChannelPruning
from lightning_compress.deepspeed._structured import group_kwargs, structured_section
from lightning_compress.deepspeed.config import flat_related, related_lists
from lightning_compress.deepspeed.registry import register_translator
from lightning_compress.deepspeed.spec import CallbackSpec

DEFAULT_METHOD = "l1"


@register_translator("channel_pruning", ChannelPruning)
def translate(section: Any, path: str) -> list[CallbackSpec]:
    found = structured_section("channel_pruning", section, path, DEFAULT_METHOD)
    if found is None:
        return []
    sec, algo, start = found
    specs = []
    for group in sec.groups:
        kwargs = group_kwargs(group, algo, start, "channels")
        optional: dict[str, str] = {}
        path_rel = f"{group.path}.related_modules"
        related = flat_related(related_lists(group.related, path_rel), path_rel)
        if related is not None:
            kwargs["related_modules"] = related
            optional["related_modules"] = "ChannelPruning finds the coupled BatchNorms and convs by tracing the model"
        specs.append(CallbackSpec(ChannelPruning.__name__, kwargs, group.path, optional))
    return specs
