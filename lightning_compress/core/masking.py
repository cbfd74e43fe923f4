"""How masks and quantizers ride on a module's forward.

A targeted module keeps its own class and its own parameters (so ``state_dict`` keys do not change);
its ``__class__`` is swapped for a cached subclass that, in ``forward``, replaces each transformed
parameter by its *effective* value for the duration of the call and then calls the original
``forward``.  Effective value = the parameter passed through the module's transforms in priority
order (masks first, priority 0; weight quantizers later, priority 10).  Inputs may be transformed
too (activation quantization), on the first positional argument.

No forward hooks are used (Lightning removes hooks in validate/test/predict without fit, and ZeRO-3
owns the module hooks).  Because the transform acts in forward, it also holds under ZeRO-3 (the
parameter is gathered when ``forward`` runs) and under mixed precision (the optimizer's fp32 master
copy is never edited, the product is recomputed every call).

Contract used by every compression method:

* :func:`add_param_transform` (module, param_name, owner, fn, priority, kind) registers
  ``fn(module, tensor) -> tensor``; two owners of the same ``kind`` (e.g. two ``"mask"`` owners) on
  one parameter raise ``ValueError``: two callbacks must not fight over one weight.
* :func:`add_input_transform` likewise for the first positional input.
* :func:`remove_owner` removes everything an owner registered; the module gets its original class
  back once nothing is left.
* :func:`effective_param` returns the parameter as forward sees it (for baking / export).
* *readers*: a module whose forward reads a child's weights directly puts the child's effective
  values in place for its own call (:func:`lightning_compress.core.direct_reads.set_readees`).

These functions are the only way code outside this file reads or removes transforms (no other file
names the ``_lc_*`` attributes of a wrapped module):

* :func:`param_transforms` / :func:`input_transforms`: the registered :class:`Transform` objects
  (a copy of the list, in the order forward applies them); :func:`transformed_params`: which
  parameters of a module carry any.
* :func:`find_transform`: the first transform of a kind (and optionally a type of ``fn``).
* :func:`drop` removes the transforms that match ``kinds`` / ``owner`` / ``predicate`` (unwrapping a
  module left with none); :func:`bake` first writes their effective value into the parameter.
* :func:`original_class`: the user's class under the swap.
* :func:`strip` takes all the machinery off a whole model without baking: every module gets its
  class back and every ``_lc_*`` buffer and attribute (masks, unit records, observers) goes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

TransformFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]

#: prefix of every buffer and attribute lightning-compress adds to a user's module; :func:`strip`
#: deletes them all.  Other files build their names with :func:`private_name`, never by hand.
PRIVATE_PREFIX = "_lc_"


def private_name(name: str) -> str:
    """``"_lc_" + name``: the name of a buffer / attribute lightning-compress adds to a module."""
    return PRIVATE_PREFIX + name


#: attribute names of the direct-read machinery (:func:`lightning_compress.core.direct_reads.set_readees`)
READEES = PRIVATE_PREFIX + "readees"  # on a reader: the children whose parameters its forward reads
READERS = PRIVATE_PREFIX + "readers"  # on a child: the readers that list it
ACTIVE = PRIVATE_PREFIX + "active"  # True while a forward has the module's effective values in place
CALLS = PRIVATE_PREFIX + "calls"  # forward calls of a watched child (input transforms under a reader)

#: priorities: lower runs first
MASK_PRIORITY = 0
QUANT_PRIORITY = 10


@dataclass
class Transform:
    owner: str
    kind: str
    priority: int
    fn: TransformFn


class CompressedModuleMixin:
    """Mixin placed in front of the user's module class by :func:`wrap`."""

    _lc_original_class: type
    _lc_param_transforms: dict[str, list[Transform]]
    _lc_input_transforms: list[Transform]

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        saved: list[tuple[dict[str, Any], str, Any]] = []
        active: list[nn.Module] = []
        readees = self.__dict__.get(READEES)
        watched: list[tuple[nn.Module, int]] = []
        try:
            if not self.__dict__.get(ACTIVE):  # else a reader above already put the effective values in
                _substitute(self, saved)
            if CALLS in self.__dict__:  # a reader checks that this forward ran (input transforms)
                self.__dict__[CALLS] += 1
            for child in readees or ():
                if is_wrapped(child) and not child.__dict__.get(ACTIVE) and _substitute(child, saved, hoisted=True):
                    child.__dict__[ACTIVE] = True
                    active.append(child)
                if is_wrapped(child) and child._lc_input_transforms:  # type: ignore[attr-defined]
                    watched.append((child, child.__dict__.setdefault(CALLS, 0)))
            if self._lc_input_transforms and args:
                x = args[0]
                for t in self._lc_input_transforms:
                    x = t.fn(self, x)
                args = (x,) + tuple(args[1:])
            if not watched:
                return self._lc_original_class.forward(self, *args, **kwargs)
            fast = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)  # the fast path skips the children's forward
            try:
                out = self._lc_original_class.forward(self, *args, **kwargs)
            finally:
                torch.backends.mha.set_fastpath_enabled(fast)
            for child, calls in watched:
                if child.__dict__.get(CALLS, 0) == calls:
                    raise RuntimeError(
                        f"{original_class(self).__name__}.forward read the weights of its child {original_class(child).__name__} "
                        f"without calling it: its input transform was bypassed; exclude it from activation quantization."
                    )
            return out
        finally:
            for home, name, original in reversed(saved):
                home[name] = original
            for m in active:
                m.__dict__[ACTIVE] = False


