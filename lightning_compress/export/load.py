"""Reading back what :func:`lightning_compress.export.save_slim` wrote; a bad file is named in the error.

* :func:`load_slim_state`: ``model.safetensors`` -> a ``state_dict`` (packed low-bit weights
  dequantized); refuses a file whose model quantizes activations (a state dict cannot carry that).
* :func:`load_slim`: ``model.safetensors`` into a slim model of your classes, activation quantization
  included, in the dtype it was saved in; or, given only the export folder, the slim model rebuilt
  from ``architecture.safetensors`` without any model code (:mod:`lightning_compress.export.rebuild`).
* :func:`load_program`: ``model.pt2`` -> runnable module (no model code needed).
* :func:`load_onnx`: ``model.onnx`` -> an ONNX Runtime session (CPU).

Every reader raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for a
truncated or corrupt one, or one that is not a lightning-compress slim export (its metadata).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_compress.core.quantize import unpack_model
from lightning_compress.export.input_quant import ACT_META, ACT_PREFIX, attach_input_quant, from_safetensors

PACKED_PREFIX = "lc_packed."
#: safetensors metadata of a slim export: ``format`` is this string
FORMAT = "lightning_compress.slim"
_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


def _existing(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such {what} file" + (" (it is a folder)" if p.is_dir() else "") + ".")
    return p


def _read(path: str | os.PathLike) -> tuple[Path, dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    p = _existing(path, "safetensors")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # SafetensorError, OSError, ...: truncated or not safetensors at all
        raise ValueError(f"{p}: not a readable safetensors file ({type(err).__name__}: {err}); re-export the model.") from err
    if "class" not in meta or meta.get("format", FORMAT) != FORMAT:
        raise ValueError(
            f"{p}: metadata {meta} is not that of a lightning-compress slim export (expected 'format': {FORMAT!r} "
            f"and the model 'class'); write it with lightning_compress.export.save_slim."
        )
    if "dtype" in meta and meta["dtype"] not in _DTYPES:
        raise ValueError(f"{p}: metadata 'dtype'={meta['dtype']!r} is not one of {sorted(_DTYPES)}.")
    return p, raw, meta


def _state(p: Path, raw: dict[str, torch.Tensor], meta: dict[str, str], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    dtype = dtype or _DTYPES.get(meta.get("dtype", ""), torch.float32)
    packed = {k[len(PACKED_PREFIX):]: v for k, v in raw.items() if k.startswith(PACKED_PREFIX)}
    state = {k: v for k, v in raw.items() if not k.startswith((PACKED_PREFIX, ACT_PREFIX))}
    try:
        unpacked = unpack_model(packed, dtype)
    except Exception as err:
        raise ValueError(f"{p}: the packed low-bit weights are corrupt ({type(err).__name__}: {err}); re-export the model.") from err
    prefixes = {k.rsplit(".", 1)[0] for k in packed}
    if set(unpacked) != prefixes:
        raise ValueError(f"{p}: packed weights {sorted(prefixes - set(unpacked))} lack their 'meta' or 'qweight' entry; re-export the model.")
    state.update(unpacked)
    return state


def load_slim_state(path: str | os.PathLike, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A ``state_dict`` from a ``model.safetensors`` written by :func:`save_slim` (packed low-bit
    weights, stored under ``lc_packed.<module>.<param>.<key>``, dequantized to ``dtype``; default:
    the dtype the model was saved in, float32 for older files), for ``slim_model.load_state_dict``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: naming the file: truncated / not safetensors, metadata not of a slim export,
            corrupt packed weights, or a model with activation quantization (use :func:`load_slim`:
            a state dict alone would load a model that skips it).
    """
    p, raw, meta = _read(path)
    if ACT_META in meta:
        names = sorted(from_safetensors(raw, meta[ACT_META], str(p)))
        raise ValueError(
            f"{p}: the saved model quantizes the inputs of {names} (activation quantization); a state dict "
            f"cannot carry that, and the model would compute another function without it. Use "
            f"lightning_compress.export.load_slim(model, {str(p)!r}), which loads the weights and puts the input "
            f"quantizers back."
        )
    return _state(p, raw, meta, dtype)


def load_slim(model: nn.Module | str | os.PathLike, path: str | os.PathLike | None = None) -> nn.Module:
    """Load a ``model.safetensors`` written by :func:`save_slim` into ``model`` (your classes, built
    with the slim shapes), in place: weights (strict: every key must match), the dtype they were
    saved in (``model`` is cast to it: a bf16-trained model runs in bf16), and the activation
    quantizers as input pre-hooks (:mod:`lightning_compress.export.input_quant`).  Returns ``model``.

    ``load_slim(directory)`` (one argument, the export folder): the slim model rebuilt from
    ``architecture.safetensors`` and ``model.safetensors`` with no model code
    (:func:`lightning_compress.export.rebuild.load_slim_dir`).

    Raises:
        FileNotFoundError / ValueError: as :func:`load_slim_state`, and a ``ValueError`` naming the
        file when its keys or shapes do not match ``model``.
    """
    if path is None:
        if isinstance(model, nn.Module):
            raise TypeError("load_slim(model, path): `path` (the model.safetensors file) is missing; or call load_slim(directory).")
        from lightning_compress.export.rebuild import load_slim_dir

        return load_slim_dir(model)
    assert isinstance(model, nn.Module), "load_slim(model, path): `model` must be an nn.Module"
    p, raw, meta = _read(path)
    state = _state(p, raw, meta, None)
    if "dtype" in meta:
        model.to(_DTYPES[meta["dtype"]])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{p}: does not fit {type(model).__name__} (build it with the slim shapes): {err}") from err
    if ACT_META in meta:
        attach_input_quant(model, from_safetensors(raw, meta[ACT_META], str(p)))
    return model


def load_program(path: str | os.PathLike) -> nn.Module:
    """The runnable module of a ``model.pt2`` written by :func:`save_slim`
    (``torch.export.load(path).module()``): no model class code needed.

    Raises:
        FileNotFoundError: no file at ``path``; ValueError: naming the file, when it is not a
        readable ``torch.export`` program (truncated, a bad zip, another format).
    """
    p = _existing(path, "torch.export program")
    try:
        return torch.export.load(str(p)).module()
    except Exception as err:
        raise ValueError(f"{p}: not a readable torch.export program ({type(err).__name__}: {err}); re-export the model.") from err


def load_onnx(path: str | os.PathLike, **session_options: Any) -> Any:
    """An ONNX Runtime ``InferenceSession`` (CPU) of a ``model.onnx``.

    Raises:
        FileNotFoundError: no file at ``path``; ValueError: naming the file, when ONNX Runtime cannot
        read it.
    """
    import onnxruntime as ort

    p = _existing(path, "ONNX")
    try:
        return ort.InferenceSession(str(p), providers=["CPUExecutionProvider"], **session_options)
    except Exception as err:
        raise ValueError(f"{p}: not a readable ONNX model ({type(err).__name__}: {err}); re-export the model.") from err
