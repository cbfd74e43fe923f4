"""Which modules: regex include/exclude over qualified module names, restricted to module types.

Semantics: a module is selected when its qualified name (``model.named_modules()``) matches at least
one ``modules`` regex (``re.search``, so ``"encoder"`` matches any name containing it; anchor with
``^``/``$`` for exact names) and no ``exclude`` regex, and it is an instance of one of ``types``.
With ``modules=None`` every module of the given types is a candidate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from torch import nn

from lightning_compress.core.args import check_regexes

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


def _compile(patterns: Sequence[str] | None, argument: str, owner: str) -> list[re.Pattern[str]]:
    """Compiled regexes (checks of :func:`lightning_compress.core.args.check_regexes`; an empty list is
    "no filter" here: the public entry points refuse ``modules=[]`` before they get here)."""
    checked = check_regexes(patterns, argument, owner, allow_empty=True) or []
    return [re.compile(p) for p in checked]


def last_module_of_types(model: nn.Module, types: tuple[type[nn.Module], ...] = DEFAULT_TYPES) -> str | None:
    """Name of the last registered module of ``types`` (the final classifier in the usual layouts)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, types):
            last = name
    return last


def apply_exclude(
    model: nn.Module, chosen: dict[str, nn.Module], exclude: Sequence[str] | None, owner: str
) -> dict[str, nn.Module]:
    """``chosen`` without the modules whose name matches an ``exclude`` regex.

    Raises:
        ValueError: a regex is invalid or matches no module of ``model`` at all.
    """
    excl = _compile(exclude, "exclude", owner)
    names = [n for n, _ in model.named_modules() if n]
    for rx in excl:
        if not any(rx.search(n) for n in names):
            raise ValueError(
                f"{owner}: `exclude` regex {rx.pattern!r} matches no module of {type(model).__name__}. "
                f"Fix the regex or remove it."
            )
    return {n: m for n, m in chosen.items() if not any(rx.search(n) for rx in excl)}


def filter_names(
    candidates: Sequence[str],
    modules: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    owner: str = "lightning_compress",
    what: str = "module",
) -> list[str]:
    """The ``candidates`` (kept in order) that match a ``modules`` regex (every one when ``modules`` is
    None) and no ``exclude`` regex, by the rules in the module docstring.

    For callers whose candidates are not simply "modules of some types" (attentions found by a model
    family, the producers of coupled layers).  ``exclude`` regexes need not match a candidate here:
    check them against the whole model with :func:`apply_exclude`.

    Args:
        what: what a candidate is, for the error message (``"Linear layer"``, ``"attention"``).

    Raises:
        ValueError: a regex is invalid, or a ``modules`` regex matches no candidate.
    """
    include = _compile(modules, "modules", owner)
    excl = _compile(exclude, "exclude", owner)
    for rx in include:
        if not any(rx.search(n) for n in candidates):
            raise ValueError(
                f"{owner}: `modules` regex {rx.pattern!r} matches no {what}; candidates: {list(candidates[:6])}."
            )
    return [
        n for n in candidates
        if (not include or any(rx.search(n) for rx in include)) and not any(rx.search(n) for rx in excl)
    ]


def select_modules(
    model: nn.Module,
    modules: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    types: Iterable[type[nn.Module]] = DEFAULT_TYPES,
    *,
    owner: str = "lightning_compress",
    exclude_last: bool = False,
) -> dict[str, nn.Module]:
    """Return ``{qualified name: module}`` selected by the rules in the module docstring.

    Args:
        modules: include regexes; ``None`` = every module of ``types``.
        exclude: exclude regexes (applied after ``modules``).
        types: module classes that can be targeted.
        owner: name used in error messages (the callback's class name).
        exclude_last: when ``modules`` is None, also leave out the last module of ``types``
            (the final classifier; pruning or quantizing it usually hurts most).

    Raises:
        ValueError: a regex is invalid, an include regex matches no module of ``types``, an exclude
            regex matches nothing, or nothing is selected at all.
    """
    types = tuple(types)
    include = _compile(modules, "modules", owner)
    candidates = [(n, m) for n, m in model.named_modules() if n and isinstance(m, types)]
    type_names = ", ".join(t.__name__ for t in types)
    if include:
        for rx in include:
            if not any(rx.search(n) for n, _ in candidates):
                near = [n for n, _ in model.named_modules() if n and rx.search(n)]
                hint = (
                    f" It matches {near[:5]} but none of those is a {type_names}."
                    if near
                    else f" Candidate names look like: {[n for n, _ in candidates[:6]]}."
                )
                raise ValueError(
                    f"{owner}: `modules` regex {rx.pattern!r} matches no {type_names} module of "
                    f"{type(model).__name__}.{hint} Fix the regex or remove it."
                )
        chosen = [(n, m) for n, m in candidates if any(rx.search(n) for rx in include)]
    else:
        chosen = list(candidates)
        if exclude_last and chosen:
            last = last_module_of_types(model, types)
            chosen = [(n, m) for n, m in chosen if n != last]
    chosen = list(apply_exclude(model, dict(chosen), exclude, owner).items())
    if not chosen:
        raise ValueError(
            f"{owner}: no {type_names} module of {type(model).__name__} is left to compress after "
            f"`modules`={list(modules) if modules else None} and `exclude`={list(exclude) if exclude else None}. "
            f"Widen `modules` or narrow `exclude`."
        )
    return dict(chosen)
