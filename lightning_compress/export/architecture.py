"""The slim model's architecture as data: rebuild it without the training code (pure PyTorch).

:func:`describe_model` turns a plain module tree (what :func:`lightning_compress.export.clean` returns)
into JSON-able records; :func:`build_model` turns them back into modules of the same classes with the
same attributes, children and tensor slots, each tensor taken from a ``{key: tensor}`` map (the
``model.safetensors`` state plus the extra tensors below).  No constructor runs: a pruned model's
shapes and attributes (``num_heads``, ``split_size``, ``in_features``, per-layer sizes) are restored
as they were, so every family rebuilds, also where its config cannot express the slim sizes.

What a record holds, per module (shared modules and objects once, referenced by id, so ALBERT's
shared layer, tied embeddings and one config object stay shared):

* ``class``: import path of the module's class (``module:qualname``); a class that cannot be
  imported by that path (defined in ``__main__`` or inside a function) is refused.
* ``attrs``: every entry of the module's ``__dict__`` other than ``nn.Module``'s own bookkeeping,
  encoded by :func:`encode` (ints, floats, strings, None, tuples, lists, dicts, dtypes, devices,
  importable functions / classes, ``functools.partial``, enums, bound methods, other modules, and
  plain objects with a ``__dict__`` such as a transformers config, recursively).
* ``params`` / ``buffers``: slot name -> tensor id (None for an empty slot), buffers with their
  persistence; tensor ``t<i>`` is the state key it is saved under, or ``x<i>`` an extra tensor
  (non-persistent buffers and tensors held as plain attributes, e.g. a rotary ``inv_freq``).

Modules with forward / backward hooks other than lightning-compress's input quantizers are refused
(a hook is code).  Refusals raise :class:`NotDescribable` naming the module path and attribute.
"""

from __future__ import annotations

import enum
import functools
import importlib
import math
import types
from typing import Any

import torch
from torch import nn

_MODULE_KEYS = frozenset(nn.Module().__dict__)
_HOOK_KEYS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
TAG = "__lc__"


class NotDescribable(ValueError):
    """The model holds something :func:`describe_model` cannot write down (the message says what)."""


def class_path(obj: Any) -> str:
    """``"module:qualname"`` of a class or function, checked to import back to the same object."""
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not mod or not qual or "<locals>" in qual or mod == "__main__":
        raise NotDescribable(f"{obj!r} is defined in {mod!r} as {qual!r}, which cannot be imported by name")
    if resolve(f"{mod}:{qual}") is not obj:
        raise NotDescribable(f"{obj!r} is not importable as {mod}:{qual}")
    return f"{mod}:{qual}"


def resolve(path: str) -> Any:
    mod, qual = path.split(":", 1)
    try:
        obj: Any = importlib.import_module(mod)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise NotDescribable(f"cannot import {path!r}: {err}") from None
    return obj


