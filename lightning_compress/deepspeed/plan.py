"""``plan_from_deepspeed_config`` (config -> specs, nothing built) and ``from_deepspeed_config`` (-> callbacks)."""

from __future__ import annotations

import os
from typing import Any

from lightning_compress.deepspeed.config import config_error, load, nearest
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


def from_deepspeed_config(path_or_dict: str | os.PathLike | dict[str, Any]) -> list[Any]:
    """Callbacks equivalent to a DeepSpeed ``compression_training`` config (see
    :mod:`lightning_compress.deepspeed`).

    Args:
        path_or_dict: a DeepSpeed JSON config file, its dict, or just the ``compression_training`` dict.

    Returns:
        The callbacks in DeepSpeed's order (layer reduction, sparse/row/head/channel pruning, weight and
        activation quantization); ``[]`` when there is no ``compression_training`` section.

    Raises:
        ValueError: unknown method or key, an unsupported setting, or a bad value; the message names the
            key and its path in the config.

    Example::

        trainer = Trainer(callbacks=from_deepspeed_config("ds_config.json"))
    """
    return [build_callback(spec) for spec in plan_from_deepspeed_config(path_or_dict)]
