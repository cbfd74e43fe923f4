"""The registry of model families and the queries the pruners, surgery and distillation call.

See :mod:`lightning_compress.core.families` for the semantics and how to add a family.  Families inside
this package import :func:`register_family` from here (not from the package), so the package's import
of its built-in families is not an import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from torch import nn

from lightning_compress.core.families.base import AttentionInfo, Family
from lightning_compress.core.graph import ChannelSpace, TracingError, trace_channel_spaces

#: the registered families, asked in this order
FAMILIES: list[Family] = []

F = TypeVar("F", bound=type[Family])


def register_family(cls: F) -> F:
    """Class decorator: register an instance of ``cls``; a family of the same ``name`` is replaced in place.

    Raises:
        TypeError: ``cls`` is not a :class:`~.base.Family` subclass or has no ``name``.
    """
    if not (isinstance(cls, type) and issubclass(cls, Family)):
        raise TypeError(f"register_family: {cls!r} is not a subclass of lightning_compress.core.families.base.Family.")
    if not cls.name:
        raise TypeError(f"register_family: {cls.__name__} has no `name`; set a short unique class attribute `name = ...`.")
    family = cls()
    for i, f in enumerate(FAMILIES):
        if f.name == cls.name:
            FAMILIES[i] = family
            break
    else:
        FAMILIES.append(family)
    return cls


def unregister_family(name: str) -> None:
    """Remove the family called ``name`` (no error when there is none)."""
    FAMILIES[:] = [f for f in FAMILIES if f.name != name]


def get_family(name: str) -> Family:
    """The registered family called ``name``.

    Raises:
        KeyError: no family has that name (the message lists the registered ones).
    """
    for f in FAMILIES:
        if f.name == name:
            return f
    raise KeyError(f"no model family {name!r} is registered; registered: {[f.name for f in FAMILIES]}")


def describe(method: str | None = None) -> str:
    """``"name (description); ..."`` of the families (only those that override ``method``, e.g.
    ``"attention"``, when given), for error messages."""
    fams = [f for f in FAMILIES if method is None or getattr(type(f), method) is not getattr(Family, method)]
    return "; ".join(f"{f.name} ({f.description})" if f.description else f.name for f in fams) or "none registered"


# ----------------------------------------------------------------------------------- attention heads
def find_attentions(model: nn.Module) -> dict[str, AttentionInfo]:
    """``{qualified name: AttentionInfo}`` for every module of ``model`` that a family recognises as an
    attention, in ``named_modules`` order."""
    named = dict(model.named_modules())
    found: dict[str, AttentionInfo] = {}
    for name, module in named.items():
        for f in FAMILIES:
            info = f.attention(name, module, named)
            if info is not None:
                found[name] = info
                break
    return found


# ----------------------------------------------------------------------------------- coupled layers
def family_channel_spaces(model: nn.Module) -> tuple[list[ChannelSpace], list[str]]:
    """Coupled layers the families know without tracing: ``(spaces, tags of the families that found
    some)``.  A producer claimed by an earlier family is not given to a later one."""
    named = dict(model.named_modules())
    spaces: list[ChannelSpace] = []
    tags: list[str] = []
    claimed: set[str] = set()
    for f in FAMILIES:
        new = [sp for sp in f.channel_spaces(model, named) if not (set(sp.producers) & claimed)]
        if new:
            spaces.extend(new)
            claimed.update(n for sp in new for n in sp.producers)
            tags.append(f.heuristic or f"{f.name}_heuristic")
    return spaces, tags


def channel_spaces(model: nn.Module) -> tuple[list[ChannelSpace], str]:
    """Channel spaces by ``torch.fx`` tracing, or from the families when fx cannot trace ``model``.

    When fx traces, the families' spaces whose layers fx never saw (they live inside a module fx
    keeps as a leaf, e.g. ``nn.TransformerEncoderLayer``'s ``linear1 -> linear2``) are added.

    Returns ``(spaces, how)``: ``how`` is ``"fx"`` (``"fx+<tags>"`` with such additions), or the
    families' tags joined by ``"+"`` (``"hf_heuristic"`` for the BERT-family FFN blocks).

    Raises:
        ValueError: fx fails and no family knows the model's blocks (the message has fx's error).
    """
    try:
        traced = trace_channel_spaces(model)
        seen = {id(m) for sp in traced for m in [*sp.producers.values(), *sp.norms.values(), *sp.consumers.values()]}
        extra, tags = family_channel_spaces(model)
        extra = [sp for sp in extra if not any(id(m) in seen for m in [*sp.producers.values(), *sp.consumers.values()])]
        return traced + extra, "+".join(["fx", *tags]) if extra else "fx"
    except TracingError as err:
        spaces, tags = family_channel_spaces(model)
        if spaces:
            return spaces, "+".join(tags)
        raise ValueError(
            f"could not find which layers are coupled in {type(model).__name__}: {err}. No model family "
            f"recognised its blocks either (known: {describe('channel_spaces')}). Pass `related_modules` "
            f"({{producer regex: [consumer regexes]}}) to name the consumers by hand."
        ) from None


def after_unit_removal(model: nn.Module) -> None:
    """Every family fixes the config fields it knows from ``model``'s slim shapes (after ``clean``
    removed units)."""
    for f in FAMILIES:
        f.after_unit_removal(model)


# ----------------------------------------------------------------------------------- layer stacks
def layer_count(model: nn.Module) -> int | None:
    """The number of layers ``model`` declares (first family that knows), else ``None``."""
    for f in FAMILIES:
        n = f.layer_count(model)
        if n is not None:
            return n
    return None


def after_layer_reduction(model: nn.Module, kept_layers: Sequence[nn.Module], num_before: int, keep: Sequence[int]) -> None:
    """Every family fixes what it knows after ``model``'s stack went from ``num_before`` layers to
    ``kept_layers`` (original indices ``keep``)."""
    for f in FAMILIES:
        f.after_layer_reduction(model, kept_layers, num_before, keep)


def supports_attentions(model: nn.Module) -> bool:
    """Whether ``model`` returns attention maps for ``output_attentions=True`` (a Hugging Face model
    with eager attention)."""
    return any(f.returns_attentions(model) for f in FAMILIES)


# ----------------------------------------------------------------------------------- calling the model
def takes_keyword_inputs(model: nn.Module) -> bool:
    """Whether ``model`` is called with named inputs (a Hugging Face ``PreTrainedModel``): an exporter
    given positional example inputs plus their names then calls ``model(**dict(zip(names, args)))``."""
    return any(f.takes_keyword_inputs(model) for f in FAMILIES)

