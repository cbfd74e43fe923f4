"""Export: turn a compressed model into a plain one, save it, load it, write ONNX.

Pure PyTorch (never imports ``lightning``): a plain-PyTorch user calls :func:`clean` and
:func:`save_slim` directly.

One verb per meaning.  "Machinery" = what lightning-compress puts on a model: the class swap that
applies transforms in forward, the transforms (masks, fake quantizers), ``_lc_*`` buffers and
attributes.

=============================================  ===========================================================
verb (takes -> returns)                        what it changes
=============================================  ===========================================================
:func:`lightning_compress.core.masking.bake`   in place: writes each transformed parameter's effective
(model, kinds=None) -> {param: [kinds]}        value (through the transforms of ``kinds``) into the
                                               parameter; the transforms stay registered.
:func:`lightning_compress.core.masking.drop`   in place: removes one module's transforms of ``kinds`` /
(module, kinds, owner=) -> count               ``owner``, without baking; the module is unwrapped when
                                               none are left.
:func:`lightning_compress.core.masking.strip`  in place: all machinery off the whole model, without
(model) -> model                               baking (classes back, ``_lc_*`` buffers and attributes
                                               deleted); parameters keep their stored values.
:func:`plain_copy` (model, bake=True)          nothing: a deep copy, baked (``bake=True``: computes what
-> copy                                        ``model`` computes) or not (the uncompressed float model),
                                               then stripped; shapes unchanged.
:func:`clean` (model, inplace=True,            ``model`` itself (or a copy with ``inplace=False``):
fold_batchnorm=False) -> slim model            masks baked, pruned units removed, quantizer values baked,
                                               stripped; the user's own classes with slim shapes.
:func:`clean_for_storage` (same arguments)     as :func:`clean`, and also returns the packed low-bit
-> StorageForms(slim, packed, stored)          weights and an integer-code twin for ``torch.export``.
:func:`fold_batchnorm` (model, skip=())        in place: ``Conv2d -> BatchNorm2d`` pairs folded into
-> notes                                       the conv (eval semantics).
:func:`save_slim` (model, dir, example, ...)   nothing (sets eval during export): writes ``model.pt2``,
-> {format: path}                              ``model.safetensors``, ``model.onnx``.
:func:`load_slim_state` (path) -> state dict   nothing: reads ``model.safetensors`` (packed weights
                                               dequantized); :func:`load_slim` (model, path) loads it
                                               with activation quantization; :func:`load_program`
                                               (path) -> module; :func:`load_onnx` (path) -> session.
:func:`staged_dir` (dir, overwrite)            a temporary sibling folder swapped in whole on success
                                               (:func:`check_output_dir` refuses bad folders first).
:func:`export_float` / :func:`export_qdq`      nothing: ONNX of a plain fp32 copy / of the fake-quantized
(model, args, path, ...) -> path               model (QDQ); one writer, :func:`write_onnx`.
:func:`export_int8` (model, args, path, ...)   nothing: ONNX of :func:`int8_model` (integer codes,
-> summary                                     integer kernels where ONNX Runtime has them).
=============================================  ===========================================================

Modules: :mod:`~lightning_compress.export.slim` (clean, clean_for_storage, pack_quantized),
:mod:`~lightning_compress.export.plain` (plain_copy), :mod:`~lightning_compress.export.batchnorm`
(fold_batchnorm), :mod:`~lightning_compress.export.save` (save_slim, write_json),
:mod:`~lightning_compress.export.load` (load_slim_state, load_slim, load_program, load_onnx),
:mod:`~lightning_compress.export.folder` (check_output_dir, staged_dir),
:mod:`~lightning_compress.export.input_quant` (InputQuantize: activation quantization in a slim model),
:mod:`~lightning_compress.export.program` (export_program: ``torch.export`` with a dynamic batch),
:mod:`~lightning_compress.export.onnx` (write_onnx and the three ONNX exports),
:mod:`~lightning_compress.export.int8` (Int8Linear, Int8Conv2d, Int8Embedding, StoredInt8,
int8_model), :mod:`~lightning_compress.export.adapt` (split_example; tensor_outputs: how a model,
e.g. a Hugging Face one, is called and what it returns for ONNX).
"""

from lightning_compress.export.adapt import split_example, tensor_outputs
from lightning_compress.export.batchnorm import fold_batchnorm
from lightning_compress.export.slim import StorageForms, clean, clean_for_storage, pack_quantized
from lightning_compress.export.int8 import Int8Conv2d, Int8Embedding, Int8Linear, StoredInt8, int8_model
from lightning_compress.export.folder import check_output_dir, staged_dir
from lightning_compress.export.input_quant import InputQuantize, input_quantizers
from lightning_compress.export.load import load_onnx, load_program, load_slim, load_slim_state
from lightning_compress.export.onnx import export_float, export_int8, export_qdq, write_onnx
from lightning_compress.export.plain import plain_copy
from lightning_compress.export.program import export_program
from lightning_compress.export.formats import FORMATS, SaveJob, register_format
from lightning_compress.export.save import save_slim, state_for_safetensors, unique_tensors, write_json

__all__ = [
    "FORMATS",
    "InputQuantize",
    "SaveJob",
    "register_format",
    "Int8Conv2d",
    "Int8Embedding",
    "Int8Linear",
    "StorageForms",
    "StoredInt8",
    "check_output_dir",
    "clean",
    "clean_for_storage",
    "export_float",
    "export_int8",
    "export_program",
    "export_qdq",
    "fold_batchnorm",
    "input_quantizers",
    "int8_model",
    "load_onnx",
    "load_program",
    "load_slim",
    "load_slim_state",
    "pack_quantized",
    "plain_copy",
    "save_slim",
    "split_example",
    "staged_dir",
    "state_for_safetensors",
    "tensor_outputs",
    "unique_tensors",
    "write_json",
    "write_onnx",
]
