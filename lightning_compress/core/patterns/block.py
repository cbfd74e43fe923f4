"""``"NxM"`` blocks (``"4x1"``) and ``"unstructured"`` (= ``"1x1"``): a block is N consecutive output
rows x M consecutive input columns of the 2-D weight view, kept or zeroed whole.  N must divide
``out`` and M must divide ``in`` (no padding: a block that does not fit is an error at setup)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from lightning_compress.core.patterns.base import Pattern, register_pattern, shape_2d

_BLOCK_RX = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")
_ELEMENTWISE = ("unstructured", "1x1", "element", "elementwise")


@register_pattern
@dataclass(frozen=True)
class BlockPattern(Pattern):
    """``"NxM"``: N output rows x M input columns."""

    n: int
    m: int

    grammar = "'unstructured' (or '1x1'), a block 'NxM' such as '4x1' (N output rows x M input columns)"

    @classmethod
    def parse(cls, text: str) -> "BlockPattern | None":
        if text in _ELEMENTWISE:
            return cls(1, 1)
        match = _BLOCK_RX.match(text)
        if not match:
            return None
        n, m = int(match.group(1)), int(match.group(2))
        if n < 1 or m < 1:
            raise ValueError("block sizes must be >= 1 (e.g. '4x1').")
        return cls(n, m)

    @property
    def name(self) -> str:
        return "unstructured" if (self.n, self.m) == (1, 1) else f"{self.n}x{self.m}"

    @property
    def max_sparsity(self) -> float:
        return 1.0

    def check(self, shape: tuple[int, ...], where: str) -> None:
        out, inp = shape_2d(shape)
        if out % self.n or inp % self.m:
            raise ValueError(
                f"`pattern`={self.name!r} does not fit {where} with weight shape {tuple(shape)} "
                f"(seen as [out={out}, in={inp}]): {self.n} must divide {out} and {self.m} must divide {inp}. "
                f"Choose a pattern whose block divides it, or leave this module out with `exclude`."
            )

    def unit_elems(self, shape: tuple[int, ...] | None = None) -> int:
        return self.n * self.m

    def unit_costs(self, score2d: torch.Tensor) -> torch.Tensor:
        """Mean score of each block, flattened row-major over ``[out/N, in/M]``."""
        out, inp = score2d.shape
        if (self.n, self.m) == (1, 1):
            return score2d.reshape(-1)
        return score2d.reshape(out // self.n, self.n, inp // self.m, self.m).mean(dim=(1, 3)).reshape(-1)

    def mask_from_pruned(
        self, pruned_units: torch.Tensor, shape: tuple[int, ...], score2d: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Bool keep-mask of ``shape`` from a flat bool ``pruned_units`` vector."""
        out, inp = shape_2d(shape)
        keep = ~pruned_units.reshape(out // self.n, inp // self.m)
        if (self.n, self.m) != (1, 1):
            keep = keep.repeat_interleave(self.n, 0).repeat_interleave(self.m, 1)
        return keep.reshape(shape)

    def unit_costs_into(self, score2d: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """As :meth:`unit_costs` (the same block means, bit for bit), computed into ``out``."""
        out_rows, inp = score2d.shape
        if (self.n, self.m) == (1, 1) or out.dtype != score2d.dtype or out.device != score2d.device:
            return out.copy_(self.unit_costs(score2d))
        a, b = out_rows // self.n, inp // self.m
        if self.m == 1:  # the same reduction over a 3-D view (the size-1 dim dropped): one pass, faster
            torch.mean(score2d.reshape(a, self.n, inp), dim=1, out=out.view(a, b))
        else:
            torch.mean(score2d.reshape(a, self.n, b, self.m), dim=(1, 3), out=out.view(a, b))
        return out

    def mask_into(
        self, pruned_units: torch.Tensor, shape: tuple[int, ...], score2d: torch.Tensor | None, out: torch.Tensor
    ) -> torch.Tensor:
        """As :meth:`mask_from_pruned`, each block's keep bit written straight into ``out`` (no
        weight-sized temporary) when ``out`` is contiguous and on ``pruned_units``' device."""
        if not out.is_contiguous() or out.device != pruned_units.device:
            return out.copy_(self.mask_from_pruned(pruned_units, shape, score2d))
        rows, inp = shape_2d(shape)
        a, b = rows // self.n, inp // self.m
        units = pruned_units.reshape(a, 1, b, 1).expand(a, self.n, b, self.m)
        torch.logical_not(units, out=out.view(a, self.n, b, self.m))
        return out


__all__ = ["BlockPattern"]
