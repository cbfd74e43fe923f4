"""``call_after_import(name, fn)``: run ``fn(module)`` once the module ``name`` has been imported.

Now, if it is imported already; otherwise a one-shot :data:`sys.meta_path` finder wraps the module's
loader so that ``fn`` runs right after the module's own code, inside the same import, and then puts
the original loader back on the module and leaves ``sys.meta_path``.  Nothing is imported to install
it.  An exception in ``fn`` becomes a warning: it never breaks the import of someone else's module.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any


class _ThenCall(importlib.abc.Loader):
    """The module's loader, then ``after(module)``; every other loader attribute is the original's."""

    def __init__(self, loader: Any, after: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._after = after

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._after(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, is_package, resource readers...
        return getattr(self._loader, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, fn: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.fn = fn
        self._searching = False  # another finder that asks sys.meta_path in turn must not loop back here

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name or self._searching:
            return None
        self._searching = True
        try:
            spec = self._spec_without_us(fullname, path, target)
        finally:
            self._searching = False
        if spec is None:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _ThenCall(spec.loader, self._done)
        return spec

    def _spec_without_us(self, fullname: str, path: Any, target: ModuleType | None) -> importlib.machinery.ModuleSpec | None:
        """The spec the import would get without this finder."""
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    return spec
        return None

    def _done(self, module: ModuleType) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        _call(self.fn, module)


def _call(fn: Callable[[ModuleType], None], module: ModuleType) -> None:
    try:
        fn(module)
    except Exception as err:  # noqa: BLE001 - someone else's import must not fail because of us
        warnings.warn(f"lightning_compress: {fn.__qualname__}({module.__name__}) failed: {err!r}", stacklevel=2)


def call_after_import(name: str, fn: Callable[[ModuleType], None]) -> None:
    """Run ``fn(module)`` for the module ``name`` now if it is imported, else right after its import.
    Installing the same ``fn`` for the same ``name`` twice is one hook."""
    module = sys.modules.get(name)
    if module is not None:
        _call(fn, module)
        return
    if not any(isinstance(f, _AfterImport) and (f.name, f.fn) == (name, fn) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, fn))
