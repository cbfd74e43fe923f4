"""What row, head and channel pruning share: one callback per group, DeepSpeed's counts and timing."""

from __future__ import annotations

from typing import Any

from lightning_compress.deepspeed.config import Group, MethodSection, config_error, method_section, sparsity

#: ``shared_parameters`` keys of row and channel pruning (head pruning adds ``num_heads``)
SHARED_KEYS = frozenset({"enabled", "method", "schedule_offset"})
PARAM_KEYS = frozenset({"dense_ratio"})
METHODS = ("l1", "topk")
#: DeepSpeed's code default for ``schedule_offset`` (deepspeed/compression/constants.py)
DEFAULT_OFFSET = 1000


def structured_section(
    method: str, section: Any, path: str, default_method: str, shared_keys: frozenset[str] = SHARED_KEYS
) -> tuple[MethodSection, str, int] | None:
    """``(checked section, pruning method, start step)``, or ``None`` when the method is disabled."""
    sec = method_section(section, path, shared_keys, PARAM_KEYS)
    if sec is None:
        return None
    algo = sec.shared.get("method", default_method)
    if algo not in METHODS:
        raise config_error(f"{sec.shared_path}.method", f"{algo!r} is not a {method} method; choose one of {list(METHODS)}")
    start = sec.offset(DEFAULT_OFFSET)
    sec.require_groups(method, "each group needs params.dense_ratio")
    return sec, algo, start


def schedule_kwargs(algo: str, start: int) -> dict[str, Any]:
    """When DeepSpeed's masks are computed, as our schedule arguments.

    * ``l1``: one mask, applied from the offset on: one prune event at ``start`` (``end_step = start``).
    * ``topk``: DeepSpeed's mask is the top-k of the scores at every forward from the offset on, so it
      follows the scores: ``schedule="constant"`` (the final ratio at every event), ``frequency=1``,
      ``end_step=None`` (the last optimizer step of training).
    """
    if algo == "topk":
        return dict(start_step=start, end_step=None, schedule="constant", frequency=1)
    return dict(start_step=start, end_step=start)


def group_kwargs(group: Group, algo: str, start: int, units: str) -> dict[str, Any]:
    """The arguments every structured callback gets for one group: the group's ratio, with DeepSpeed's
    count (``rounding="floor"``: ``ceil(dense_ratio * n)`` units stay, as its TopKBinarizer) and
    DeepSpeed's timing (:func:`schedule_kwargs`)."""
    if "dense_ratio" not in group.params:
        raise config_error(f"{group.path}.params", f"dense_ratio is missing (the fraction of {units} kept)")
    return dict(
        sparsity=sparsity(group.params["dense_ratio"], f"{group.path}.params.dense_ratio"),
        method=algo,
        **schedule_kwargs(algo, start),
        modules=group.modules,
        rounding="floor",
    )