def _substitute(module: nn.Module, saved: list[tuple[dict[str, Any], str, Any]], hoisted: bool = False) -> bool:
    """Put the effective value of each transformed parameter where ``forward`` reads it (plain dict
    assignment: ``__setattr__`` refuses a non-Parameter), the originals into ``saved``: ``_parameters``
    (FSDP2 puts the gathered parameter there), and the instance attribute too where FSDP1
    (``use_orig_params``) set the unsharded view as one.  ``hoisted`` (a reader for its child): return
    False, doing nothing, when a parameter is empty (not gathered yet: the child's forward applies it)."""
    params, inst = module._parameters, module.__dict__

    def current(name: str) -> Any:
        return inst[name] if isinstance(inst.get(name), torch.Tensor) else params.get(name)

    transformed = [(n, ts) for n, ts in module._lc_param_transforms.items() if ts]  # type: ignore[attr-defined]
    if hoisted and any((p := current(n)) is not None and p.numel() == 0 for n, _ in transformed):
        return False
    for name, transforms in transformed:
        in_dict = isinstance(inst.get(name), torch.Tensor)
        value = original = current(name)
        if original is None:
            continue
        for t in transforms:
            value = t.fn(module, value)
        for home in (params, inst) if in_dict else (params,):
            if name in home:
                saved.append((home, name, home[name]))
                home[name] = value
    return True


_CLASS_CACHE: dict[type, type] = {}


def cached_subclass(mixin: type, cls: type, prefix: str, home: str, cache: dict[type, type]) -> type:
    """``type(f"{prefix}{cls.__name__}_<hash>", (mixin, cls), {})``, created once per ``cls`` and
    registered as an attribute of module ``home`` so pickle finds it (a whole model can be
    ``torch.save``-d while swapped)."""
    if cls in cache:
        return cache[cls]
    name = f"{prefix}{cls.__name__}_{abs(hash((cls.__module__, cls.__qualname__))) % 10**8}"
    new_cls = type(name, (mixin, cls), {"__module__": home})
    new_cls.__qualname__ = name
    setattr(sys.modules[home], name, new_cls)
    cache[cls] = new_cls
    return new_cls


def _compressed_class(cls: type) -> type:
    return cached_subclass(CompressedModuleMixin, cls, "Compressed", __name__, _CLASS_CACHE)


def is_wrapped(module: nn.Module) -> bool:
    return isinstance(module, CompressedModuleMixin)


