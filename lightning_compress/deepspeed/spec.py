"""``CallbackSpec`` (what a translator returns) and ``build_callback`` (spec -> callback instance)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lightning_compress.deepspeed.config import config_error, warn
from lightning_compress.deepspeed.registry import TRANSLATORS, callback_class

_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


@dataclass
class CallbackSpec:
    """One callback to build: its class name (a callback some registered translator builds), its
    keyword arguments, and the config path it came from (for error messages)."""

    callback: str
    kwargs: dict[str, Any]
    path: str
    #: DeepSpeed settings kept in ``kwargs`` for the record that the callback has no argument for:
    #: ``{kwarg: why}``; :func:`build_callback` leaves them out with a warning giving the reason
    optional: dict[str, str] = field(default_factory=dict)
    #: layer reduction: the ``copy_modules`` a separately given teacher fills (module_name_prefix and
    #: other_module_name); unused without a teacher
    teacher_copy: list[str] | None = None


def build_callback(spec: CallbackSpec) -> Any:
    """Instantiate one :class:`CallbackSpec`.

    Raises:
        ValueError: no registered translator builds ``spec.callback``; the callback has no argument for
            one of ``spec.kwargs`` (that DeepSpeed setting is not supported); or the callback rejects a
            value.  Each message names ``spec.path``.
    """
    cls = callback_class(spec.callback)
    if cls is None:
        known = sorted({c.__name__ for t in TRANSLATORS.values() for c in t.callbacks})
        raise config_error(
            spec.path,
            f"needs the callback {spec.callback}, which no registered translator builds (known: {known}); "
            "register its translator with lightning_compress.deepspeed.register_translator",
        )
    kwargs = dict(spec.kwargs)
    for key, why in spec.optional.items():
        if key in kwargs:
            warn(spec.path, f": {key}={kwargs.pop(key)!r} not passed: {why}.")
    try:
        cb = cls(**kwargs)
        if hasattr(cb, "schedule_may_outlast_fit"):  # DeepSpeed semantics: a schedule may outlast the run
            cb.schedule_may_outlast_fit = True
        return cb
    except TypeError as err:
        m = _UNEXPECTED.search(str(err))
        if m is None or m.group(1) not in kwargs:
            raise
        key = m.group(1)
        raise config_error(
            spec.path,
            f"translates to {spec.callback}({key}={kwargs[key]!r}), but {spec.callback} has no `{key}` argument: "
            "this DeepSpeed setting is not supported; remove it from the config",
        ) from None
    except ValueError as err:
        raise ValueError(f"DeepSpeed config `{spec.path}` -> {spec.callback}: {err}") from err
