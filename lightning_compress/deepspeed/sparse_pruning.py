"""``compression_training.sparse_pruning`` -> one :class:`~lightning_compress.callbacks.SparsePruning`.

=====================================  ======================================================================
DeepSpeed                              SparsePruning
=====================================  ======================================================================
``method`` l1 | topk (default l1)      ``method``, ``scope="local"`` (each layer pruned to its group's ratio,
                                       as DeepSpeed); unstructured unless ``block_pattern``
``method`` snip_momentum               ``method="snip_momentum"``, ``scope="global"`` (INC's default),
                                       ``pattern="4x1"`` unless ``block_pattern``
``dense_ratio`` r (group or shared)    ``sparsity = 1 - r``; several groups -> ``groups={name: {sparsity,
                                       modules}}``
``schedule_offset`` (default 1000)     ``start_step`` (optimizer steps); ``topk``: ``schedule="constant"``,
                                       ``frequency=1``, ``end_step=None``: the mask is recomputed at the
                                       final ratio every step after the offset, as DeepSpeed's top-k of
                                       the scores at every forward
``schedule_offset_end``                snip_momentum: ``end_step`` (required, as DeepSpeed); l1: one-shot at
                                       the offset (``end_step = start_step``; DeepSpeed's l1 mask is fixed);
                                       with l1 / topk it warns and is ignored (so did DeepSpeed)
``schedule_offset_stride``             snip_momentum: ``frequency`` (default 1); l1 / topk: ignored, warns
``block_pattern`` ``"NxM"``            ``pattern="NxM"`` (same meaning: N output rows x M input columns)
``block_pattern`` ``"N:M"``            ``pattern="(M-N):M"``: DeepSpeed passed it to Intel Neural Compressor,
                                       where N weights of M are *pruned*; here N of M are *kept*
``excluded_modules``                   ``exclude``
=====================================  ======================================================================

The pattern grammar is :func:`lightning_compress.core.patterns.parse_pattern`'s.
"""

from __future__ import annotations

from typing import Any

from lightning_compress.callbacks.sparse_pruning import SparsePruning
from lightning_compress.core.patterns import NMPattern, parse_pattern
from lightning_compress.deepspeed.config import (
    as_int,
    config_error,
    method_section,
    module_regexes,
    sparsity,
    warn,
    warn_unused_related,
)
from lightning_compress.deepspeed.registry import register_translator
from lightning_compress.deepspeed.spec import CallbackSpec

SHARED_KEYS = {
    "enabled", "method", "schedule_offset", "schedule_offset_end", "schedule_offset_stride",
    "block_pattern", "dense_ratio", "excluded_modules",
}
PARAM_KEYS = {"dense_ratio"}
METHODS = ("l1", "topk", "snip_momentum")
DEFAULT_METHOD = "l1"
#: DeepSpeed's code default for ``schedule_offset`` (deepspeed/compression/constants.py)
DEFAULT_OFFSET = 1000


def pattern(block_pattern: Any, path: str) -> str:
    """DeepSpeed's ``block_pattern`` -> our ``pattern`` string (``"N:M"`` flips from pruned to kept)."""
    if not isinstance(block_pattern, str):
        raise config_error(path, f"block_pattern={block_pattern!r} must be a string like '4x1' or '2:4'")
    if ":" not in block_pattern:
        try:
            return parse_pattern(block_pattern).name
        except ValueError as err:
            raise config_error(
                path, f"block_pattern={block_pattern!r} is not 'NxM' (e.g. '4x1') or 'N:M' (e.g. '2:4'): {err}"
            ) from None
    try:  # DeepSpeed / INC: N of every M *pruned*, 0 < N < M
        pruned = parse_pattern(block_pattern)
    except ValueError:
        pruned = None
    if not isinstance(pruned, NMPattern) or pruned.n == 0:
        raise config_error(path, f"block_pattern={block_pattern!r}: N:M needs 0 < N < M (N pruned of every M, DeepSpeed/INC)")
    return parse_pattern(f"{pruned.m - pruned.n}:{pruned.m}").name


