"""Helpers shared by the Hugging Face family files (duck typing, no transformers import).

Config bookkeeping after ``clean``: a transformers config holds one value per field for the whole
model, while pruning may leave layers of different widths.  :func:`record_layers` keeps
``config.<field>_per_layer = {layer key: value}`` (layer key: the attention's ``layer_idx``, else the
first integer in the module name, e.g. ``"model.layers.3.mlp"`` -> 3, else the name) and sets
``config.<field>`` itself when every layer has the same value, so a config whose layers are uniform
rebuilds the slim architecture (``from_config``); one whose layers differ cannot, and says so by the
``*_per_layer`` record.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from lightning_compress.core.masking import original_class


def linears(module: nn.Module, *attrs: str) -> list[nn.Linear] | None:
    """The ``nn.Linear`` children ``attrs`` of ``module``, or None if one is missing / not a Linear."""
    out = [getattr(module, a, None) for a in attrs]
    return out if all(isinstance(m, nn.Linear) for m in out) else None  # type: ignore[return-value]


def int_attr(obj: Any, name: str) -> int | None:
    v = getattr(obj, name, None)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def parent_name(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def layer_key(name: str, layer_idx: int | None = None) -> int | str:
    """The key of a layer in ``*_per_layer`` config records (see the module docstring)."""
    if layer_idx is not None:
        return layer_idx
    m = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return int(m.group(1)) if m else name


def record_layers(config: Any, field: str, values: Mapping[int | str, int], set_global: bool = True) -> None:
    """Merge ``values`` (``{layer key: value}``) into ``config.<field>_per_layer``; with ``set_global``
    also set ``config.<field>`` to the common value when every recorded layer agrees (leave it False
    where the architecture derives other sizes from the field, e.g. DistilBERT's head size
    ``dim // n_heads``: a rebuilt model would then be wrong)."""
    if config is None or not values:
        return
    per = dict(getattr(config, f"{field}_per_layer", None) or {})
    per.update({k: int(v) for k, v in values.items()})
    setattr(config, f"{field}_per_layer", per)
    if set_global and len(set(per.values())) == 1:
        setattr(config, field, next(iter(per.values())))


def model_config(model: nn.Module) -> Any:
    """``model.config``, else the first transformers config found on a submodule, else None."""
    c = model.__dict__.get("config")
    if c is not None and hasattr(c, "model_type"):
        return c
    found = configs_of(model)
    return found[0] if found else None


def configs_of(model: nn.Module) -> list[Any]:
    """The distinct ``config`` objects of ``model`` and its submodules (transformers configs)."""
    seen: dict[int, Any] = {}
    for m in model.modules():
        c = m.__dict__.get("config")
        if c is not None and hasattr(c, "model_type"):
            seen.setdefault(id(c), c)
    return list(seen.values())


def modules_of_class(named: Mapping[str, nn.Module], class_names: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for every module whose own class (under a compression wrapper too) has one of
    ``class_names``."""
    return [(n, m) for n, m in named.items() if original_class(m).__name__ in class_names]
