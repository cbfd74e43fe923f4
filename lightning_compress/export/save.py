"""Saving slim models: ``torch.export`` program, ``safetensors`` weights, ONNX; JSON reports.

:func:`save_slim` writes a model made by :func:`lightning_compress.export.clean` (or the forms of
:func:`lightning_compress.export.clean_for_storage`) in the registered formats (:mod:`lightning_compress.export.formats`, built-ins in
:mod:`lightning_compress.export.writers`); read them back
with :mod:`lightning_compress.export.load`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from lightning_compress.export import writers as _builtin_writers  # noqa: F401  (registers the built-in formats)
from lightning_compress.export import rebuild as _rebuild  # noqa: F401  (registers "architecture", after them)
from lightning_compress.export.adapt import split_example
from lightning_compress.export.formats import FORMATS, WRITERS, SaveJob
from lightning_compress.export.tensors import state_for_safetensors, unique_tensors  # noqa: F401  (re-exported)


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of ``model``'s parameters (float32 when it has none; None when they mix
    dtypes: then example inputs are not cast and the safetensors metadata has no ``dtype``)."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) > 1:
        return None
    return dtypes.pop() if dtypes else torch.float32


def cast_floats(value: Any, dtype: torch.dtype | None) -> Any:
    """``value`` (a tensor, or dicts / tuples / lists of them) with every floating tensor cast to
    ``dtype`` (None: unchanged)."""
    if dtype is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, dict):
        return {k: cast_floats(v, dtype) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(cast_floats(v, dtype) for v in value)
    return value


def save_slim(
    model: nn.Module,
    output_dir: str | os.PathLike,
    example_input: Any = None,
    formats: Sequence[str] = ("torch_export", "safetensors"),
    packed: dict[str, torch.Tensor] | None = None,
    stored: nn.Module | None = None,
) -> dict[str, str]:
    """Save a clean model. Returns ``{format: path}``.

    With ``packed`` (from :func:`lightning_compress.export.clean_for_storage`) the safetensors file
    holds the packed low-bit weights under ``lc_packed.<module>.<param>.<key>`` *instead of* their
    float values (read it back with :func:`lightning_compress.export.load_slim_state`), and with ``stored`` the ``torch.export`` / ONNX files are made from
    that integer-storage twin.

    Each name in ``formats`` is a registered format (:data:`FORMATS`; the built-ins
    ``"safetensors"``, ``"torch_export"`` (``model.pt2``) and ``"onnx"`` are described in
    :mod:`lightning_compress.export.writers`); formats that trace the model need ``example_input`` (a
    tensor, a tuple of positional inputs, or a dict of keyword inputs), checked before anything is
    written.  Writers run in registration order.

    Every form computes what ``model`` computes in ``eval()``, its input quantizers
    (:mod:`lightning_compress.export.input_quant`) included, in the model's dtype: the floating
    tensors of ``example_input`` are cast to it, so a bf16 model's program takes bf16 inputs
    (``"onnx"`` is refused for a non-float32 model: ONNX Runtime's CPU kernels do not run it).  Files
    are written into ``output_dir`` as they are made; for an all-or-nothing replace of a folder write
    into :func:`lightning_compress.export.folder.staged_dir` (RedundancyClean does).
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"`formats` has unknown entries {unknown}; choose from {FORMATS}.")
    chosen = [WRITERS[f] for f in WRITERS if f in formats]  # registration order
    dtype = model_dtype(model)
    if "onnx" in formats and dtype != torch.float32:
        raise ValueError(
            f"save_slim: format 'onnx' with a {dtype or 'mixed-precision'} model: ONNX Runtime's CPU kernels do not run {dtype} "
            f"(e.g. Gemm), so the file could not be checked against the model; drop 'onnx' from `formats` or "
            f"train / cast the model in float32."
        )
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    if any(w.needs_example for w in chosen):
        if example_input is None:
            names = [w.name for w in chosen if w.needs_example]
            raise ValueError(
                f"save_slim: formats {names} need `example_input` (the first training batch's "
                f"input, or pass example_input=...)."
            )
        args, kwargs = split_example(cast_floats(example_input, dtype))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    runnable = stored if stored is not None else model
    was_training, runnable_training = model.training, runnable.training
    model.eval()
    runnable.eval()
    try:
        job = SaveJob(model=model, runnable=runnable, packed=packed or None, args=args, kwargs=kwargs)
        for w in chosen:
            p = out / w.filename
            w.write(job, p)
            paths[w.name] = str(p)
    finally:
        model.train(was_training)
        runnable.train(runnable_training)
    return paths


def write_json(obj: Any, path: str | os.PathLike) -> str:
    """``obj`` as indented JSON at ``path`` (non-JSON values via ``str``).  Returns ``str(path)``."""
    Path(path).write_text(json.dumps(obj, indent=2, default=str))
    return str(path)
