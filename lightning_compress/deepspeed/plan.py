"""``plan_from_deepspeed_config`` (config -> specs, nothing built) and ``from_deepspeed_config`` (-> callbacks)."""

from __future__ import annotations

import os
from typing import Any

from lightning_compress.deepspeed.config import config_error, load, nearest
from lightning_compress.deepspeed.layer_reduction import with_options
from lightning_compress.deepspeed.registry import TRANSLATORS
from lightning_compress.deepspeed.spec import CallbackSpec, build_callback


def plan_from_deepspeed_config(path_or_dict: str | os.PathLike | dict[str, Any]) -> list[CallbackSpec]:
    """The callbacks (class names and keyword arguments) that the config describes, without building them.

    Accepts a JSON file path, a full DeepSpeed config dict, or the ``compression_training`` section.
    A config without the section gives ``[]``.  Methods are translated in registration order
    (:data:`~lightning_compress.deepspeed.registry.TRANSLATORS`: DeepSpeed's order for the shipped ones).

    Raises:
        ValueError: unknown method or key, a bad value, or a setting we do not support (the message
            names the key and its path, e.g. ``compression_training.sparse_pruning.shared_parameters.foo``).
    """
    section, root = load(path_or_dict, TRANSLATORS)
    unknown = sorted(set(section) - set(TRANSLATORS))
    if unknown:
        where = "; ".join(f"{root}.{k}{nearest(k, TRANSLATORS)}" for k in unknown)
        raise config_error(
            f"{root}.{unknown[0]}",
            f"unknown compression method(s) {unknown} (at {where}); DeepSpeed's methods are {list(TRANSLATORS)}",
        )
    specs: list[CallbackSpec] = []
    for name, translator in TRANSLATORS.items():
        if name in section:
            specs += translator.translate(section[name], f"{root}.{name}")
    return specs


def from_deepspeed_config(
    path_or_dict: str | os.PathLike | dict[str, Any], *, teacher: Any = None, distill: Any = None
) -> list[Any]:
    """Callbacks equivalent to a DeepSpeed ``compression_training`` config (see
    :mod:`lightning_compress.deepspeed`).

    Args:
        path_or_dict: a DeepSpeed JSON config file, its dict, or just the ``compression_training`` dict.
        teacher: for ``layer_reduction``: a separate teacher network (DeepSpeed's ``teacher_model``, e.g.
            the fine-tuned full model of the two-stage XTC recipe); its layers ``teacher_layer`` and its
            ``other_module_name`` modules initialise the student.  None: the student is the model's
            own layers ``teacher_layer``.
        distill: for ``layer_reduction``: a distillation loss on top of the training step's (DeepSpeed's
            compression never added one): False / None = none, True = LayerReductionKD's default
            terms, or a dict of LayerReductionKD ``weights``.

    Returns:
        The callbacks in DeepSpeed's order (layer reduction, sparse/row/head/channel pruning, weight and
        activation quantization); ``[]`` when there is no ``compression_training`` section.

    Raises:
        ValueError: unknown method or key, an unsupported setting, or a bad value; the message names the
            key and its path in the config.

    Example::

        trainer = Trainer(callbacks=from_deepspeed_config("ds_config.json"))
    """
    specs = plan_from_deepspeed_config(path_or_dict)
    if teacher is not None or distill:
        if not any(spec.callback == "LayerReductionKD" for spec in specs):
            raise ValueError(
                "from_deepspeed_config: `teacher` / `distill` are for compression_training.layer_reduction, "
                "which this config does not enable; drop them or enable layer_reduction."
            )
        specs = [with_options(s, teacher, distill) if s.callback == "LayerReductionKD" else s for s in specs]
    return [build_callback(spec) for spec in specs]
