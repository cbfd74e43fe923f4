"""``CompressionCallback``: what every callback that puts machinery on the user's modules shares.

It owns, once for all methods:

* **owner id** (``self.owner``): a string unique per instance, under which the callback registers its
  masks / quantizers with :mod:`lightning_compress.core.masking`; :meth:`remove` takes off exactly these.
* **targets** (``self.modules_touched``): ``{qualified name: module}`` of every module the callback put
  machinery on, filled by the subclass's :meth:`attach_model`.
* **attachment on every stage**: :meth:`setup` runs for ``fit``, ``validate``, ``test`` and ``predict``;
  the first time it sees a model it calls :meth:`attach_model`, so evaluation from a checkpoint runs the
  compressed model, not the dense one.  Seeing the same model again (a second ``fit``, a ``validate``
  after ``fit``) does nothing.  Seeing a *different* model re-targets: the machinery comes off the old
  model (:meth:`remove`), the per-model state is reset (:meth:`reset_state`), and the new model is
  attached.
* **deferred state**: Lightning restores callback state (``load_state_dict``) either before or after
  ``setup``; state that arrives before the targets exist is kept and applied right after
  :meth:`attach_model` (:meth:`apply_state` is the subclass's restore).
* **a stable** ``state_key``: built from :meth:`identity` (the arguments that identify the instance, e.g.
  ``modules``, ``bits``), so two instances of one class on disjoint modules coexist in one Trainer and a
  checkpoint finds its callback again in a new process.

Subclasses implement :meth:`attach_model` (and, if they keep state, :meth:`state_dict` +
:meth:`apply_state`); they call ``super().setup(...)`` if they override :meth:`setup`.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from typing_extensions import override

from lightning_compress.callbacks._sharding import check_sharding
from lightning_compress.core import masking

_COUNTER = itertools.count()


class CompressionCallback(Callback):
    """Shared base of the compression callbacks (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.owner = f"{type(self).__name__}#{next(_COUNTER)}"
        self.modules_touched: dict[str, nn.Module] = {}
        self._model_ref: weakref.ReferenceType[nn.Module] | None = None
        self._pending_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ identity
    def identity(self) -> dict[str, Any]:
        """Arguments that identify this instance (they make ``state_key``); override in subclasses."""
        return {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(**{k: repr(v) for k, v in self.identity().items()})

    # ------------------------------------------------------------------ attachment
    @property
    def attached_model(self) -> nn.Module | None:
        """The model this callback's machinery is on (None before ``setup`` or after :meth:`remove`)."""
        return None if self._model_ref is None else self._model_ref()

    @property
    def is_attached(self) -> bool:
        """True while the machinery is on a model: the model is alive, or modules still carry it (the
        modules are held strongly, the model weakly, so a dropped model does not lose loaded state)."""
        return self.attached_model is not None or bool(self.modules_touched)

    def attach_model(self, trainer: Trainer | None, model: nn.Module, stage: str | None) -> None:
        """Resolve targets on ``model`` and put the machinery on them; fill :attr:`modules_touched`.

        Runs once per model, on the first stage that sees it (``trainer`` is None when driven without
        Lightning)."""
        raise NotImplementedError

    def attach(self, model: nn.Module, trainer: Trainer | None = None, stage: str | None = None) -> None:
        """Attach to ``model`` (idempotent; re-targets when ``model`` is a new one), then apply any
        state that arrived earlier."""
        current = self.attached_model
        if current is model:
            return
        if current is not None or self._model_ref is not None:
            self.remove()
            self.reset_state()
        self.attach_model(trainer, model, stage)
        self._model_ref = weakref.ref(model)
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.apply_state(state)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_sharding(trainer, type(self).__name__)
        self.attach(pl_module, trainer, stage)

    def remove(self) -> None:
        """Take this callback's masks / quantizers off every module it touched (the model keeps its
        current weights)."""
        for module in self.modules_touched.values():
            masking.remove_owner(module, self.owner)
        self.modules_touched = {}
        self._model_ref = None

    def reset_state(self) -> None:
        """Forget per-model state before attaching to a new model (override when there is any)."""

    # ------------------------------------------------------------------ state
    def apply_state(self, state: dict[str, Any]) -> None:
        """Restore ``state`` (from :meth:`state_dict`) onto the attached targets."""

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.is_attached:
            self.apply_state(state_dict)
        else:
            self._pending_state = dict(state_dict)


__all__ = ["CompressionCallback"]
