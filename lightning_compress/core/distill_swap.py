"""The class swap :class:`~lightning_compress.core.distill.DistillRecorder` records outputs with.

A recorded module's ``__class__`` becomes a cached subclass (:func:`masking.cached_subclass`, as the
masking contract does; no forward hooks) whose ``forward`` calls the original ``forward`` and, while its
recorder is active, reports to it: the student's top model runs the teacher on the same arguments
(``recorder._model_forward``), a mapped block stores its output (``recorder._store_block``).  Which
recorder a module reports to is kept in :data:`REGISTRY`, a weak map keyed by the module, so no attribute
is added to the module itself.  Pure PyTorch.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn

from lightning_compress.core.masking import cached_subclass, replace_base


class RecordingMixin:
    """Placed in front of a module's class: forwards to the original and reports to its recorder."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        base = RECORDING_BASE[_recording_layer(type(self))]
        entry = REGISTRY.get(self)  # type: ignore[arg-type]
        if entry is None or not entry[0].active:
            return base.forward(self, *args, **kwargs)
        recorder, role, index = entry
        if role == "model":
            return recorder._model_forward(self, base, args, kwargs)
        out = base.forward(self, *args, **kwargs)
        recorder._store_block(role, index, out)
        return out


_RECORDING_CLASSES: dict[type, type] = {}
#: recording class -> the class it was made from
RECORDING_BASE: dict[type, type] = {}
#: module -> (recorder, role: "model" | "student" | "teacher", block index)
REGISTRY: "weakref.WeakKeyDictionary[nn.Module, tuple[Any, str, int]]" = weakref.WeakKeyDictionary()


def _recording_class(cls: type) -> type:
    new_cls = cached_subclass(RecordingMixin, cls, "Recording", __name__, _RECORDING_CLASSES)
    RECORDING_BASE[new_cls] = cls
    return new_cls


def _recording_layer(cls: type) -> type:
    """The recording class in ``cls``'s MRO (``cls`` itself, or under a class swapped in on top of it
    later, e.g. FSDP2's ``FSDP<Recording<Block>>``)."""
    for c in cls.__mro__:
        if c in RECORDING_BASE:
            return c
    raise KeyError(cls)


def recorded_base(cls: type) -> type | None:
    """The class a recording class was made from (None when ``cls`` is not one)."""
    return RECORDING_BASE.get(cls)


def swap_in(module: nn.Module) -> None:
    """Swap ``module``'s class for its recording subclass (idempotent)."""
    if not isinstance(module, RecordingMixin):
        module.__class__ = _recording_class(type(module))


def swap_out(module: nn.Module) -> None:
    """Restore the class ``module`` had before :func:`swap_in`."""
    if isinstance(module, RecordingMixin):
        layer = _recording_layer(type(module))
        module.__class__ = replace_base(type(module), layer, RECORDING_BASE[layer])
