"""``l1`` / ``magnitude``: ``|W * mask|`` at the prune event.  No state; already-pruned weights score 0,
so masks only grow."""

from __future__ import annotations

from lightning_compress.core.criteria.base import Criterion, register_criterion


@register_criterion("l1", "magnitude")
class Magnitude(Criterion):
    """Score = ``|W * mask|`` (structured: mean ``|W|`` over the unit's producer slices)."""

    structured = True


__all__ = ["Magnitude"]