class _Writer:
    def __init__(self, state_keys: dict[int, str]) -> None:
        self.state_keys = state_keys  # id(tensor) -> key in model.safetensors
        self.modules: dict[str, dict] = {}
        self.objects: dict[str, dict] = {}
        self.tensors: dict[str, str | None] = {}  # tensor id -> state key (None: extra)
        self.extra: dict[str, torch.Tensor] = {}
        self.ids: dict[int, str] = {}
        self.keep: list[Any] = []  # keeps encoded objects alive so their ids stay unique

    def _id(self, obj: Any, prefix: str) -> tuple[str, bool]:
        i = self.ids.get(id(obj))
        if i is not None:
            return i, False
        i = f"{prefix}{len(self.ids)}"
        self.ids[id(obj)] = i
        self.keep.append(obj)
        return i, True

    def tensor(self, t: torch.Tensor, where: str) -> str:
        i, new = self._id(t, "t")
        if new:
            key = self.state_keys.get(id(t))
            if key is None:
                self.extra[i] = t.detach().cpu().contiguous().clone()
            self.tensors[i] = key
        return i

    def module(self, m: nn.Module, where: str) -> str:
        i, new = self._id(m, "m")
        if not new:
            return i
        for hk in _HOOK_KEYS:
            hooks = [h for h in m.__dict__.get(hk, {}).values() if not _is_input_quant(h)]
            if hooks:
                raise NotDescribable(f"module {where or '<root>'} ({type(m).__name__}) has {hk} {hooks[:2]} (hooks are code)")
        rec: dict[str, Any] = {"class": class_path(type(m)), "training": bool(m.training)}
        rec["params"] = {n: None if p is None else [self.tensor(p, f"{where}.{n}"), bool(p.requires_grad)]
                         for n, p in m._parameters.items()}
        rec["buffers"] = {n: None if b is None else self.tensor(b, f"{where}.{n}") for n, b in m._buffers.items()}
        rec["non_persistent"] = sorted(m._non_persistent_buffers_set)
        self.modules[i] = rec  # before children: a cycle refers back to it
        rec["children"] = {n: None if c is None else self.module(c, _join(where, n)) for n, c in m._modules.items()}
        rec["attrs"] = {k: self.encode(v, f"{where or '<root>'}.{k}") for k, v in m.__dict__.items() if k not in _MODULE_KEYS}
        return i

    def encode(self, v: Any, where: str) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int) and type(v) is int:
            return v
        if isinstance(v, float) and type(v) is float:
            return v if math.isfinite(v) else {TAG: "float", "v": repr(v)}
        if isinstance(v, nn.Module):
            return {TAG: "module", "v": self.module(v, where)}
        if isinstance(v, torch.Tensor):
            return {TAG: "tensor", "v": self.tensor(v, where)}
        if isinstance(v, torch.dtype):
            return {TAG: "dtype", "v": str(v).removeprefix("torch.")}
        if isinstance(v, torch.device):
            return {TAG: "device", "v": str(v)}
        if isinstance(v, torch.Size):
            return {TAG: "size", "v": list(v)}
        if isinstance(v, enum.Enum):
            return {TAG: "enum", "class": class_path(type(v)), "v": v.name}
        if type(v) in (tuple, list):
            enc = [self.encode(x, f"{where}[{j}]") for j, x in enumerate(v)]
            return enc if type(v) is list else {TAG: "tuple", "v": enc}
        if type(v) in (set, frozenset):
            return {TAG: type(v).__name__, "v": [self.encode(x, where) for x in sorted(v, key=repr)]}
        if type(v) is dict:
            return {TAG: "dict", "v": [[self.encode(k, where), self.encode(x, f"{where}[{k!r}]")] for k, x in v.items()]}
        if isinstance(v, functools.partial):
            return {TAG: "partial", "func": self.encode(v.func, where), "args": self.encode(list(v.args), where),
                    "kw": self.encode(dict(v.keywords), where)}
        if isinstance(v, types.MethodType):
            return {TAG: "method", "self": self.encode(v.__self__, where), "name": v.__func__.__name__}
        if isinstance(v, (type, types.FunctionType, types.BuiltinFunctionType)):
            return {TAG: "ref", "v": class_path(v)}
        d = getattr(v, "__dict__", None)
        if isinstance(d, dict) and not callable(v) and type(v).__reduce_ex__ is object.__reduce_ex__:
            i, new = self._id(v, "o")  # a plain object (a transformers config): its attributes
            if new:
                rec: dict[str, Any] = {"class": class_path(type(v))}
                self.objects[i] = rec
                rec["attrs"] = {k: self.encode(x, f"{where}.{k}") for k, x in d.items()}
            return {TAG: "obj", "v": i}
        if callable(v) and hasattr(v, "__qualname__"):  # torch ops and other importable callables
            return {TAG: "ref", "v": class_path(v)}
        raise NotDescribable(f"attribute {where} holds a {type(v).__module__}.{type(v).__qualname__}, which cannot be written down")