@register_translator("sparse_pruning", SparsePruning)
def translate(section: Any, path: str) -> list[CallbackSpec]:
    sec = method_section(section, path, SHARED_KEYS, PARAM_KEYS)
    if sec is None:
        return []
    shared, sp = sec.shared, sec.shared_path
    algo = shared.get("method", DEFAULT_METHOD)
    if algo not in METHODS:
        raise config_error(f"{sp}.method", f"{algo!r} is not a sparse_pruning method; choose one of {list(METHODS)}")
    start = sec.offset(DEFAULT_OFFSET)
    if algo == "snip_momentum" and "schedule_offset_end" not in shared:
        raise config_error(sp, "snip_momentum needs schedule_offset_end (the step of the last prune event; mandatory in DeepSpeed too)")
    end = as_int(shared.get("schedule_offset_end", start), f"{sp}.schedule_offset_end")
    if end < start:
        raise config_error(f"{sp}.schedule_offset_end", f"{end} is before schedule_offset={start}")
    frequency = as_int(shared.get("schedule_offset_stride", 1), f"{sp}.schedule_offset_stride", minimum=1)
    default_pattern = "4x1" if algo == "snip_momentum" else "unstructured"
    timing: dict[str, Any] = dict(start_step=start, end_step=end, frequency=frequency)
    if algo != "snip_momentum":
        # DeepSpeed: l1's mask is fixed, topk's is the top-k of the scores at every forward; either
        # stays on from schedule_offset on (its scheduler never turns it off again)
        for key in ("schedule_offset_end", "schedule_offset_stride"):
            if key in shared:
                warn(f"{sp}.{key}", f" has no effect with method {algo!r} (DeepSpeed keeps the mask on from "
                     "schedule_offset on; only snip_momentum prunes gradually); ignored.")
        timing = dict(start_step=start, end_step=start, frequency=1)
        if algo == "topk":
            timing = dict(start_step=start, end_step=None, frequency=1, schedule="constant")
    kwargs: dict[str, Any] = dict(
        method=algo,
        pattern=pattern(shared.get("block_pattern", default_pattern), f"{sp}.block_pattern"),
        **timing,
        scope="global" if algo == "snip_momentum" else "local",
        exclude=module_regexes(shared.get("excluded_modules"), f"{sp}.excluded_modules"),
    )
    if not sec.groups:
        if algo != "snip_momentum" and "dense_ratio" not in shared:
            raise config_error(
                f"{path}.different_groups",
                f"method {algo!r} needs at least one group with params.dense_ratio (or a shared dense_ratio)",
            )
        kwargs["sparsity"] = sparsity(shared.get("dense_ratio", 0.1), f"{sp}.dense_ratio")
        return [CallbackSpec(SparsePruning.__name__, kwargs, path)]
    groups: dict[str, dict[str, Any]] = {}
    for group in sec.groups:
        warn_unused_related(group)
        if "dense_ratio" in group.params:
            g: dict[str, Any] = {"sparsity": sparsity(group.params["dense_ratio"], f"{group.path}.params.dense_ratio")}
        elif "dense_ratio" in shared:
            g = {"sparsity": sparsity(shared["dense_ratio"], f"{sp}.dense_ratio")}
        else:
            raise config_error(f"{group.path}.params", "dense_ratio is missing (the fraction of weights kept in this group)")
        if group.modules is not None:
            g["modules"] = group.modules
        groups[group.name] = g
    if len(groups) == 1:
        (g,) = groups.values()
        kwargs.update(sparsity=g["sparsity"], modules=g.get("modules"))
    else:
        kwargs.update(sparsity=None, groups=groups)
    return [CallbackSpec(SparsePruning.__name__, kwargs, path)]
