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
* **resume with the same arguments**: :meth:`state_dict` stores :meth:`arguments` (every constructor
  argument that decides what the state means) next to the subclass's :meth:`own_state`;
  :meth:`load_state_dict` raises ``ValueError`` naming each argument whose checkpoint value differs
  from the current one.  When a changed argument changes ``state_key`` the state is not found at all:
  :meth:`on_load_checkpoint` then looks for state of a callback of the same class that no callback of
  the Trainer claims and raises, naming the differing arguments, instead of starting dense again (when
  only arguments outside :meth:`arguments` differ, e.g. ActQuant's ``momentum``, it loads that state).

Subclasses implement :meth:`attach_model` (and, if they keep state, :meth:`own_state` +
:meth:`apply_state`, and :meth:`reset_state` forgetting all of it); they call ``super().setup(...)`` if
they override :meth:`setup`.
"""

from __future__ import annotations

import copy
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

    #: False (the default): a schedule that cannot finish inside the fit (its last event or width after the
    #: fit's last optimizer step) is a ValueError at ``on_train_start``.  True for the callbacks that
    #: :func:`lightning_compress.from_deepspeed_config` builds: DeepSpeed runs a schedule as far as training
    #: goes, so there it is a warning (DeepSpeed configs keep DeepSpeed's semantics).
    schedule_may_outlast_fit: bool = False

    def schedule_cannot_finish(self, message: str) -> None:
        """Raise ``ValueError(message)``, or warn with it when :attr:`schedule_may_outlast_fit`."""
        if not self.schedule_may_outlast_fit:
            raise ValueError(message)
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(message + " (kept: DeepSpeed semantics, the schedule runs as far as training goes)")

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

    def arguments(self) -> dict[str, Any]:
        """Every argument that decides what this callback's saved state means (stored in the state and
        compared on load); default :meth:`identity`.  Values are plain (str, numbers, None, lists, dicts)."""
        return self.identity()

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
    def own_state(self) -> dict[str, Any]:
        """The subclass's state (masks, scores, schedule position...), restored by :meth:`apply_state`."""
        return {}

    def apply_state(self, state: dict[str, Any]) -> None:
        """Restore ``state`` (from :meth:`own_state`) onto the attached targets."""

    @override
    def state_dict(self) -> dict[str, Any]:
        args = self.arguments()
        return {**self.own_state(), "arguments": _plain(args)} if args else self.own_state()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        saved = state.pop("arguments", None)
        if saved is not None:  # checkpoints written before arguments were stored are not checked
            self._raise_on_changed_arguments(saved)
        if self.is_attached:
            self.apply_state(state)
        else:
            self._pending_state = state

    def changed_arguments(self, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{argument: (checkpoint value, current value)}`` for every argument that differs."""
        now = _plain(self.arguments())
        return {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}

    def _raise_on_changed_arguments(self, saved: dict[str, Any]) -> None:
        diff = self.changed_arguments(saved)
        if not diff:
            return
        name = type(self).__name__
        what = "; ".join(f"`{k}` = {old!r} in the checkpoint, {new!r} now" for k, (old, new) in diff.items())
        raise ValueError(
            f"{name}: the checkpoint holds {name} state written with other arguments ({what}). Its masks / "
            f"quantization state cannot serve the new arguments, and dropping them would train and evaluate "
            f"a dense model. Resume with the checkpoint's values, or load only the weights (without "
            f"`ckpt_path`) to compress anew."
        )

    @override
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint that has state for a callback of this class under another ``state_key``
        (a changed identifying argument), unless another callback of the Trainer claims it."""
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return
        cls = type(self).__qualname__
        claimed = {cb.state_key for cb in trainer.callbacks}
        cands = [
            (k, v) for k, v in states.items()
            if isinstance(k, str) and k not in claimed and (k == cls or k.startswith(cls + "{"))
        ]
        if not cands:
            return
        with_args = [v["arguments"] for _, v in cands if isinstance(v, dict) and isinstance(v.get("arguments"), dict)]
        if with_args:
            best = min(with_args, key=lambda a: len(self.changed_arguments(a)))
            self._raise_on_changed_arguments(best)
            # only arguments that may change on resume differ: this is our state under an older key
            state = next(v for _, v in cands if isinstance(v, dict) and v.get("arguments") is best)
            self.load_state_dict(copy.deepcopy(state))
            return
        raise ValueError(
            f"{type(self).__name__}: the checkpoint holds state for {[k for k, _ in cands]} but this callback's "
            f"state_key is {self.state_key!r}: it was written with other arguments. Resume with the arguments of "
            f"the run that saved it, or load only the weights (without `ckpt_path`) to compress anew."
        )


def _plain(value: Any) -> Any:
    """``value`` as plain data (tuples as lists, objects by ``repr``) so that it compares equal after
    a checkpoint round trip."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


__all__ = ["CompressionCallback"]