def wrap(module: nn.Module) -> nn.Module:
    """Swap ``module.__class__`` for its compressed subclass (idempotent).  Returns the module."""
    if is_wrapped(module):
        return module
    cls = type(module)
    module.__class__ = _compressed_class(cls)
    module._lc_original_class = cls  # type: ignore[attr-defined]
    module._lc_param_transforms = {}  # type: ignore[attr-defined]
    module._lc_input_transforms = []  # type: ignore[attr-defined]
    return module


def _unwrap(module: nn.Module) -> nn.Module:
    """Restore the original class and drop all transforms (buffers added by owners stay)."""
    if not is_wrapped(module):
        return module
    cls = module._lc_original_class  # type: ignore[attr-defined]
    for reader in module.__dict__.pop(READERS, []):  # a reader left with nothing to read is unwrapped too
        rest = [c for c in reader.__dict__.get(READEES, []) if c is not module]
        reader.__dict__[READEES] = rest
        if is_wrapped(reader) and not rest and not reader._lc_param_transforms and not reader._lc_input_transforms:
            _unwrap(reader)
    for child in module.__dict__.pop(READEES, []):
        readers = child.__dict__.get(READERS, [])
        readers[:] = [r for r in readers if r is not module]
    for attr in ("_lc_param_transforms", "_lc_input_transforms", "_lc_original_class", ACTIVE, CALLS):
        module.__dict__.pop(attr, None)
    module.__class__ = _without_mixin(type(module), cls)
    return module


_REBUILT: dict[tuple[type, type, type], type] = {}


def replace_base(current: type, layer: type, base: type) -> type:
    """``current`` with the class ``layer`` (a swapped-in subclass of ``base``) taken out: ``base``
    when ``current`` is ``layer``; when another class was swapped in on top of ``layer`` afterwards
    (FSDP2's ``fully_shard`` turns ``Compressed<Linear>`` into ``FSDP<Compressed<Linear>>``, bases
    ``(FSDPModule, Compressed<Linear>)``), a class with ``layer`` replaced by ``base`` among its bases
    (``(FSDPModule, Linear)``), so the module keeps that outer layer (cached)."""
    if current is layer or layer not in current.__bases__:
        return base
    key = (current, layer, base)
    if key not in _REBUILT:
        bases = tuple(base if b is layer else b for b in current.__bases__)
        body = {k: v for k, v in current.__dict__.items() if k not in ("__dict__", "__weakref__")}
        _REBUILT[key] = type(current.__name__.replace(layer.__name__, base.__name__), bases, body)
    return _REBUILT[key]


def _without_mixin(current: type, original: type) -> type:
    """``current`` without the compressed subclass of ``original`` (see :func:`replace_base`)."""
    compressed = _CLASS_CACHE.get(original)
    return original if compressed is None else replace_base(current, compressed, original)


def _insert(transforms: list[Transform], new: Transform, where: str) -> None:
    for t in transforms:
        if t.kind == new.kind and t.owner != new.owner:
            raise ValueError(
                f"{where} already has a {new.kind!r} transform from {t.owner!r}; {new.owner!r} cannot add "
                f"another. Two callbacks must not {new.kind} the same weight: exclude this module from one "
                f"of them (argument `exclude`) or merge them into one callback with `groups`."
            )
        if t.owner == new.owner and t.kind == new.kind:
            transforms.remove(t)
            break
    transforms.append(new)
    transforms.sort(key=lambda t: t.priority)


def add_param_transform(
    module: nn.Module,
    param_name: str,
    owner: str,
    fn: TransformFn,
    *,
    kind: str,
    priority: int,
    module_name: str = "",
) -> None:
    """Register ``fn`` on ``module.<param_name>`` (wraps the module if needed).

    Raises:
        ValueError: if the parameter does not exist, or another owner registered the same ``kind``.
    """
    if param_name not in module._parameters or module._parameters[param_name] is None:
        raise ValueError(f"module {module_name or type(module).__name__!r} has no parameter {param_name!r}")
    wrap(module)
    transforms = module._lc_param_transforms.setdefault(param_name, [])  # type: ignore[attr-defined]
    _insert(transforms, Transform(owner, kind, priority, fn), f"{module_name or type(module).__name__}.{param_name}")