def _is_input_quant(hook: Any) -> bool:
    from lightning_compress.export.input_quant import InputQuantize

    return isinstance(hook, InputQuantize)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def describe_model(model: nn.Module, state_keys: dict[int, str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(record, extra tensors)`` of ``model``; ``state_keys`` maps ``id(tensor)`` to the key it is
    saved under in ``model.safetensors`` (tensors not in it go into the extra tensors).

    Raises:
        NotDescribable: a class that cannot be imported by name, a hook, or an attribute of a kind
            :func:`encode` does not know (the message names the module path and attribute).
    """
    w = _Writer(state_keys)
    root = w.module(model, "")
    return {"root": root, "modules": w.modules, "objects": w.objects, "tensors": w.tensors}, w.extra


class _Reader:
    def __init__(self, rec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.rec, self.tensors = rec, tensors
        self.built: dict[str, Any] = {}

    def tensor(self, i: str) -> torch.Tensor:
        key = self.rec["tensors"][i]
        src = self.tensors.get(key if key is not None else f"x.{i}")
        if src is None:
            raise ValueError(f"architecture: tensor {key or i!r} is missing from the saved files; re-export the model.")
        return src

    def module(self, i: str) -> nn.Module:
        if i in self.built:
            return self.built[i]
        r = self.rec["modules"][i]
        cls = resolve(r["class"])
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        self.built[i] = m
        for n, t in r["params"].items():
            if t is None:
                m._parameters[n] = None
            else:
                tid, grad = t
                p = self.built.get(tid)
                if p is None:
                    p = self.built[tid] = nn.Parameter(self.tensor(tid), requires_grad=grad)
                m._parameters[n] = p
        for n, t in r["buffers"].items():
            m._buffers[n] = None if t is None else self.built.setdefault(t, self.tensor(t))
        m._non_persistent_buffers_set.update(r["non_persistent"])
        for n, c in r["children"].items():
            m._modules[n] = None if c is None else self.module(c)
        m.__dict__.update({k: self.decode(v) for k, v in r["attrs"].items()})
        m.training = bool(r["training"])
        return m

    def decode(self, v: Any) -> Any:
        if isinstance(v, list):
            return [self.decode(x) for x in v]
        if not isinstance(v, dict):
            return v
        tag = v[TAG]
        if tag == "float":
            return float(v["v"])
        if tag == "module":
            return self.module(v["v"])
        if tag == "tensor":
            return self.built.setdefault(v["v"], self.tensor(v["v"]))
        if tag == "dtype":
            return getattr(torch, v["v"])
        if tag == "device":
            return torch.device(v["v"])
        if tag == "size":
            return torch.Size(v["v"])
        if tag == "enum":
            return resolve(v["class"])[v["v"]]
        if tag == "tuple":
            return tuple(self.decode(x) for x in v["v"])
        if tag in ("set", "frozenset"):
            return (set if tag == "set" else frozenset)(self.decode(x) for x in v["v"])
        if tag == "dict":
            return {self.decode(k): self.decode(x) for k, x in v["v"]}
        if tag == "partial":
            return functools.partial(self.decode(v["func"]), *self.decode(v["args"]), **self.decode(v["kw"]))
        if tag == "method":
            return getattr(self.decode(v["self"]), v["name"])
        if tag == "ref":
            return resolve(v["v"])
        if tag == "obj":
            i = v["v"]
            if i not in self.built:
                r = self.rec["objects"][i]
                cls = resolve(r["class"])
                obj = self.built[i] = object.__new__(cls)
                obj.__dict__.update({k: self.decode(x) for k, x in r["attrs"].items()})
            return self.built[i]
        raise ValueError(f"architecture: unknown record tag {tag!r}; written by a newer lightning-compress?")


def build_model(rec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The module tree described by ``rec`` (:func:`describe_model`), its tensors taken from
    ``tensors`` (state keys, and ``"x.<id>"`` for the extra tensors)."""
    return _Reader(rec, tensors).module(rec["root"])


__all__ = ["NotDescribable", "build_model", "class_path", "describe_model", "resolve"]
