"""The example run that records a model's real forward (for
:func:`lightning_compress.core.channel_trace.record_channel_spaces`), from the first source that has one:

1. an explicit example (a callback's ``example_input`` argument): ``model(example)``; a tuple is
   unpacked as positional arguments, a dict as keyword arguments (a LightningModule without
   ``forward``: the example is a batch, run as ``training_step(example, 0)``);
2. the model's ``example_input_array`` (Lightning's attribute), called the same way (skipped for a
   LightningModule without ``forward``);
3. under a Trainer, the first batch of the stage's dataloader (``fit``: the train dataloader, also
   through a datamodule), run through the matching step method (``training_step(batch, 0)``,
   ``validation_step``, ``test_step``, ``predict_step``) with ``self.log`` / ``self.log_dict`` made
   no-ops for that call.  This works on a LightningModule without ``forward``.  The global torch and
   Python RNG states are restored after drawing the batch, so training sees the same shuffling.

Inputs are moved to the device of the model's first parameter.  The run itself happens in the
recorder (eval mode, ``torch.no_grad``).
"""

from __future__ import annotations

import random
from typing import Any, Callable

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import LightningModule, Trainer
from torch import nn

_STEP = {"fit": "training_step", "validate": "validation_step", "test": "test_step", "predict": "predict_step"}
_LOOP = {"fit": "fit_loop", "validate": "validate_loop", "test": "test_loop", "predict": "predict_loop"}


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _call(model: nn.Module, example: Any) -> Any:
    example = move_data_to_device(example, _device(model))
    if isinstance(example, tuple):
        return model(*example)
    if isinstance(example, dict):
        return model(**example)
    return model(example)


def first_batch(trainer: Trainer, stage: str | None) -> Any:
    """The first batch of ``stage``'s dataloader, or None when the trainer has none (yet)."""
    loop = getattr(trainer, _LOOP.get(stage or "", ""), None)
    source = getattr(loop, "_data_source", None)
    if source is None or getattr(source, "instance", None) is None or not source.is_defined():
        return None
    loaders = source.dataloader()
    while isinstance(loaders, list | tuple | dict) and loaders:
        loaders = next(iter(loaders.values())) if isinstance(loaders, dict) else loaders[0]
    if loaders is None or isinstance(loaders, list | tuple | dict):
        return None
    torch_state, py_state = torch.random.get_rng_state(), random.getstate()
    try:
        it = iter(loaders)
        batch = next(it)
        del it
    except StopIteration:
        return None
    finally:
        torch.random.set_rng_state(torch_state)
        random.setstate(py_state)
    return batch


def example_run(
    model: nn.Module, example: Any, trainer: Trainer | None, stage: str | None
) -> tuple[Callable[[], Any], str] | None:
    """``(run, what)``: a zero-argument callable running the model on an example, and a phrase naming
    the source (for error messages); None when no source has an example."""
    no_forward = isinstance(model, LightningModule) and type(model).forward is LightningModule.forward
    if example is not None and no_forward:
        return _step_run(model, "training_step", example), "`example_input` (a batch) through `training_step`"
    if example is not None:
        return (lambda: _call(model, example)), "`example_input`"
    arr = getattr(model, "example_input_array", None)
    if arr is not None and not no_forward:
        return (lambda: _call(model, arr)), "`example_input_array`"
    if trainer is None or not isinstance(model, LightningModule) or stage not in _STEP:
        return None
    batch = first_batch(trainer, stage)
    if batch is None:
        return None
    return _step_run(model, _STEP[stage], batch), f"the first {stage} batch through `{_STEP[stage]}`"


def _step_run(model: LightningModule, step: str, batch: Any) -> Callable[[], Any]:
    """``model.<step>(batch, 0)`` with ``self.log`` / ``self.log_dict`` as no-ops for the call."""

    def run() -> Any:
        quiet = lambda *a, **k: None  # noqa: E731 - self.log outside the loop would raise
        model.__dict__["log"], model.__dict__["log_dict"] = quiet, quiet
        try:
            return getattr(model, step)(move_data_to_device(batch, _device(model)), 0)
        finally:
            model.__dict__.pop("log", None)
            model.__dict__.pop("log_dict", None)

    return run


__all__ = ["example_run", "first_batch"]
