"""The one-shot pruners' keep-masks, stored one bit per weight while nobody trains.

A one-shot pruner's result rides on a ``"sparse_mask"`` weight transform (:mod:`lightning_compress.core.masking`),
as ``SparsePruning``'s does, so fine-tuning afterwards keeps the pruned weights at zero and ``clean`` /
``RedundancyClean`` / the report see the mask.  A bool mask costs one byte per weight (SmolLM2-135M's
decoder: 106M weights, 101 MiB, held through calibration and evaluation), so it is stored packed instead:

* ``_lc_mask_bits`` (uint8 ``[ceil(numel / 8)]``, non-persistent buffer): bit ``k % 8`` of byte ``k // 8``
  is the keep bit of weight ``k`` in row-major order of the module's own weight layout (``Conv1D``:
  ``[in, out]``), low bits first (:func:`~lightning_compress.core.bit_packing.pack_bits` with 1 bit).
  Exact: the mask is stored as given, never derived from the weights, so a kept weight that is zero by
  chance stays kept and a pruned one stays pruned.
* :class:`PackedKeepMask` (the transform): ``weight * keep``.  In a forward that needs a gradient of the
  weight (training) it unpacks the mask once into the bool buffer ``_lc_mask`` (the weight's shape, as
  ``SparsePruning``'s) and keeps it, so fine-tuning pays no unpacking per step; otherwise (calibration,
  evaluation, ``clean``) it unpacks a transient copy per call.

Both buffers move with the module (``.to``); ``masking.strip`` removes them (``_lc_`` names).  Pure PyTorch.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_compress.core import masking

BITS_BUFFER = masking.private_name("mask_bits")
FULL_BUFFER = masking.private_name("mask")

_SHIFTS: dict[torch.device, torch.Tensor] = {}


def pack_keep(keep: torch.Tensor) -> torch.Tensor:
    """A bool keep-mask as uint8 bytes, 8 weights a byte (row-major, low bits first): the layout of
    :func:`~lightning_compress.core.bit_packing.pack_bits` with 1 bit, in uint8 arithmetic (no int32
    temporary four times the mask's size)."""
    flat = keep.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = torch.arange(8, dtype=torch.uint8, device=flat.device)
    return (flat.reshape(-1, 8) << shifts).sum(1, dtype=torch.uint8)


def unpack_keep(bits: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_keep`: the bool mask of ``shape`` (uint8 shifts, no wider temporary)."""
    shifts = _SHIFTS.get(bits.device)
    if shifts is None:
        shifts = _SHIFTS[bits.device] = torch.arange(8, dtype=torch.uint8, device=bits.device)
    numel = 1
    for d in shape:
        numel *= d
    flat = (bits.reshape(-1, 1) >> shifts).bitwise_and_(1).reshape(-1)[:numel]
    return flat.view(torch.bool).reshape(shape)


class PackedKeepMask:
    """Weight transform ``fn(module, weight) = weight * keep`` from the module's ``_lc_mask_bits``
    (see the module docstring).  ``shape``: the weight's full shape in the module's layout."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(int(d) for d in shape)

    def keep(self, module: nn.Module) -> torch.Tensor:
        """The bool keep-mask (module layout): the training copy when there is one, else unpacked."""
        full = module._buffers.get(FULL_BUFFER)
        bits = module._buffers[BITS_BUFFER]
        if full is not None and full.device == bits.device:
            return full
        return unpack_keep(bits, self.shape)

    def __call__(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        keep = self.keep(module)
        if torch.is_grad_enabled() and weight.requires_grad and module._buffers.get(FULL_BUFFER) is not keep:
            module.register_buffer(FULL_BUFFER, keep, persistent=False)  # training: unpack once, keep it
        return masking.apply_mask(weight, keep)

    def __repr__(self) -> str:
        return f"PackedKeepMask(shape={self.shape})"


def register_packed_mask(module: nn.Module, keep: torch.Tensor, owner: str, kind: str, name: str) -> PackedKeepMask:
    """Store ``keep`` (bool, the module's weight layout and full shape) packed on ``module`` and add the
    transform (mask priority) under ``owner`` / ``kind``."""
    module._buffers.pop(FULL_BUFFER, None)
    module.register_buffer(BITS_BUFFER, pack_keep(keep.bool()), persistent=False)
    fn = PackedKeepMask(tuple(keep.shape))
    masking.add_param_transform(module, "weight", owner, fn, kind=kind, priority=masking.MASK_PRIORITY, module_name=name)
    return fn


def stored_keep(module: nn.Module, kind: str = "sparse_mask") -> torch.Tensor | None:
    """The bool keep-mask of ``module``'s ``kind`` weight transform in the module's own weight layout
    (packed or a plain ``_lc_mask`` buffer), or None when it has none."""
    t = masking.find_transform(module, "weight", kind)
    if t is None:
        return None
    if isinstance(t.fn, PackedKeepMask):
        return t.fn.keep(module)
    return module._buffers.get(FULL_BUFFER)


def has_mask_storage(module: nn.Module) -> bool:
    """True when ``module`` holds a one-shot keep-mask's buffers (packed, or a plain bool ``_lc_mask``)."""
    return module._buffers.get(BITS_BUFFER) is not None or module._buffers.get(FULL_BUFFER) is not None


__all__ = ["BITS_BUFFER", "FULL_BUFFER", "PackedKeepMask", "has_mask_storage", "pack_keep", "register_packed_mask",
           "stored_keep", "unpack_keep"]
