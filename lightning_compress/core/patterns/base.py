"""``Pattern``: how per-weight scores become units (what is pruned at once) and units become masks;
the parser registry behind :func:`parse_pattern`.

Weights are seen as 2-D ``[out, in]``: a Linear weight as it is, a Conv weight ``[out, in, kh, kw]``
as ``[out, in*kh*kw]`` (row = one output channel; columns in ``in, kh, kw`` order).

A pattern object answers:

* :attr:`Pattern.name` (the string it parses from) and :attr:`Pattern.max_sparsity` (fraction of a
  weight it can zero at most);
* :meth:`Pattern.check` (shape, where): raise ``ValueError`` when it does not fit a weight;
* :meth:`Pattern.unit_elems` (shape): weights zeroed per unit of a weight of that shape;
  :meth:`Pattern.unit_costs` (2-D scores -> flat unit costs, lower = pruned first);
  :meth:`Pattern.mask_from_pruned` (flat bool pruned units -> bool keep-mask of the weight's shape);
  :meth:`Pattern.unit_costs_into` / :meth:`Pattern.mask_into`: the same written into a caller's
  tensor (a prune event's reusable cost buffer, the mask buffer itself); the defaults copy the
  results of the two methods above, a pattern may override them to skip the temporaries.

A new grammar is one class in one file: subclass :class:`Pattern`, implement ``parse(text)``
(return an instance, or None when ``text`` is not in its grammar; raise ``ValueError`` when it is but
the values are wrong) and decorate it with :func:`register_pattern`.
"""

from __future__ import annotations

import math
from typing import ClassVar, TypeVar

import torch


def as_2d(tensor: torch.Tensor) -> torch.Tensor:
    """View a weight as ``[out, in*prod(kernel)]`` (Linear: unchanged)."""
    if tensor.dim() == 1:
        return tensor.view(-1, 1)
    return tensor.reshape(tensor.shape[0], -1)


def shape_2d(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    shape = tuple(shape)
    if len(shape) == 1:
        return shape[0], 1
    return shape[0], int(math.prod(shape[1:]))


class Pattern:
    """Base of every pattern (see the module docstring)."""

    #: how the grammar reads, for the "not understood" error (e.g. "'N:M' such as '2:4' (keep N of every M)")
    grammar: ClassVar[str] = ""

    @classmethod
    def parse(cls, text: str) -> "Pattern | None":
        """An instance when ``text`` (stripped, lower case) is in this class's grammar, else None."""
        return None

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def max_sparsity(self) -> float:
        return 1.0

    def check(self, shape: tuple[int, ...], where: str) -> None:
        """Raise ``ValueError`` (naming ``where``, the shape and the fix) when the pattern does not fit."""

    def unit_elems(self, shape: tuple[int, ...] | None = None) -> int:
        """Weights zeroed per unit (``shape``: the weight's full shape, for patterns whose unit size depends on it)."""
        raise NotImplementedError

    def unit_costs(self, score2d: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mask_from_pruned(
        self, pruned_units: torch.Tensor, shape: tuple[int, ...], score2d: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def unit_costs_into(self, score2d: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """:meth:`unit_costs` written into the flat tensor ``out`` (converted to its dtype); returns ``out``."""
        return out.copy_(self.unit_costs(score2d))

    def mask_into(
        self, pruned_units: torch.Tensor, shape: tuple[int, ...], score2d: torch.Tensor | None, out: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`mask_from_pruned` written into the bool tensor ``out`` of ``shape`` (it may be a
        non-contiguous view, e.g. a transposed mask); returns ``out``."""
        return out.copy_(self.mask_from_pruned(pruned_units, shape, score2d))


#: registered pattern classes, tried in order by :func:`parse_pattern`
PATTERNS: list[type[Pattern]] = []

P = TypeVar("P", bound=type[Pattern])


def register_pattern(cls: P) -> P:
    """Class decorator: :func:`parse_pattern` tries ``cls.parse`` (after the ones registered before)."""
    if cls not in PATTERNS:
        PATTERNS.append(cls)
    return cls


def parse_pattern(pattern: "str | Pattern") -> Pattern:
    """Parse a pattern string with the registered grammars (a :class:`Pattern` passes through).

    Built in: ``"unstructured"`` (``"1x1"``), ``"NxM"`` blocks, ``"N:M"`` groups.

    Raises:
        ValueError: no grammar understands it, or one does and the values are wrong.
    """
    if isinstance(pattern, Pattern):
        return pattern
    forms = ", or ".join(c.grammar for c in PATTERNS if c.grammar)
    if not isinstance(pattern, str):
        raise ValueError(f"`pattern` must be a string ({forms}) or a Pattern object, got {pattern!r}.")
    text = pattern.strip().lower()
    for cls in PATTERNS:
        try:
            found = cls.parse(text)
        except ValueError as err:
            raise ValueError(f"`pattern`={pattern!r}: {err}") from None
        if found is not None:
            return found
    raise ValueError(f"`pattern`={pattern!r} is not understood. Use {forms}.")


__all__ = ["PATTERNS", "Pattern", "as_2d", "parse_pattern", "register_pattern", "shape_2d"]
