"""Bit packing of unsigned integer codes into bytes (little-endian, low bits first).  Pure PyTorch."""

from __future__ import annotations

import torch


def container_bits(bits: int) -> int:
    """Bits used per value in storage: 8 -> 8, 4 and 3 -> 4 (nibbles), 2 -> 2, 1 -> 1; 5, 6 and 7 -> 8
    (one code per byte: only one-shot GPTQ / RTN make these widths)."""
    return {8: 8, 7: 8, 6: 8, 5: 8, 4: 4, 3: 4, 2: 2, 1: 1}[bits]


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (< 2**bits) into a flat uint8 tensor, low bits first (little-endian)."""
    cb = container_bits(bits)
    flat = codes.reshape(-1).to(torch.uint8)
    if cb == 8:
        return flat.clone()
    per = 8 // cb
    pad = (-flat.numel()) % per
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    flat = flat.reshape(-1, per).to(torch.int32)
    shifts = torch.arange(per, dtype=torch.int32) * cb
    return (flat << shifts).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``numel`` unsigned codes as uint8."""
    cb = container_bits(bits)
    if cb == 8:
        return packed.reshape(-1)[:numel].to(torch.uint8)
    per = 8 // cb
    shifts = torch.arange(per, dtype=torch.int32) * cb
    vals = (packed.reshape(-1, 1).to(torch.int32) >> shifts) & ((1 << cb) - 1)
    return vals.reshape(-1)[:numel].to(torch.uint8)