def add_input_transform(
    module: nn.Module, owner: str, fn: TransformFn, *, kind: str, priority: int, module_name: str = ""
) -> None:
    """Register ``fn`` on the first positional input of ``module.forward``."""
    wrap(module)
    _insert(module._lc_input_transforms, Transform(owner, kind, priority, fn), f"{module_name or type(module).__name__} input")  # type: ignore[attr-defined]


def remove_owner(module: nn.Module, owner: str) -> None:
    """Remove every transform ``owner`` registered on ``module``; unwrap when none are left."""
    if not is_wrapped(module):
        return
    for name, transforms in list(module._lc_param_transforms.items()):  # type: ignore[attr-defined]
        transforms[:] = [t for t in transforms if t.owner != owner]
        if not transforms:
            del module._lc_param_transforms[name]  # type: ignore[attr-defined]
    module._lc_input_transforms[:] = [t for t in module._lc_input_transforms if t.owner != owner]  # type: ignore[attr-defined]
    if not module._lc_param_transforms and not module._lc_input_transforms and not module.__dict__.get(READEES):  # type: ignore[attr-defined]
        _unwrap(module)


def owners(module: nn.Module, param_name: str | None = None) -> list[tuple[str, str]]:
    """(owner, kind) pairs registered on a parameter (or on the input when ``param_name`` is None)."""
    if not is_wrapped(module):
        return []
    if param_name is None:
        return [(t.owner, t.kind) for t in module._lc_input_transforms]  # type: ignore[attr-defined]
    return [(t.owner, t.kind) for t in module._lc_param_transforms.get(param_name, [])]  # type: ignore[attr-defined]


def effective_param(module: nn.Module, param_name: str, kinds: tuple[str, ...] | None = None) -> torch.Tensor:
    """The parameter as ``forward`` sees it (optionally only through transforms of ``kinds``)."""
    value = module._parameters[param_name]
    assert value is not None
    if is_wrapped(module):
        for t in module._lc_param_transforms.get(param_name, []):  # type: ignore[attr-defined]
            if kinds is None or t.kind in kinds:
                value = t.fn(module, value)
    return value


