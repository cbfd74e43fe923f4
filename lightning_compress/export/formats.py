"""The export-format registry: how :func:`lightning_compress.export.save_slim` writes each format.

A format is one writer function registered under a name (what ``RedundancyClean(formats=...)`` and
``save_slim(formats=...)`` accept) with the file name it writes:

    from lightning_compress.export.formats import SaveJob, register_format

    @register_format("torchscript", filename="model.ts", needs_example=True)
    def write_torchscript(job: SaveJob, path: Path) -> None:
        torch.jit.trace(job.runnable, job.args).save(str(path))

Adding a format is that one file (imported once, e.g. by your training script); nothing else is
edited.  Writers run in registration order; the built-in ones (``safetensors``, ``torch_export``,
``onnx``) live in :mod:`lightning_compress.export.writers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn


@dataclass(frozen=True)
class SaveJob:
    """What a writer gets.

    Attributes:
        model: the slim float model (:func:`lightning_compress.export.clean`), in eval mode.
        runnable: what to trace for program formats: the integer-storage twin when quantized weights
            are stored packed, else ``model``.
        packed: packed low-bit weights (:func:`lightning_compress.export.clean_for_storage`) or None.
        args / kwargs: the example input split into positional and keyword inputs (empty when none
            was given; formats with ``needs_example`` are refused before any writer runs).
    """

    model: nn.Module
    runnable: nn.Module
    packed: dict[str, torch.Tensor] | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


Writer = Callable[[SaveJob, Path], None]


@dataclass(frozen=True)
class ExportFormat:
    name: str
    filename: str
    needs_example: bool
    write: Writer


WRITERS: dict[str, ExportFormat] = {}


def register_format(name: str, *, filename: str, needs_example: bool) -> Callable[[Writer], Writer]:
    """Register ``write(job, path)`` as format ``name`` writing ``<output_dir>/<filename>``.
    Registering a name again replaces it."""

    def deco(fn: Writer) -> Writer:
        WRITERS[name] = ExportFormat(name, filename, needs_example, fn)
        return fn

    return deco


class _FormatNames:
    """A live, tuple-like view of the registered format names (``in``, iteration, ``repr``)."""

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(WRITERS))

    def __contains__(self, name: object) -> bool:
        return name in WRITERS

    def __len__(self) -> int:
        return len(WRITERS)

    def __repr__(self) -> str:
        return repr(tuple(WRITERS))


#: the registered format names (a live view: formats registered later appear here)
FORMATS = _FormatNames()
