"""Which sharding a Trainer runs, and the contexts the callbacks need under FSDP1 / FSDP2.

* FSDP1 (``FSDPStrategy``, ``FullyShardedDataParallel`` root in ``trainer.strategy.model``): between
  forwards a parameter is a flattened shard; :func:`full_params` opens ``summon_full_params`` on the
  root (collective) so that scores, prune events and baking read full weights and full reduced
  gradients.  Masks stay full plain buffers on every rank (FSDP1 does not shard buffers).
* FSDP2 (``fully_shard``, parameters are ``DTensor``): :mod:`lightning_compress.core.dist` gathers
  DTensors itself, so :func:`full_params` is a no-op.
* Anything else: no-op.

:func:`check_sharding` refuses, at ``setup``, what cannot work (FSDP1 without ``use_orig_params``,
FSDP2 meshes with tensor parallelism).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Literal

from torch import nn

from lightning_compress.core.dist import fsdp1_full_params, fsdp1_root, is_dtensor

Sharding = Literal["none", "fsdp1", "fsdp2"]


def sharding(trainer: Any) -> Sharding:
    """``"fsdp1"`` under Lightning's FSDPStrategy, ``"fsdp2"`` under ModelParallelStrategy (or a model
    with DTensor parameters), else ``"none"``."""
    strategy = getattr(trainer, "strategy", None)
    if strategy is None:
        return "none"
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    if isinstance(strategy, FSDPStrategy):
        return "fsdp1"
    if isinstance(strategy, ModelParallelStrategy):
        return "fsdp2"
    model = getattr(strategy, "model", None)
    if isinstance(model, nn.Module) and any(is_dtensor(p) for p in model.parameters()):
        return "fsdp2"
    return "none"


def _fsdp1_root(trainer: Any) -> nn.Module | None:
    strategy = getattr(trainer, "strategy", None)
    return fsdp1_root(getattr(strategy, "model", None)) if strategy is not None else None


@contextmanager
def full_params(trainer: Any, *, with_grads: bool = False, writeback: bool = False) -> Iterator[None]:
    """Full parameters (and reduced gradients with ``with_grads``) for the duration, on every rank
    (FSDP1: ``summon_full_params`` on the root, a collective; otherwise nothing to do)."""
    root = _fsdp1_root(trainer) if trainer is not None else None
    if root is None:
        yield
        return
    with fsdp1_full_params(root, with_grads=with_grads, writeback=writeback):
        yield


def check_sharding(trainer: Any, who: str) -> None:
    """Raise ``ValueError`` naming ``who`` when the Trainer's sharding cannot run the callbacks."""
    kind = sharding(trainer)
    strategy = getattr(trainer, "strategy", None)
    if kind == "fsdp1":
        kwargs = getattr(strategy, "kwargs", {}) or {}
        if kwargs.get("use_orig_params") is False:
            raise ValueError(
                f"{who}: FSDPStrategy(use_orig_params=False) is not supported: the masks and quantizers sit on the "
                f"original parameters, which FSDP1 only keeps with use_orig_params=True (Lightning's default)."
            )
    elif kind == "fsdp2":
        tp = getattr(strategy, "_tensor_parallel_size", 1)  # resolved to an int before callbacks' setup
        if isinstance(tp, int) and tp > 1:
            raise ValueError(
                f"{who}: ModelParallelStrategy with tensor_parallel_size={tp!r} is not supported: masks and "
                f"quantizers are computed for data-parallel (fully_shard) sharding only. Use "
                f"ModelParallelStrategy(data_parallel_size=<world size>, tensor_parallel_size=1) or the "
                f"'model_parallel_compression' strategy."
            )


__all__ = ["Sharding", "check_sharding", "full_params", "sharding"]