def apply_mask(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``tensor * mask`` for a bool ``mask``, fast: the bool storage is reinterpreted as uint8
    (zero-copy) and cast to ``tensor.dtype``.  PyTorch's bool->float cast and bool*float promotion
    take a slow path (measured 1 thread, 1024x256: ``w * bool`` 204 us, uint8 cast + multiply ~50 us),
    which made masking cost more than the rest of a BERT-small training step's overhead."""
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    return tensor * mask.to(tensor.dtype)


def mask_transform(buffer_name: str) -> TransformFn:
    """A transform multiplying by the (bool) buffer ``buffer_name`` of the module."""

    def fn(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
        return apply_mask(tensor, getattr(module, buffer_name))

    fn.__qualname__ = f"mask_transform[{buffer_name}]"
    return fn


# ---------------------------------------------------------------------------------------- public reading API
KindSelector = Callable[[str], bool]


def _matches(t: Transform, kinds: "tuple[str, ...] | KindSelector | None", owner: str | None) -> bool:
    if owner is not None and t.owner != owner:
        return False
    if kinds is None:
        return True
    if callable(kinds):
        return bool(kinds(t.kind))
    return t.kind in kinds


def param_transforms(module: nn.Module, param_name: str) -> list[Transform]:
    """The transforms on ``module.<param_name>`` in the order forward applies them (a copy)."""
    if not is_wrapped(module):
        return []
    return list(module._lc_param_transforms.get(param_name, []))  # type: ignore[attr-defined]


def input_transforms(module: nn.Module) -> list[Transform]:
    """The transforms on the first positional input of ``module.forward`` (a copy)."""
    if not is_wrapped(module):
        return []
    return list(module._lc_input_transforms)  # type: ignore[attr-defined]


def transformed_params(module: nn.Module) -> list[str]:
    """Names of ``module``'s own parameters that carry at least one transform."""
    if not is_wrapped(module):
        return []
    return [n for n, ts in module._lc_param_transforms.items() if ts]  # type: ignore[attr-defined]


def find_transform(
    module: nn.Module, param_name: str | None, kind: str, fn_type: type | None = None
) -> Transform | None:
    """The first transform of ``kind`` on ``module.<param_name>`` (on the input when ``param_name``
    is None) whose ``fn`` is an instance of ``fn_type`` (any when None)."""
    ts = input_transforms(module) if param_name is None else param_transforms(module, param_name)
    for t in ts:
        if t.kind == kind and (fn_type is None or isinstance(t.fn, fn_type)):
            return t
    return None


def original_class(module: nn.Module) -> type:
    """The user's class of ``module`` (its own class when it is not wrapped)."""
    return module.__dict__.get("_lc_original_class", type(module))


def drop(
    module: nn.Module,
    kinds: "tuple[str, ...] | KindSelector | None" = None,
    *,
    owner: str | None = None,
    inputs: bool = True,
) -> int:
    """Remove the transforms of ``module`` that match ``kinds`` (a tuple of kinds, a predicate on the
    kind, or None for all) and ``owner`` (None: any owner); parameter transforms always, input
    transforms when ``inputs``.  Unwraps the module when nothing is left.  Returns how many went."""
    if not is_wrapped(module):
        return 0
    gone = 0
    for name, transforms in list(module._lc_param_transforms.items()):  # type: ignore[attr-defined]
        keep = [t for t in transforms if not _matches(t, kinds, owner)]
        gone += len(transforms) - len(keep)
        transforms[:] = keep
        if not transforms:
            del module._lc_param_transforms[name]  # type: ignore[attr-defined]
    if inputs:
        its = module._lc_input_transforms  # type: ignore[attr-defined]
        keep = [t for t in its if not _matches(t, kinds, owner)]
        gone += len(its) - len(keep)
        its[:] = keep
    if not module._lc_param_transforms and not module._lc_input_transforms and not module.__dict__.get(READEES):  # type: ignore[attr-defined]
        _unwrap(module)
    return gone


@torch.no_grad()
def bake(model: nn.Module, kinds: "tuple[str, ...] | KindSelector | None" = None) -> dict[str, list[str]]:
    """Write the effective value of every transformed parameter of ``model`` and its submodules
    (through the transforms that match ``kinds``, in forward order) into the parameter itself, in
    place: forward then computes the same with or without those transforms.  The transforms stay
    registered (call :func:`drop` or :func:`strip` to take them off).  Returns
    ``{qualified parameter name: [kinds baked]}`` (for a leaf module: ``{"weight": [...]}``)."""
    baked: dict[str, list[str]] = {}
    for prefix, module in model.named_modules():
        for pname in transformed_params(module):
            sel = tuple(t.kind for t in param_transforms(module, pname) if _matches(t, kinds, None))
            if not sel:
                continue
            value = effective_param(module, pname, kinds=sel)
            param = module._parameters[pname]
            assert param is not None
            param.data.copy_(value.detach().to(param.dtype))
            baked[f"{prefix}.{pname}" if prefix else pname] = list(sel)
    return baked


def strip(model: nn.Module) -> nn.Module:
    """Take all lightning-compress machinery off ``model`` in place, without baking: every module
    gets its original class back (all transforms dropped) and every ``_lc_*`` buffer (masks, unit
    masks, activation ranges) and ``_lc_*`` attribute (unit-group records) is deleted.  Parameters
    keep their stored values (call :func:`bake` first to keep what forward computed).  Returns
    ``model``."""
    for module in model.modules():
        _unwrap(module)
        for name in [b for b in module._buffers if b.startswith(PRIVATE_PREFIX)]:
            del module._buffers[name]
        for name in [a for a in module.__dict__ if a.startswith(PRIVATE_PREFIX)]:
            del module.__dict__[name]
    return model
