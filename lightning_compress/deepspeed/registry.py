"""The translator registry: one entry per DeepSpeed ``compression_training`` method.

A translator turns one method's section (``compression_training.<section>``) into
:class:`~lightning_compress.deepspeed.spec.CallbackSpec` s.  Adding a DeepSpeed method is one new file
that registers itself::

    from lightning_compress.deepspeed.config import method_section
    from lightning_compress.deepspeed.registry import register_translator
    from lightning_compress.deepspeed.spec import CallbackSpec
    from my_package import MyCallback

    @register_translator("my_method", MyCallback)
    def translate(section: dict, path: str) -> list[CallbackSpec]:
        ...
        return [CallbackSpec(MyCallback.__name__, {"sparsity": 0.5}, path)]

plus one import line in ``lightning_compress/deepspeed/__init__.py`` for a method shipped with the
package (a plugin imports its own file before calling ``from_deepspeed_config``).  Translators run
in registration order, which the package's ``__init__`` makes DeepSpeed's order (layer reduction,
sparse / row / head / channel pruning, weight and activation quantization).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_compress.deepspeed.spec import CallbackSpec

#: ``translate(section, path)``: the method's JSON value and its JSON path -> the callbacks to build
TranslateFn = Callable[[Any, str], "list[CallbackSpec]"]


@dataclass(frozen=True)
class Translator:
    """One DeepSpeed method: its section name, its translate function, and the callback classes its
    specs name (so :func:`~lightning_compress.deepspeed.spec.build_callback` finds them by name)."""

    section: str
    translate: TranslateFn
    callbacks: tuple[type, ...]


#: ``{section name under compression_training: Translator}``, in the order the methods are translated
TRANSLATORS: dict[str, Translator] = {}


def register_translator(section: str, *callbacks: type, override: bool = False) -> Callable[[TranslateFn], TranslateFn]:
    """Decorator: register ``translate`` for ``compression_training.<section>``, building ``callbacks``.

    Raises:
        ValueError: ``section`` is registered already and ``override`` is false.
    """

    def decorate(translate: TranslateFn) -> TranslateFn:
        if section in TRANSLATORS and not override:
            raise ValueError(
                f"register_translator: section {section!r} already has the translator "
                f"{TRANSLATORS[section].translate.__module__}.{TRANSLATORS[section].translate.__qualname__}; "
                "pass override=True to replace it."
            )
        TRANSLATORS[section] = Translator(section, translate, tuple(callbacks))
        return translate

    return decorate


def callback_class(name: str) -> type | None:
    """The callback class called ``name`` among those the registered translators build."""
    for translator in TRANSLATORS.values():
        for cls in translator.callbacks:
            if cls.__name__ == name:
                return cls
    return None
