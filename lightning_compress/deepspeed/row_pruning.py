"""``compression_training.row_pruning`` -> one :class:`~lightning_compress.callbacks.RowPruning` per group.

Each group: ``sparsity = 1 - dense_ratio`` over its ``modules`` (the producers whose output rows go;
``ceil(dense_ratio * rows)`` rows stay, DeepSpeed's count), ``method`` l1 | topk (default l1) from
``schedule_offset`` (default 1000): l1 once at the offset, topk recomputed every step after it (see
:func:`lightning_compress.deepspeed._structured.schedule_kwargs`).

``related_modules``: DeepSpeed zips ``modules`` with ``related_modules`` (entry i of one with list i of the
other) and, in ``redundancy_clean``, gives the j-th module matched by a ``modules`` regex's mask to the
j-th module matched by each related regex.  So ``related_modules={producer regex: [consumer regexes]}``
with ``related_pairing="index"``: RowPruning checks at ``setup`` that each regex matches as many modules
as its producer regex and that every pair's widths fit (``producer.out_features ==
consumer.in_features``), else refuses.  One list for several ``modules`` is refused (DeepSpeed's zip
would silently drop the modules without a list).
"""

from __future__ import annotations

from typing import Any

from lightning_compress.callbacks.row_pruning import RowPruning
from lightning_compress.deepspeed._structured import group_kwargs, structured_section
from lightning_compress.deepspeed.config import Group, config_error, flat_related, related_lists
from lightning_compress.deepspeed.registry import register_translator
from lightning_compress.deepspeed.spec import CallbackSpec

DEFAULT_METHOD = "l1"


def related_modules(group: Group) -> dict[str, list[str]] | None:
    """DeepSpeed's ``related_modules`` -> RowPruning's ``{producer regex: [consumer regexes]}``."""
    path = f"{group.path}.related_modules"
    lists = related_lists(group.related, path)
    if flat_related(lists, path) is None:  # none given, or only "*"
        return None
    mods = group.modules
    if not mods:
        raise config_error(path, "related_modules needs the group's `modules` (the producers they belong to)")
    if len(lists) == len(mods):
        return dict(zip(mods, lists))
    raise config_error(
        path,
        f"{len(lists)} lists for {len(mods)} modules; give one list of consumers per entry of `modules` "
        "(DeepSpeed zips the two lists and silently drops modules without a list)",
    )


@register_translator("row_pruning", RowPruning)
def translate(section: Any, path: str) -> list[CallbackSpec]:
    found = structured_section("row_pruning", section, path, DEFAULT_METHOD)
    if found is None:
        return []
    sec, algo, start = found
    specs = []
    for group in sec.groups:
        kwargs = group_kwargs(group, algo, start, "rows")
        related = related_modules(group)
        if related is not None:
            kwargs["related_modules"] = related
            kwargs["related_pairing"] = "index"
        specs.append(CallbackSpec(RowPruning.__name__, kwargs, group.path))
    return specs
