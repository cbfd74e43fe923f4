"""Slim models: bake masks, remove pruned units, bake quantizers, strip the machinery.

:func:`clean` (``lightning_compress.clean``) -> a plain ``nn.Module`` of the user's own classes:
every mask transform (``"sparse_mask"`` of SparsePruning, ``"row_mask"``, ``"channel_mask"``,
``"head_mask"``, any other kind ending in ``mask``) is baked into the weights (zeros), pruned rows /
channels / heads are removed physically with every shape attribute updated
(:func:`lightning_compress.core.surgery.remove_units`), the fake-quantized (dequantized float) values
of quantized weights are baked in, and all wrappers, ``_lc_*`` buffers and attributes go
(:func:`lightning_compress.core.masking.strip`).  Activation quantization (``ActQuant``) is kept: each
quantized input gets a plain quantize-dequantize forward pre-hook with the quantizer's eval-mode
function (:mod:`lightning_compress.export.input_quant`), so the slim model computes what the trained
model computes in ``eval()``.  Parameters keep their dtype (a bf16-trained model stays bf16).

:func:`clean_for_storage` also returns what real low-bit storage needs: the quantized weights packed
in low bits (:func:`lightning_compress.core.quantize.pack_model`: int8, or 4/2/1-bit codes packed in
uint8, with scales), taken *after* pruned units are removed so the packed shapes are the slim ones,
and a twin of the slim model whose quantized Linear / Conv2d layers hold integer codes
(:class:`lightning_compress.export.int8.StoredInt8`), which is what ``torch.export`` saves: the files
hold integers, not fp32.  Masks run before quantizers, and structured masks zero the consumer's
columns too, so per-tensor / per-channel scales do not change when units are removed; group-wise
scales of a consumer whose columns are removed are recomputed on the slim shape.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from lightning_compress.core import masking
from lightning_compress.core.quantize import pack_model, weight_quantizer
from lightning_compress.core.surgery import remove_units, unit_groups
from lightning_compress.export.batchnorm import fold_batchnorm as _fold
from lightning_compress.export.input_quant import attach_input_quant, collect_input_quant
from lightning_compress.export.int8 import int8_model


def _is_mask_kind(kind: str) -> bool:
    return kind.endswith("mask")


def _weight_quantized(model: nn.Module) -> list[str]:
    """Qualified names of the modules with a ``"weight_quant"`` transform on some parameter."""
    return [
        name for name, m in model.named_modules()
        if any(masking.find_transform(m, p, "weight_quant") is not None for p in masking.transformed_params(m))
    ]


def _disabled_quantized(model: nn.Module) -> set[str]:
    """``"<module>.<param>"`` of every weight quantizer that is off (its schedule never switched it
    on): the trained model computes with the float weight there."""
    out: set[str] = set()
    for name, m in model.named_modules():
        for p in masking.transformed_params(m):
            q = weight_quantizer(m, p)
            if q is not None and not q.enabled:
                out.add(f"{name}.{p}" if name else p)
    return out


def pack_quantized(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Packed low-bit storage of every weight quantized by a :class:`~lightning_compress.core.quantize.WeightFakeQuant`
    (WeightQuant, :func:`lightning_compress.quantize`): ``{f"{module}.{param}.{key}": tensor}`` as
    :func:`lightning_compress.core.quantize.pack_model` lays it out, or None when there is none.
    Other ``"weight_quant"`` transforms (hand-written functions) cannot be packed; :func:`clean`
    bakes their values as floats.  A quantizer that is off (``enabled=False``: WeightQuant before its
    ``start_step``) is not packed: the model computes with the float weight, and so does every saved
    form.  Must run before the quantizers are stripped.
    """
    off = _disabled_quantized(model)
    packed = {k: v for k, v in pack_model(model).items() if k.rsplit(".", 1)[0] not in off}
    return packed or None


class StorageForms(NamedTuple):
    """What :func:`clean_for_storage` returns (unpacks as ``slim, packed, stored``)."""

    slim: nn.Module
    """The plain slim model (as :func:`clean` returns it)."""
    packed: dict[str, torch.Tensor]
    """``{f"{module}.{param}.{key}": tensor}``: packed low-bit weights of the slim shapes (empty when
    nothing is quantized)."""
    stored: nn.Module | None
    """A twin of ``slim`` whose quantized layers hold integer codes (for ``torch.export``), or None
    when nothing is quantized."""


def clean(model: nn.Module, inplace: bool = True, fold_batchnorm: bool = False) -> nn.Module:
    """Bake masks (and fake-quant values), remove pruned rows/channels/heads, strip the machinery.

    Args:
        model: a model carrying lightning-compress transforms (or none: then only stripped).
        inplace: edit ``model`` itself (default) or a deep copy.
        fold_batchnorm: also fold ``Conv2d -> BatchNorm2d`` pairs into the convs (eval semantics;
            see :func:`lightning_compress.export.fold_batchnorm`).  Off by default: the result then
            keeps the trained model's structure and can be fine-tuned; turn it on for deployment.

    Returns:
        The plain model (the user's own classes; ``model.lc_clean_notes`` lists what could not be
        removed, e.g. heads of ``nn.MultiheadAttention``, and with ``fold_batchnorm`` what was
        folded and which BatchNorms were left alone, with the reason).
    """
    return _clean(model, inplace, fold_batchnorm, storage=False).slim


def clean_for_storage(model: nn.Module, inplace: bool = True, fold_batchnorm: bool = False) -> StorageForms:
    """:func:`clean`, plus what real low-bit storage needs.

    Returns :class:`StorageForms` ``(slim, packed, stored)``: the plain slim model;
    ``{f"{module}.{param}.{key}": tensor}`` packed low-bit weights of the slim shapes (empty when
    nothing is quantized); and, when something is quantized, a twin of ``slim`` whose quantized
    layers hold integer codes (for ``torch.export``), else None.  With ``fold_batchnorm`` the same
    pairs are folded in ``slim`` and ``stored`` (weight-quantized convs are not folded: their packed
    codes stay exact).
    """
    return _clean(model, inplace, fold_batchnorm, storage=True)


def _clean(model: nn.Module, inplace: bool, fold_batchnorm: bool, storage: bool) -> StorageForms:
    if not inplace:
        model = copy.deepcopy(model)
    quantized = _weight_quantized(model)
    masking.bake(model, kinds=_is_mask_kind)
    groups = unit_groups(model)
    for m in model.modules():  # their values are in the weights now
        masking.drop(m, kinds=_is_mask_kind, inputs=False)
    notes = remove_units(model, groups)
    act = collect_input_quant(model)  # activation quantization stays (as a plain pre-hook)
    packed = (pack_quantized(model) or {}) if storage else {}
    stored = int8_model(model, storage_only=True)[0] if packed else None
    masking.bake(model)
    masking.strip(model)
    attach_input_quant(model, act)
    if stored is not None:
        attach_input_quant(stored, copy.deepcopy(act))
    if fold_batchnorm:
        notes += _fold(model, quantized)
        if stored is not None:
            _fold(stored, quantized)
    model.__dict__["lc_clean_notes"] = notes
    return StorageForms(model, packed, stored)
