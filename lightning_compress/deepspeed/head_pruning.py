"""``compression_training.head_pruning`` -> one :class:`~lightning_compress.callbacks.HeadPruning` per group.

Each group: ``sparsity = 1 - dense_ratio`` of the attention heads with DeepSpeed's count
(``ceil(dense_ratio * heads)`` stay: 8 of 12 at 0.6), ``method`` l1 | topk (default topk) from
``schedule_offset`` (default 1000): topk recomputed every step after it, l1 once at it.  DeepSpeed names the output projection
(``...attention.output.dense``) in ``modules`` and q/k/v in ``related_modules``; HeadPruning takes the
self-attention module (``...attention.self``) and finds q/k/v and the output projection itself, so the
usual q/k/v ``related_modules`` are implied and other ones are left out with a warning.  ``num_heads``
is read from the model (a warning says so).
"""

from __future__ import annotations

from typing import Any

from lightning_compress.callbacks.head_pruning import HeadPruning
from lightning_compress.deepspeed._structured import SHARED_KEYS, group_kwargs, structured_section
from lightning_compress.deepspeed.config import as_int, flat_related, related_lists
from lightning_compress.deepspeed.registry import register_translator
from lightning_compress.deepspeed.spec import CallbackSpec

DEFAULT_METHOD = "topk"
_QKV = ["key", "query", "value"]


def attention_regex(regex: str) -> str:
    """``attention.output.dense`` (DeepSpeed: the output projection) -> ``attention.self`` (the module
    HeadPruning takes); other regexes are kept (they already name attention modules)."""
    for tail in ("output\\.dense", "output.dense"):
        if regex.endswith(tail):
            return regex[: -len(tail)] + "self"
    return regex


@register_translator("head_pruning", HeadPruning)
def translate(section: Any, path: str) -> list[CallbackSpec]:
    found = structured_section("head_pruning", section, path, DEFAULT_METHOD, SHARED_KEYS | {"num_heads"})
    if found is None:
        return []
    sec, algo, start = found
    specs = []
    for group in sec.groups:
        kwargs = group_kwargs(group, algo, start, "heads")
        optional: dict[str, str] = {}
        if group.modules is not None:
            kwargs["modules"] = [attention_regex(m) for m in group.modules]
        path_rel = f"{group.path}.related_modules"
        related = flat_related(related_lists(group.related, path_rel), path_rel)
        if related is not None and sorted(r.rsplit(".", 1)[-1] for r in related) != _QKV:
            kwargs["related_modules"] = related
            optional["related_modules"] = "HeadPruning finds query/key/value and the output projection itself"
        if "num_heads" in sec.shared:
            kwargs["num_heads"] = as_int(sec.shared["num_heads"], f"{sec.shared_path}.num_heads", minimum=1)
            optional["num_heads"] = "HeadPruning reads the number of heads from the model"
        specs.append(CallbackSpec(HeadPruning.__name__, kwargs, group.path, optional))
    return specs
