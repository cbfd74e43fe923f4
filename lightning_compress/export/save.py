"""Saving slim models: ``torch.export`` program, ``safetensors`` weights, ONNX; JSON reports.

:func:`save_slim` writes a model made by :func:`lightning_compress.export.clean` (or the forms of
:func:`lightning_compress.export.clean_for_storage`) in the formats of :data:`FORMATS`; read them back
with :mod:`lightning_compress.export.load`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from lightning_compress.export.adapt import split_example
from lightning_compress.export.input_quant import ACT_META, input_quantizers, to_safetensors
from lightning_compress.export.load import FORMAT, PACKED_PREFIX
from lightning_compress.export.onnx import write_onnx
from lightning_compress.export.program import export_program

FORMATS = ("torch_export", "safetensors", "onnx")


def unique_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``model.state_dict()``, each shared tensor (tied embeddings) once, under its
    first key; not copied."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, tuple]] = set()
    for k, v in model.state_dict().items():
        if not isinstance(v, torch.Tensor):
            continue
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.numel() else (id(v), 0, ())
        if key in seen:
            continue
        seen.add(key)
        out[k] = v
    return out


def state_for_safetensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with shared tensors stored once (tied embeddings) and contiguous CPU tensors."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in unique_tensors(model).items()}


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of ``model``'s parameters (float32 when it has none).

    Raises:
        ValueError: parameters of several floating dtypes (the precision a saved form should run in is
            ambiguous; cast the model first).
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) > 1:
        raise ValueError(f"save_slim: the model's parameters mix dtypes {sorted(map(str, dtypes))}; cast it to one first.")
    return dtypes.pop() if dtypes else torch.float32


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, dict):
        return {k: _cast_floats(v, dtype) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_cast_floats(v, dtype) for v in value)
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

    * ``"torch_export"``: ``model.pt2`` via ``torch.export.export`` + ``torch.export.save`` (needs
      ``example_input``: a tensor, a tuple of positional inputs, or a dict of keyword inputs).  Load
      with ``torch.export.load(path).module()(*inputs)`` (:func:`lightning_compress.export.load_program`):
      no class code needed; the batch dimension is dynamic where the model allows it.
    * ``"safetensors"``: ``model.safetensors`` (weights + buffers; metadata: ``format``
      (``"lightning_compress.slim"``), the model ``class``, its ``dtype`` and, with activation
      quantization, its settings under ``lc_act`` with the static scales under
      ``lc_act.<module>.scale`` / ``.zero_point``; read it with :func:`load_slim`).
    * ``"onnx"``: ``model.onnx`` (:func:`lightning_compress.export.onnx.write_onnx`, opset 17; the
      model's own inputs and outputs, no adaptation).

    Every form computes what ``model`` computes in ``eval()``, its input quantizers
    (:mod:`lightning_compress.export.input_quant`) included, in the model's dtype: the floating
    tensors of ``example_input`` are cast to it, so a bf16 model's program and ONNX file take bf16
    inputs.  Files are written into ``output_dir`` as they are made; for an all-or-nothing replace
    of a folder write into :func:`lightning_compress.export.folder.staged_dir` (RedundancyClean does).
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"`formats` has unknown entries {unknown}; choose from {FORMATS}.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    dtype = model_dtype(model)
    if "onnx" in formats and dtype != torch.float32:
        raise ValueError(
            f"save_slim: format 'onnx' with a {dtype} model: ONNX Runtime's CPU kernels do not run {dtype} "
            f"(e.g. Gemm), so the file could not be checked against the model; drop 'onnx' from `formats` or "
            f"train / cast the model in float32."
        )
    was_training = model.training
    model.eval()
    try:
        if "safetensors" in formats:
            from safetensors.torch import save_file

            state = state_for_safetensors(model)
            if packed:
                prefixes = {k.rsplit(".", 1)[0] for k in packed}
                state = {k: v for k, v in state.items() if k not in prefixes}
                state.update({f"{PACKED_PREFIX}{k}": v.contiguous() for k, v in packed.items()})
            metadata = {
                "format": FORMAT, "class": f"{type(model).__module__}.{type(model).__qualname__}", "dtype": str(dtype),
            }
            act = input_quantizers(model)
            if act:
                act_tensors, metadata[ACT_META] = to_safetensors(act)
                state.update(act_tensors)
            p = out / "model.safetensors"
            save_file(state, str(p), metadata=metadata)
            paths["safetensors"] = str(p)
        if "torch_export" in formats or "onnx" in formats:
            if example_input is None:
                raise ValueError(
                    "save_slim: formats 'torch_export'/'onnx' need `example_input` (the first training batch's "
                    "input, or pass example_input=...)."
                )
            args, kwargs = split_example(_cast_floats(example_input, dtype))
        runnable = stored if stored is not None else model
        runnable.eval()
        if "torch_export" in formats:
            ep = export_program(runnable, args, kwargs)
            p = out / "model.pt2"
            torch.export.save(ep, str(p))
            paths["torch_export"] = str(p)
        if "onnx" in formats:
            p = out / "model.onnx"
            write_onnx(runnable, args, p, kwargs=kwargs, constant_folding=stored is None)
            paths["onnx"] = str(p)
    finally:
        model.train(was_training)
    return paths


def write_json(obj: Any, path: str | os.PathLike) -> str:
    """``obj`` as indented JSON at ``path`` (non-JSON values via ``str``).  Returns ``str(path)``."""
    Path(path).write_text(json.dumps(obj, indent=2, default=str))
    return str(path)
