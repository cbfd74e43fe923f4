"""Argument checks shared by every public callback, driver and post-training function.

One rule set and one message shape, so every class refuses bad input alike::

    <Owner>: `<argument>`=<value!r> <what is wrong>; <how to fix it>.

* a wrong **type** is a ``TypeError``, a wrong **value** a ``ValueError``;
* **no conversion**: ``"0.5"`` is not a number, ``1.7`` is not an integer, ``True`` is neither an integer
  nor a number (``bool`` is a subclass of ``int`` in Python; it is refused wherever a number is
  expected), and a boolean argument takes only ``True`` / ``False`` (not ``0``, ``"no"``, ``None``);
* a float argument also takes an ``int`` (``1`` for ``1.0``) but never NaN;
* regex lists are compiled here, so a bad regex is a ``ValueError`` naming the argument (not
  ``re.error``); an empty list is refused (it would select nothing, or, read as "no filter", everything).

Step arguments (:func:`check_step`, :func:`resolve_step`): an ``int >= 0`` is a number of optimizer
steps; a ``float`` in ``(0, 1]`` is a **fraction of the fit** (``trainer.estimated_stepping_batches``
optimizer steps), resolved by the Lightning callbacks at ``on_train_start``.  The Python type decides:
``1`` is optimizer step 1, ``1.0`` is the whole fit; a float outside ``(0, 1]`` (``1.7``) is a
``TypeError`` (it is neither kind, and is never truncated to ``1``).  The pure-PyTorch drivers (``core.pruner.Pruner``,
``core.weight_quantizer.WeightQuantizer``) take integers only (they do not know the length of a
training loop); resolve a fraction with :func:`resolve_step` first.

Pure Python: imports neither torch nor lightning.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

#: what a step argument accepts, for messages
STEP_FORMS = "an int >= 0 (optimizer steps) or a float in (0, 1] (fraction of this fit's optimizer steps)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def fail(owner: str, argument: str, value: Any, problem: str, fix: str, error: type[Exception] = ValueError) -> NoReturn:
    """Raise ``error`` with the uniform message (see the module docstring)."""
    raise error(f"{owner}: `{argument}`={_short(value)} {problem}; {fix}.")


def is_int(value: Any) -> bool:
    """A true integer (``bool`` is not one here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type(value: Any) -> str:
    return type(value).__name__


def _a(value: Any) -> str:
    """``"a str"`` / ``"an int"``: the type of ``value`` with its article."""
    name = _type(value)
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def check_bool(value: Any, argument: str, owner: str, *, allow_none: bool = False) -> bool | None:
    """``value`` must be ``True`` or ``False`` (or None when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, bool):
        fail(owner, argument, value, f"must be a bool, not {_a(value)}", "pass True or False" + (" (or None)" if allow_none else ""), TypeError)
    return value


def check_int(
    value: Any, argument: str, owner: str, *, minimum: int | None = None, maximum: int | None = None,
    allow_none: bool = False, fix: str = "",
) -> int | None:
    """``value`` must be an int (not a bool, not a float such as ``2.0``) within ``[minimum, maximum]``."""
    if value is None and allow_none:
        return None
    bounds = _bounds(minimum, maximum, True, True)
    if not is_int(value):
        fail(owner, argument, value, f"is {_a(value)}, not an int", fix or f"pass an integer{bounds}", TypeError)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        fail(owner, argument, value, f"must be{bounds}", fix or "pass an integer in that range")
    return value


def _bounds(lo: float | None, hi: float | None, lo_closed: bool, hi_closed: bool) -> str:
    if lo is not None and hi is not None:
        return f" in {'[' if lo_closed else '('}{lo:g}, {hi:g}{']' if hi_closed else ')'}"
    if lo is not None:
        return f" {'>=' if lo_closed else '>'} {lo:g}"
    if hi is not None:
        return f" {'<=' if hi_closed else '<'} {hi:g}"
    return ""


def check_float(
    value: Any, argument: str, owner: str, *, minimum: float | None = None, maximum: float | None = None,
    min_closed: bool = True, max_closed: bool = True, allow_none: bool = False, fix: str = "",
) -> float | None:
    """``value`` must be a finite int or float (not a bool or a string) within the bounds; returns a float."""
    if value is None and allow_none:
        return None
    bounds = _bounds(minimum, maximum, min_closed, max_closed)
    if not is_number(value):
        fail(owner, argument, value, f"is {_a(value)}, not a number", fix or f"pass a number{bounds}", TypeError)
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        fail(owner, argument, value, "is not a finite number", fix or f"pass a number{bounds}")
    too_low = minimum is not None and (v < minimum or (not min_closed and v == minimum))
    too_high = maximum is not None and (v > maximum or (not max_closed and v == maximum))
    if too_low or too_high:
        fail(owner, argument, value, f"must be{bounds}", fix or "pass a number in that range")
    return v


def check_choice(
    value: Any, argument: str, owner: str, choices: Sequence[Any], *, allow_none: bool = False, problem: str | None = None,
) -> Any:
    """``value`` must be one of ``choices`` (strings or ints; compared with type: ``8.0`` is not ``8``)."""
    if value is None and allow_none:
        return None
    wanted = {type(c) for c in choices}
    listed = list(choices) + ([None] if allow_none else [])
    if type(value) not in wanted:
        kinds = " or ".join(sorted(t.__name__ for t in wanted))
        fail(owner, argument, value, f"is {_a(value)}, not a {kinds}", f"use one of {listed}", TypeError)
    if value not in choices:
        fail(owner, argument, value, problem or f"must be one of {listed}", "pick one of those")
    return value


def check_str(value: Any, argument: str, owner: str, *, allow_none: bool = False, what: str = "a non-empty string") -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        fail(owner, argument, value, f"is {_a(value)}, not a string", f"pass {what}", TypeError)
    if not value.strip():
        fail(owner, argument, value, "is empty", f"pass {what}")
    return value


def compile_regex(pattern: Any, argument: str, owner: str) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        fail(owner, argument, pattern, f"is {_a(pattern)}, not a regex string", "give regular expressions as strings", TypeError)
    try:
        return re.compile(pattern)
    except re.error as err:
        fail(owner, argument, pattern, f"is not a valid regular expression ({err})", "fix the regex (escape literal dots and brackets with a backslash)")


def check_regexes(value: Any, argument: str, owner: str, *, allow_none: bool = True, allow_empty: bool = False) -> list[str] | None:
    """A list (or tuple) of regex strings, each compiled; a single string is one regex.

    ``None`` (when allowed) means "no filter / the default selection".  An empty list is a
    ``ValueError`` unless ``allow_empty`` (it would select nothing)."""
    if value is None:
        if allow_none:
            return None
        fail(owner, argument, value, "is required", "pass a list of regexes", TypeError)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        fail(owner, argument, value, f"is {_a(value)}, not a list of regexes", "pass a list of regex strings, e.g. ['encoder']" + (" or None" if allow_none else ""), TypeError)
    if not value and not allow_empty:
        fail(
            owner, argument, value, "is empty, so it selects nothing",
            "name at least one regex, or pass None for the default selection" if allow_none else "name at least one regex",
        )
    for i, p in enumerate(value):
        compile_regex(p, f"{argument}[{i}]", owner)
        if p == "":
            fail(owner, f"{argument}[{i}]", p, "is an empty regex, which matches every name",
                 "name what to select" + (", or pass None for the default selection" if allow_none else ""))
    return list(value)


def check_mapping(value: Any, argument: str, owner: str, *, allow_none: bool = True, what: str = "a dict") -> dict | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, Mapping):
        fail(owner, argument, value, f"is {_a(value)}, not a mapping", f"pass {what}", TypeError)
    return dict(value)


def check_callable(value: Any, argument: str, owner: str, *, allow_none: bool = True, what: str = "a function") -> Callable | None:
    if value is None and allow_none:
        return None
    if not callable(value):
        fail(owner, argument, value, f"is {_a(value)}, not callable", f"pass {what}" + (" or None" if allow_none else ""), TypeError)
    return value


# ------------------------------------------------------------------------------------------ steps
def is_fraction(value: Any) -> bool:
    """A step argument given as a fraction of the fit (a float; ints are optimizer steps)."""
    return isinstance(value, float)


def check_step(
    value: Any, argument: str, owner: str, *, minimum: int = 0, allow_none: bool = False, allow_fraction: bool = True,
) -> int | float | None:
    """A step argument: an ``int >= minimum`` (optimizer steps) or, with ``allow_fraction``, a float in
    ``(0, 1]`` (fraction of the fit, see :func:`resolve_step`).  Returned unchanged."""
    if value is None and allow_none:
        return None
    forms = STEP_FORMS.replace(">= 0", f">= {minimum}") if allow_fraction else f"an int >= {minimum} (optimizer steps)"
    if not allow_fraction and isinstance(value, float):
        fail(
            owner, argument, value, "is a float; this driver counts optimizer steps as integers",
            "pass an int, or resolve a fraction of your loop's length with lightning_compress.core.args.resolve_step",
            TypeError,
        )
    if not (is_int(value) or isinstance(value, float)):
        fail(owner, argument, value, f"is {_a(value)}, not a step", f"pass {forms}" + (" or None" if allow_none else ""), TypeError)
    if isinstance(value, float):
        if not (0.0 < value <= 1.0):  # NaN fails too
            fail(  # a TypeError: neither of the two kinds a step can be (1.7 is never read as 1)
                owner, argument, value, "is a float outside (0, 1]: a float step is a fraction of the fit",
                f"pass a fraction in (0, 1] or an int number of optimizer steps (e.g. {int(value) if math.isfinite(value) and value >= 0 else 0})",
                TypeError,
            )
        return value
    if value < minimum:
        fail(owner, argument, value, f"must be >= {minimum}", f"pass {forms}")
    return value


def resolve_step(value: int | float, total_steps: int, *, duration: bool = False) -> int:
    """Optimizer steps for a step argument in a fit of ``total_steps`` optimizer steps.

    An int is returned as is.  A fraction ``f`` becomes ``floor(f * total_steps)``; a point in time
    (``duration=False``: ``start_step``, ``end_step``, offsets) is capped at ``total_steps - 1``, the last
    step count at which a batch still starts (so ``1.0`` = the fit's last step), a length
    (``duration=True``: ``frequency``, ``period``) is at least 1."""
    if not isinstance(value, float):
        return int(value)
    steps = math.floor(value * int(total_steps) + 1e-9)
    if duration:
        return max(1, steps)
    return max(0, min(steps, int(total_steps) - 1))


__all__ = [
    "STEP_FORMS", "check_bool", "check_callable", "check_choice", "check_float", "check_int", "check_mapping",
    "check_regexes", "check_step", "check_str", "compile_regex", "fail", "is_fraction", "is_int", "is_number",
    "resolve_step",
]
