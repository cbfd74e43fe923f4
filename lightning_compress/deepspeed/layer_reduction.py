"""``compression_training.layer_reduction`` -> one :class:`~lightning_compress.callbacks.LayerReductionKD`.

``LayerReductionKD(keep_layers=teacher_layer or keep_number_layer, layers=module_name_prefix)``.
``other_module_name`` lists the modules whose weights the student takes from the teacher; the student
built here *is* the teacher's network minus layers, so those weights are the teacher's anyway.  Numbered
entries (``bert.encoder.layer.2``) are read as kept layers, as DeepSpeed allowed; ``keep_number_layer``
must then agree with their count (or with ``len(teacher_layer)``).
"""

from __future__ import annotations

import re
from typing import Any

from lightning_compress.callbacks.layer_reduction_kd import LayerReductionKD
from lightning_compress.deepspeed.config import as_int, check_keys, config_error, enabled
from lightning_compress.deepspeed.registry import register_translator
from lightning_compress.deepspeed.spec import CallbackSpec

KEYS = {"enabled", "keep_number_layer", "module_name_prefix", "teacher_layer", "other_module_name"}


def _numbered(other: list[str] | None, prefix: str | None) -> list[tuple[str, int]]:
    """``(layer stack, index)`` of the ``other_module_name`` entries that name one layer of a stack."""
    numbered = []
    for name in other or []:
        m = re.fullmatch(r"(.+)\.(\d+)", name)
        if m and (prefix is None or m.group(1) == prefix):
            numbered.append((m.group(1), int(m.group(2))))
    return numbered


@register_translator("layer_reduction", LayerReductionKD)
def translate(section: Any, path: str) -> list[CallbackSpec]:
    check_keys(section, KEYS, path)
    if not enabled(section, path):
        return []
    keep_n = section.get("keep_number_layer")
    teacher_layer = section.get("teacher_layer")
    prefix = section.get("module_name_prefix")
    other = section.get("other_module_name")
    if keep_n is not None:
        keep_n = as_int(keep_n, f"{path}.keep_number_layer", minimum=1)
    if prefix is not None and not isinstance(prefix, str):
        raise config_error(f"{path}.module_name_prefix", f"{prefix!r} must be a module name like 'bert.encoder.layer'")
    if other is not None and (not isinstance(other, list) or not all(isinstance(v, str) for v in other)):
        raise config_error(f"{path}.other_module_name", f"{other!r} must be a list of module names")
    numbered = _numbered(other, prefix)
    if teacher_layer is not None:
        if not isinstance(teacher_layer, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in teacher_layer):
            raise config_error(f"{path}.teacher_layer", f"{teacher_layer!r} must be a list of layer indices")
        keep: Any = list(teacher_layer)
    elif numbered:
        stacks = sorted({stack for stack, _ in numbered})
        if len(stacks) > 1:
            raise config_error(f"{path}.other_module_name", f"numbered layers of several stacks {stacks}; name one layer stack")
        prefix = stacks[0]
        keep = [i for _, i in numbered]
    elif keep_n is not None:
        keep = keep_n
    else:
        raise config_error(path, "needs teacher_layer (the teacher layers the student keeps) or keep_number_layer")
    if keep_n is not None and isinstance(keep, list) and keep_n != len(keep):
        source = "teacher_layer" if teacher_layer is not None else "the numbered other_module_name entries"
        raise config_error(f"{path}.keep_number_layer", f"{keep_n} differs from len({source})={len(keep)}; they must agree")
    kwargs: dict[str, Any] = {"keep_layers": keep}
    if prefix is not None:
        kwargs["layers"] = prefix
    return [CallbackSpec(LayerReductionKD.__name__, kwargs, path)]
