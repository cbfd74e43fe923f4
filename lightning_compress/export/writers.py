"""The built-in export formats: ``safetensors``, ``torch_export`` (``model.pt2``) and ``onnx``.

* ``"safetensors"``: ``model.safetensors`` (weights + buffers, shared tensors once; metadata:
  ``format`` (``"lightning_compress.slim"``), the model ``class``, its ``dtype`` and, with activation
  quantization, its settings under ``lc_act`` with the static scales under ``lc_act.<module>.scale`` /
  ``.zero_point``; read it with :func:`lightning_compress.export.load_slim`).  With packed low-bit weights, those are stored under ``lc_packed.<module>.<param>.<key>``
  *instead of* their float values (read back with :func:`lightning_compress.export.load_slim_state`).
* ``"torch_export"``: ``model.pt2`` via ``torch.export.export`` + ``torch.export.save``; load with
  ``torch.export.load(path).module()(*inputs)`` (:func:`lightning_compress.export.load_program`): no class
  code needed; the batch dimension is dynamic where the model allows it.
* ``"onnx"``: ``model.onnx`` (:func:`lightning_compress.export.onnx.write_onnx`, opset 17; the model's own
  inputs and outputs, no adaptation).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_compress.export.formats import SaveJob, register_format
from lightning_compress.export.input_quant import ACT_META, input_quantizers, to_safetensors
from lightning_compress.export.load import FORMAT, PACKED_PREFIX
from lightning_compress.export.onnx import write_onnx
from lightning_compress.export.program import export_program
from lightning_compress.export.tensors import state_for_safetensors


@register_format("safetensors", filename="model.safetensors", needs_example=False)
def write_safetensors(job: SaveJob, path: Path) -> None:
    from safetensors.torch import save_file

    state = state_for_safetensors(job.model)
    if job.packed:
        prefixes = {k.rsplit(".", 1)[0] for k in job.packed}
        state = {k: v for k, v in state.items() if k not in prefixes}
        state.update({f"{PACKED_PREFIX}{k}": v.contiguous() for k, v in job.packed.items()})
    model = job.model
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()} or {torch.float32}
    metadata = {"format": FORMAT, "class": f"{type(model).__module__}.{type(model).__qualname__}"}
    if len(dtypes) == 1:  # mixed dtypes: none recorded, load_slim keeps the model's own
        metadata["dtype"] = str(dtypes.pop())
    act = input_quantizers(model)
    if act:
        act_tensors, metadata[ACT_META] = to_safetensors(act)
        state.update(act_tensors)
    save_file(state, str(path), metadata=metadata)


@register_format("torch_export", filename="model.pt2", needs_example=True)
def write_program(job: SaveJob, path: Path) -> None:
    torch.export.save(export_program(job.runnable, job.args, job.kwargs), str(path))


@register_format("onnx", filename="model.onnx", needs_example=True)
def write_model_onnx(job: SaveJob, path: Path) -> None:
    write_onnx(job.runnable, job.args, path, kwargs=job.kwargs, constant_folding=job.runnable is job.model)
