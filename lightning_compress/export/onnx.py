"""ONNX: one writer (:func:`write_onnx`) and the exports of quantized models built on it.

* :func:`write_onnx`: ``torch.onnx.export(..., dynamo=False)``; every ONNX file of the package is
  written by it (these exports and the ``model.onnx`` of :func:`lightning_compress.export.save_slim`).
* :func:`export_float`: the model in plain fp32 (transforms taken off a copy, not baked).
* :func:`export_qdq`: the fake-quantized model as is.  ``torch.fake_quantize_*`` become
  ``QuantizeLinear`` / ``DequantizeLinear`` pairs on weights (per tensor, per channel; groups as
  per-channel QDQ on the weight viewed ``[out*in/g, g]`` then reshaped; 4/3-bit values sit in an
  int8 container after a clip, ternary / binary weights are exported as their float values) and on
  static activations (per tensor, uint8 when asymmetric).  Dynamic per-token activation quantization
  has no QDQ form; it is exported as the float arithmetic that computes it (so outputs agree with
  PyTorch).  This is the format for TensorRT and for CPUs with VNNI / AMX.
* :func:`export_int8`: an integer model that is fast on a plain (AVX2) CPU in ONNX Runtime: every
  quantized Linear becomes ``DynamicQuantizeLinear`` (the activation, per tensor, uint8, at run
  time) -> ``MatMulInteger`` (our int8 weight codes, zero-points) -> ``Cast`` -> ``Mul`` (activation
  scale x our per-channel weight scales) -> ``Add`` (bias), the pattern ONNX Runtime fuses into its
  ``DynamicQuantizeMatMul`` kernel.  Quantized embeddings keep an int8 table with per-row scales
  (``Gather`` of codes and scales, then ``Mul``).  Conv2d likewise with ``ConvInteger`` (ONNX Runtime implements
  it for uint8 weights only: symmetric codes are shifted by 128), or kept as a float Conv with the
  dequantized weight (``conv="float"``, the default, because ``ConvInteger`` is slow in ONNX
  Runtime on CPU; see ``benchmarks/quant.py``: the weights are then stored as int8 codes and
  dequantized in the graph, which ONNX Runtime constant-folds at load).  Group-wise weights have no
  per-column form in ``MatMulInteger``: they are stored the same way (integer codes, float kernel)
  and listed under ``"int8 storage"`` in the returned summary.  The model's own activation
  quantizers are replaced by ONNX Runtime's dynamic per-tensor uint8 quantization.

The three exports call the model with positional tensors and write one output, ``"output"``
(:func:`lightning_compress.export.adapt.tensor_outputs`: Hugging Face models are called with
keywords ``input_names`` and their ``.logits`` written).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from lightning_compress.core.quantize import weight_quantizer
from lightning_compress.export.adapt import tensor_outputs
from lightning_compress.export.int8 import int8_model
from lightning_compress.export.plain import plain_copy

OPSET = 17


def write_onnx(
    model: nn.Module,
    args: tuple,
    path: str | os.PathLike,
    *,
    kwargs: dict[str, Any] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    opset: int = OPSET,
    constant_folding: bool = True,
) -> str:
    """Write ``model`` (called as ``model(*args, **kwargs)``) to the ONNX file ``path`` with
    ``torch.onnx.export(..., dynamo=False)`` (the TorchScript exporter, opset ``opset``), under
    ``no_grad``, exporter warnings silenced.  Names default to the exporter's own.
    ``constant_folding=False`` keeps integer weight codes as integers in the file (folding would
    turn the dequantization of :class:`~lightning_compress.export.int8.StoredInt8` into fp32
    constants).  Every ONNX file of the package is written here.  Returns ``str(path)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                model, tuple(args), str(path), kwargs=kwargs or None, dynamo=False, opset_version=opset,
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
                dynamic_axes=dynamic_axes, do_constant_folding=constant_folding,
            )
    return str(path)


def _export_tensors(model: nn.Module, args: tuple[torch.Tensor, ...], path: str | os.PathLike,
                    input_names: Sequence[str] | None, dynamic_axes: dict[str, dict[int, str]] | None, opset: int,
                    constant_folding: bool = True) -> str:
    """:func:`write_onnx` of :func:`~lightning_compress.export.adapt.tensor_outputs` (``model``):
    inputs named ``input_names`` (default ``input_0``, ``input_1``, ...), one output ``"output"``."""
    names = list(input_names) if input_names else [f"input_{i}" for i in range(len(args))]
    return write_onnx(tensor_outputs(model, input_names), tuple(args), path, input_names=names, output_names=["output"],
                      dynamic_axes=dynamic_axes, opset=opset, constant_folding=constant_folding)


def export_qdq(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    input_names: Sequence[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    opset: int = OPSET,
) -> str:
    """Export a fake-quantized model (``WeightQuant`` / ``ActQuant`` / :func:`quantize`) to an ONNX
    QDQ model at ``path`` (see module docstring).  ``args``: example inputs, positional (with
    ``input_names`` for Hugging Face models, which are called with keywords).  Returns the path."""
    return _export_tensors(model, args, path, input_names, dynamic_axes, opset)


def export_float(model: nn.Module, args: tuple[torch.Tensor, ...], path: str | os.PathLike,
                 input_names: Sequence[str] | None = None, dynamic_axes: dict[str, dict[int, str]] | None = None,
                 opset: int = OPSET) -> str:
    """Export ``model`` in plain fp32: a :func:`~lightning_compress.export.plain.plain_copy` with
    ``bake=False`` (every transform, quantizers and masks, taken off a copy; the stored weights are
    written).  Returns the path."""
    return _export_tensors(plain_copy(model, bake=False), args, path, input_names, dynamic_axes, opset)


def export_int8(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    input_names: Sequence[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    opset: int = OPSET,
    conv: Literal["float", "integer"] = "float",
) -> dict[str, list[str]]:
    """Export the integer CPU form (:func:`lightning_compress.export.int8.int8_model`) of a
    weight-quantized model to ``path`` (see module docstring).

    Returns ``{"integer": [module names run with integer kernels], "int8 storage": [integer codes in
    the file, dequantized at load], "float": [baked as float]}``.

    Raises:
        ValueError: the model has no weight quantizer (quantize it first).
    """
    if not any(weight_quantizer(m) is not None for m in model.modules()):
        raise ValueError("export_int8: the model has no weight quantizer; run lightning_compress.quantize or WeightQuant first.")
    if conv not in ("float", "integer"):
        raise ValueError(f"export_int8: `conv`={conv!r} must be 'float' or 'integer'.")
    m, summary = int8_model(model, conv)
    # no constant folding at export: it would turn the integer weight codes of StoredInt8 layers
    # back into fp32 constants in the file (ONNX Runtime folds them at load instead)
    _export_tensors(m, args, path, input_names, dynamic_axes, opset, constant_folding=False)
    return summary


__all__ = ["OPSET", "export_float", "export_int8", "export_qdq", "write_onnx"]
