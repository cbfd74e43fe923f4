"""``compression_training.layer_reduction`` -> one :class:`~lightning_compress.callbacks.LayerReductionKD`.

DeepSpeed's ``student_initialization`` only *initialises* the student: student layer ``i`` <- teacher
layer ``teacher_layer[i]`` and every ``other_module_name`` module <- the teacher's; the loss is whatever
the training script computes (DeepSpeedExamples' ``--distill_method``).  So:

``LayerReductionKD(keep_layers=teacher_layer, teacher_layers=teacher_layer, layers=module_name_prefix,
weights={"logits": 0, "hidden": 0, "attention": 0, "labels": 1})``: no distillation loss unless asked
(``from_deepspeed_config(..., distill=True | {weights})``, or ``DeepSpeedCompressionStrategy(...,
compression_distill=...)``).  Without a teacher the student is the model's own layers ``teacher_layer``
(the same weights DeepSpeed copied when its teacher was the same checkpoint) and ``other_module_name``
modules are the model's own.  A separate teacher (the two-stage XTC recipe: a fine-tuned full model)
is passed as ``teacher=`` (``compression_teacher=`` on the strategy): then ``copy_modules =
[module_name_prefix] + other_module_name`` copies its layers ``teacher_layer`` and those modules into the
student, as DeepSpeed did (a student built shallow already keeps all its layers).  Numbered
``other_module_name`` entries (``bert.encoder.layer.2``) are read as kept layers, as DeepSpeed allowed;
``keep_number_layer`` must agree with the number of kept layers.
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
    kwargs: dict[str, Any] = {"keep_layers": keep, "weights": dict(NO_DISTILLATION)}
    if isinstance(keep, list):
        kwargs["teacher_layers"] = list(keep)
    if prefix is not None:
        kwargs["layers"] = prefix
    copy = ([prefix] if prefix is not None else []) + [n for n in other or [] if not _numbered([n], prefix)]
    return [CallbackSpec(LayerReductionKD.__name__, kwargs, path, teacher_copy=copy)]


#: LayerReductionKD weights of an imported config: the user's loss only (DeepSpeed never added one)
NO_DISTILLATION = {"logits": 0.0, "hidden": 0.0, "attention": 0.0, "labels": 1.0}
#: what ``distill=True`` turns on: LayerReductionKD's default terms
DEFAULT_DISTILLATION = {"logits": 1.0, "hidden": 0.0, "attention": 0.0, "labels": 1.0}


def with_options(spec: CallbackSpec, teacher: Any = None, distill: Any = None) -> CallbackSpec:
    """``spec`` with a separate ``teacher`` (then ``copy_modules``: the layer stack and
    ``other_module_name``) and the distillation weights (``distill``: False / None = none, True =
    LayerReductionKD's defaults, a dict = those weights)."""
    kwargs = dict(spec.kwargs)
    if teacher is not None:
        kwargs["teacher"] = teacher
        if spec.teacher_copy:
            kwargs["copy_modules"] = list(spec.teacher_copy)
    if distill:
        kwargs["weights"] = dict(DEFAULT_DISTILLATION) if distill is True else {**NO_DISTILLATION, **dict(distill)}
    return CallbackSpec(spec.callback, kwargs, spec.path, dict(spec.optional), spec.teacher_copy)
