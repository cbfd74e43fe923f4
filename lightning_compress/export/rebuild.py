"""Slim models that load without the training code: the ``"architecture"`` format and
:func:`load_slim_dir` (``lightning_compress.load_slim(dir)``).

``save_slim(..., formats=(..., "safetensors", "architecture"))`` writes, next to ``model.safetensors``:

* ``architecture.safetensors``: metadata ``format`` = ``"lightning_compress.architecture"``,
  ``architecture`` = the JSON record of :func:`lightning_compress.export.architecture.describe_model`
  (classes, attributes, children, which saved tensor fills which slot), and as tensors the few
  that ``model.safetensors`` does not hold (non-persistent buffers such as a rotary ``inv_freq``).
  Before it is written, the model is rebuilt from the record and the state in memory and, when
  ``save_slim`` has an example input, run on it: the rebuilt model must give the same output
  (``torch.equal``); otherwise, or when the model holds something the record cannot carry (a class
  defined in ``__main__``, a hook, an unknown object), the file says ``rebuildable: "false"`` with the
  reason, and :func:`load_slim_dir` raises it (``model.pt2`` still loads).
* ``hf/`` for a Hugging Face model (``save_pretrained``: ``config.json`` + ``model.safetensors``) when
  transformers can express the slim sizes: the folder is loaded back with ``from_pretrained`` and
  must hold the same tensors under the same names and, with an example, give the same output
  (relative difference <= 1e-5: transformers may pick another attention kernel);
  otherwise no folder is left and the metadata ``hf_pretrained`` says why (e.g. DistilBERT / GPT-2
  with pruned heads: the head size is ``dim // n_heads``; layers of different widths; activation
  quantization, which a transformers folder cannot carry).

:func:`load_slim_dir` rebuilds the model from both files: its classes (importable from the
libraries they come from: transformers, torchvision, torch, lightning-compress) with the slim
shapes, the weights (packed low-bit weights dequantized), the dtype they were saved in and the
activation quantizers; in eval mode.  Pure PyTorch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from lightning_compress.export.architecture import NotDescribable, build_model, describe_model
from lightning_compress.export.formats import SaveJob, register_format
from lightning_compress.export.input_quant import ACT_META, attach_input_quant, from_safetensors, input_quantizers

ARCH_FORMAT = "lightning_compress.architecture"
ARCH_FILE = "architecture.safetensors"
HF_DIR = "hf"


def _state_keys(model: nn.Module) -> dict[int, str]:
    """``id(tensor)`` -> the key :func:`lightning_compress.export.tensors.unique_tensors` saves it under
    (the first state-dict key of its storage)."""
    first: dict[tuple, str] = {}
    out: dict[int, str] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if not isinstance(v, torch.Tensor):
            continue
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.numel() else (id(v), 0, ())
        out[id(v)] = first.setdefault(key, k)
    return out


def _output(model: nn.Module, job: SaveJob) -> Any:
    with torch.no_grad():
        return model(*job.args, **job.kwargs)


def _same(a: Any, b: Any, rel: float = 0.0) -> bool:
    """Every tensor of two outputs (tensors, tuples, dicts, transformers ``ModelOutput``) equal
    (``rel > 0``: relative L2 difference at most ``rel``)."""
    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.shape == b.shape):
            return False
        if rel == 0.0 or not a.is_floating_point():
            return torch.equal(a, b)
        return float((a.double() - b.double()).norm()) <= rel * max(float(b.double().norm()), 1e-30)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k], rel) for k in a)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(_same(x, y, rel) for x, y in zip(a, b))
    return True


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' progress bars and load reports off while the folder is written and checked."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _has_example(job: SaveJob) -> bool:
    return bool(job.args or job.kwargs)


def _describe(job: SaveJob) -> tuple[dict | None, dict[str, torch.Tensor], str]:
    model = job.model
    try:
        rec, extra = describe_model(model, _state_keys(model))
    except NotDescribable as err:
        return None, {}, str(err)
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tensors.update({f"x.{i}": t for i, t in extra.items()})
    try:
        rebuilt = build_model(json.loads(json.dumps(rec)), tensors)
    except Exception as err:  # a class whose attributes cannot be set back
        return None, {}, f"rebuilding from the record failed ({type(err).__name__}: {err})"
    attach_input_quant(rebuilt, input_quantizers(model))
    if _has_example(job) and not _same(_output(rebuilt, job), _output(model, job)):
        return None, {}, "the model rebuilt from the record computes another output on the example input"
    return rec, {f"x.{i}": t for i, t in extra.items()}, ""


def _write_hf(job: SaveJob, folder: Path) -> str:
    """Write ``folder`` with ``save_pretrained`` when it reloads to the same model; returns ``""`` or why not."""
    model = job.model
    if not (hasattr(model, "save_pretrained") and hasattr(type(model), "from_pretrained") and hasattr(model, "config")):
        return "not a transformers PreTrainedModel"
    if input_quantizers(model):
        return "the model quantizes activations, which a transformers folder cannot carry"
    try:
        with _quiet_transformers():
            model.save_pretrained(str(folder))
            impl = getattr(model.config, "_attn_implementation", None)
            back = type(model).from_pretrained(str(folder), dtype=next(model.parameters()).dtype,
                                               **({"attn_implementation": impl} if impl else {})).eval()
    except Exception as err:  # transformers refuses the sizes (mismatched shapes) or cannot save
        shutil.rmtree(folder, ignore_errors=True)
        return f"transformers cannot rebuild it from its config ({type(err).__name__}: {str(err)[:300]})"
    mine, theirs = model.state_dict(), back.state_dict()
    why = ""
    if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape or not torch.equal(mine[k], theirs[k]) for k in mine):
        why = "the config cannot express the slim sizes (the model from_pretrained builds holds other tensors)"
    elif _has_example(job) and not _same(_output(back, job), _output(model, job), rel=1e-5):
        why = "the model from_pretrained builds computes another output on the example input"
    if why:
        shutil.rmtree(folder, ignore_errors=True)
    return why


@register_format("architecture", filename=ARCH_FILE, needs_example=False)
def write_architecture(job: SaveJob, path: Path) -> None:
    from safetensors.torch import save_file

    rec, extra, why = _describe(job)
    meta = {"format": ARCH_FORMAT, "version": "1", "rebuildable": "true" if rec is not None else "false"}
    if rec is not None:
        meta["architecture"] = json.dumps(rec, separators=(",", ":"))
    else:
        meta["reason"] = why
    hf = path.parent / HF_DIR
    if hf.exists():
        shutil.rmtree(hf)
    hf_why = _write_hf(job, hf)
    meta["hf_pretrained"] = HF_DIR if not hf_why else f"not written: {hf_why}"
    save_file({k: v.contiguous() for k, v in extra.items()}, str(path), metadata=meta)


def load_slim_dir(directory: str | os.PathLike) -> nn.Module:
    """The slim model saved in ``directory`` (``architecture.safetensors`` + ``model.safetensors``),
    rebuilt without the training code: its classes with the slim shapes and attributes, the weights
    (packed low-bit weights dequantized), the saved dtype, the activation quantizers; in eval mode.

    Raises:
        FileNotFoundError: a file is missing (the message names it).
        ValueError: naming the file: not readable, not a lightning-compress export, the model could
            not be written down when it was saved (the reason recorded then; load ``model.pt2`` with
            :func:`lightning_compress.export.load_program` instead), or tensors missing / left over.
    """
    from safetensors import safe_open

    from lightning_compress.export.load import _existing, _read, _state

    d = Path(directory)
    ap = _existing(d / ARCH_FILE, "architecture")
    try:
        with safe_open(str(ap), framework="pt") as f:
            meta = f.metadata() or {}
            extra = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise ValueError(f"{ap}: not a readable safetensors file ({type(err).__name__}: {err}); re-export the model.") from err
    if meta.get("format") != ARCH_FORMAT:
        raise ValueError(f"{ap}: metadata format {meta.get('format')!r} is not {ARCH_FORMAT!r}; write it with save_slim(formats=[..., 'architecture']).")
    if meta.get("rebuildable") != "true":
        raise ValueError(
            f"{ap}: the model could not be written down when it was saved: {meta.get('reason', '?')}. Load "
            f"{d / 'model.pt2'} with lightning_compress.export.load_program (no model code needed), or build the "
            f"model yourself and use lightning_compress.export.load_slim(model, {str(d / 'model.safetensors')!r})."
        )
    p, raw, smeta = _read(d / "model.safetensors")
    state = _state(p, raw, smeta, None)
    rec = json.loads(meta["architecture"])
    try:
        model = build_model(rec, {**state, **extra})
    except ValueError as err:
        raise ValueError(f"{p}: {err}") from None
    left = set(state) - set(model.state_dict())
    if left:
        raise ValueError(f"{p}: holds tensors {sorted(left)[:5]} that the architecture in {ap} has no slot for; re-export the model.")
    if ACT_META in smeta:
        attach_input_quant(model, from_safetensors(raw, smeta[ACT_META], str(p)))
    return model.eval()


__all__ = ["ARCH_FILE", "HF_DIR", "load_slim_dir", "write_architecture"]
