"""Scores -> masks: unstructured, NxM blocks and N:M groups (see each module's docstring).

* :mod:`.base`: :class:`Pattern` (the extension point), :func:`parse_pattern`, :func:`register_pattern`,
  the 2-D weight view (:func:`as_2d`: Conv ``[out, in, kh, kw]`` as ``[out, in*kh*kw]``).
* :mod:`.block`: ``"NxM"`` / ``"unstructured"``; :mod:`.nm`: ``"N:M"`` (keep N of every M).
* Ranking units over layers (local / global with caps) is :mod:`lightning_compress.core.ranking`.

Every module of this package is imported here, so a new file with a ``@register_pattern`` class is
picked up without editing anything else.
"""

from __future__ import annotations

import importlib
import pkgutil

from lightning_compress.core.patterns.base import PATTERNS, Pattern, as_2d, parse_pattern, register_pattern, shape_2d
from lightning_compress.core.patterns.block import BlockPattern
from lightning_compress.core.patterns.nm import NMPattern
from lightning_compress.core.ranking import LayerScores, select_pruned_units

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
    "PATTERNS", "BlockPattern", "LayerScores", "NMPattern", "Pattern", "as_2d", "parse_pattern",
    "register_pattern", "select_pruned_units", "shape_2d",
]
