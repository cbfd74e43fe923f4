"""Reading a DeepSpeed config: the file or dict, its ``compression_training`` section, and checked values.

Every error is a ``ValueError`` that names the JSON path of the offending key
(``compression_training.sparse_pruning.shared_parameters.dense_ratio``); every warning names it too and
points at the caller's line, not at this package.  Translators (one file per DeepSpeed method, see
:mod:`lightning_compress.deepspeed.registry`) build on these helpers and nothing else of DeepSpeed's layout.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECTION = "compression_training"
#: keys of one entry of ``different_groups``
GROUP_KEYS = frozenset({"params", "modules", "related_modules"})
#: keys of a method that has ``shared_parameters`` + ``different_groups`` (all but layer reduction)
METHOD_KEYS = frozenset({"shared_parameters", "different_groups"})


def config_error(path: str, message: str) -> ValueError:
    """``ValueError("DeepSpeed config `<path>`: <message>")``."""
    return ValueError(f"DeepSpeed config `{path}`: {message}")


def warn(path: str, message: str) -> None:
    """``UserWarning("DeepSpeed config `<path>` <message>")``, attributed to the first caller outside
    this package (the user's ``from_deepspeed_config`` / strategy line)."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2 = warn's caller
    while frame is not None and frame.f_globals.get("__name__", "").startswith(__package__ or __name__):
        frame, level = frame.f_back, level + 1
    warnings.warn(f"DeepSpeed config `{path}`{message}", stacklevel=level)


def nearest(key: str, allowed: Collection[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``allowed`` (difflib), or ``""`` when none is close."""
    import difflib

    close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(d: Any, allowed: Collection[str], path: str) -> dict[str, Any]:
    """``d`` itself, once it is a JSON object whose keys are all in ``allowed``; an unknown key raises
    naming its JSON path and the nearest valid key."""
    if not isinstance(d, dict):
        raise config_error(path, f"expected a JSON object, got {type(d).__name__} {d!r}")
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        where = "; ".join(f"{path}.{k}{nearest(k, allowed)}" for k in unknown)
        raise config_error(
            f"{path}.{unknown[0]}",
            f"unknown key(s) {unknown} (at {where}); supported here: {sorted(allowed)}. Remove or rename them.",
        )
    return d


def as_int(value: Any, path: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise config_error(path, f"{value!r} must be an integer >= {minimum}")
    return value


def as_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise config_error(path, f"{value!r} must be true or false")
    return value


def one_of(value: Any, choices: tuple[str, ...], path: str) -> str:
    if value not in choices:
        raise config_error(path, f"{value!r} must be {' or '.join(repr(c) for c in choices)}")
    return value


def sparsity(dense_ratio: Any, path: str) -> float:
    """DeepSpeed's ``dense_ratio`` (fraction of weights kept, in (0, 1]) -> ``sparsity`` (fraction zeroed)."""
    if isinstance(dense_ratio, bool) or not isinstance(dense_ratio, (int, float)) or not 0.0 < dense_ratio <= 1.0:
        raise config_error(path, f"dense_ratio={dense_ratio!r} must be a number in (0, 1] (the fraction of weights kept)")
    return round(1.0 - float(dense_ratio), 12)


def module_regexes(value: Any, path: str) -> list[str] | None:
    """DeepSpeed's module scope -> ``modules`` / ``exclude`` regexes (``re.search``, as DeepSpeed).

    ``"*"`` (DeepSpeed: every Linear/Conv2d) is our default targets, so it is dropped; ``None`` when
    nothing is left."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise config_error(path, f"{value!r} must be a list of module-name regexes")
    value = [v for v in value if v != "*"]
    for v in value:
        try:
            re.compile(v)
        except re.error as err:
            raise config_error(path, f"{v!r} is not a valid regular expression ({err})") from None
    return value or None


def related_lists(value: Any, path: str) -> list[list[str]] | None:
    """DeepSpeed's ``related_modules``: a list with one list of regexes per entry of ``modules``
    (a bare string counts as a one-element list); each regex checked."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise config_error(path, f"{value!r} must be a list of lists of module-name regexes")
    lists: list[list[str]] = []
    for i, item in enumerate(value):
        items = [item] if isinstance(item, str) else item
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise config_error(f"{path}[{i}]", f"{item!r} must be a list of module-name regexes")
        module_regexes(items, path)
        lists.append(list(items))
    return lists


def flat_related(lists: list[list[str]] | None, path: str) -> list[str] | None:
    """All regexes of :func:`related_lists` in one list, ``"*"`` dropped; ``None`` when none is left."""
    if lists is None:
        return None
    return module_regexes([r for items in lists for r in items], path)


def enabled(d: dict[str, Any], path: str) -> bool:
    """``d["enabled"]``; a missing key warns and counts as false, as DeepSpeed's default did."""
    if "enabled" not in d:
        warn(path, " has no `enabled` key: skipped, as DeepSpeed (default false) did. Add \"enabled\": true to use it.")
        return False
    return as_bool(d["enabled"], f"{path}.enabled")


@dataclass(frozen=True)
class Group:
    """One entry of ``different_groups``: its name, JSON path, checked ``params``, ``modules`` regexes
    (``None``: default targets) and raw ``related_modules`` (each translator gives it its meaning)."""

    name: str
    path: str
    params: dict[str, Any]
    modules: list[str] | None
    related: Any


@dataclass(frozen=True)
class MethodSection:
    """A method with ``shared_parameters`` + ``different_groups``, keys checked."""

    path: str
    shared: dict[str, Any]
    groups: list[Group]

    @property
    def shared_path(self) -> str:
        return f"{self.path}.shared_parameters"

    def offset(self, default: int) -> int:
        """``schedule_offset`` (optimizer steps); ``default`` is DeepSpeed's code default for the method."""
        return as_int(self.shared.get("schedule_offset", default), f"{self.shared_path}.schedule_offset")

    def require_groups(self, method: str, needs: str) -> list[Group]:
        if not self.groups:
            raise config_error(f"{self.path}.different_groups", f"{method} is enabled but has no group ({needs})")
        return self.groups


def method_section(
    section: Any, path: str, shared_keys: Collection[str], param_keys: Collection[str]
) -> MethodSection | None:
    """Check a method's section; ``None`` when it is not enabled (nothing to build)."""
    check_keys(section, METHOD_KEYS, path)
    shared_path = f"{path}.shared_parameters"
    shared = check_keys(section.get("shared_parameters", {}), shared_keys, shared_path)
    if not enabled(shared, shared_path):
        return None
    groups = section.get("different_groups", {})
    gpath = f"{path}.different_groups"
    if not isinstance(groups, dict):
        raise config_error(gpath, f"expected a JSON object of named groups, got {groups!r}")
    out = []
    for name, group in groups.items():
        p = f"{gpath}.{name}"
        check_keys(group, GROUP_KEYS, p)
        params = check_keys(group.get("params", {}), param_keys, f"{p}.params")
        out.append(Group(name, p, params, module_regexes(group.get("modules"), f"{p}.modules"), group.get("related_modules")))
    return MethodSection(path, shared, out)


def warn_unused_related(group: Group) -> None:
    """For methods without related modules: a non-empty ``related_modules`` warns that it is ignored."""
    if group.related:
        warn(
            f"{group.path}.related_modules",
            f" = {group.related!r} has no effect for this method (only row/head/channel pruning use related "
            "modules); ignored.",
        )


def load(path_or_dict: str | os.PathLike | dict[str, Any], methods: Collection[str]) -> tuple[dict[str, Any], str]:
    """``(compression_training section, its JSON path)`` from a JSON file path, a full DeepSpeed config dict
    or the bare section (recognised when every key is one of ``methods``).  No section gives ``{}``."""
    if isinstance(path_or_dict, (str, os.PathLike)):
        p = Path(path_or_dict)
        if not p.is_file():
            raise ValueError(f"DeepSpeed config file {str(p)!r} does not exist")
        try:
            cfg = json.loads(p.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"DeepSpeed config file {str(p)!r} is not valid JSON: {err}") from None
    elif isinstance(path_or_dict, dict):
        cfg = path_or_dict
    else:
        raise ValueError(f"from_deepspeed_config expects a path or a dict, got {type(path_or_dict).__name__}")
    if not isinstance(cfg, dict):
        raise ValueError(f"DeepSpeed config must be a JSON object, got {type(cfg).__name__}")
    if SECTION in cfg:
        section = cfg[SECTION]
        if section is None:
            return {}, SECTION
        if not isinstance(section, dict):
            raise config_error(SECTION, f"expected a JSON object, got {section!r}")
        return section, SECTION
    stray = [k for k in cfg if k in methods]
    if stray and len(stray) == len(cfg):
        return cfg, SECTION  # the section itself was passed
    if stray:
        raise config_error(stray[0], f"{stray} must sit inside `{SECTION}`, not at the top level of the DeepSpeed config")
    near_section = [k for k in cfg if isinstance(k, str) and k != SECTION and nearest(k, [SECTION])]
    if near_section:
        raise config_error(
            near_section[0],
            f"is not a DeepSpeed config key{nearest(near_section[0], [SECTION])}; the compression methods "
            f"must sit in `{SECTION}` (nothing would be compressed otherwise)",
        )
    near_method = [k for k in cfg if isinstance(k, str) and nearest(k, methods)]
    if near_method and len(near_method) == len(cfg):
        raise config_error(
            near_method[0],
            f"unknown compression method{nearest(near_method[0], methods)}; DeepSpeed's methods are {list(methods)}",
        )
    return {}, SECTION
