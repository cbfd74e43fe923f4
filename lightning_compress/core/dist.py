"""Distributed helpers that work the same with no process group, DDP, DeepSpeed ZeRO 0-3 and FSDP.

DeepSpeed is imported lazily inside functions.  Under ZeRO-3 a parameter is an empty placeholder
outside forward (it has a ``ds_id`` attribute); :func:`full_param` / :func:`full_grad` return the full
fp32 tensors (collectives: call them on every rank, in the same order).

FSDP2 (``fully_shard``): between forwards a parameter and its reduced gradient are ``DTensor``s with
the full logical shape; :func:`full_param` / :func:`full_grad` all-gather them (``full_tensor()``,
collective) into plain tensors.

FSDP1 (``FullyShardedDataParallel``, ``use_orig_params=True``): between forwards ``module.weight`` is
a 1-D view of this rank's shard of the flat parameter (possibly empty) and ``.grad`` likewise;
nothing on the parameter says which part it is.  Read full values inside :func:`fsdp1_full_params`
(``summon_full_params`` on the FSDP root; with ``with_grads`` the reduced gradients too): there
``module.weight`` is the full parameter and the helpers above return it unchanged.
:func:`is_fsdp1_sharded` tells the two states apart for a parameter whose full shape is known.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator, Sequence

import torch
import torch.distributed as torch_dist


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def is_zero3_param(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def is_dtensor(tensor: object) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (an FSDP2 / tensor-parallel parameter or gradient)."""
    if not torch_dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def to_local_full(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor with the full value of ``tensor`` (all-gathers a DTensor, collective)."""
    if is_dtensor(tensor):
        return tensor.full_tensor()  # type: ignore[attr-defined]
    return tensor


def is_fsdp1_sharded(param: torch.Tensor, full_shape: Sequence[int]) -> bool:
    """True when ``param`` is an FSDP1 sharded view (flattened shard) rather than the full parameter
    of shape ``full_shape``."""
    return bool(getattr(param, "_fsdp_flattened", False)) and tuple(param.shape) != tuple(full_shape)


def full_param(param: torch.Tensor, in_engine: bool = False) -> torch.Tensor:
    """The whole parameter as an fp32 tensor, detached (gathers ZeRO-3 partitions and FSDP2 shards).

    ``in_engine``: the parameter belongs to a DeepSpeed engine (use its fp32 master copy).
    """
    if is_dtensor(param):
        return param.detach().full_tensor().float()  # type: ignore[attr-defined]
    if in_engine or is_zero3_param(param):
        from deepspeed.utils import safe_get_full_fp32_param

        full = safe_get_full_fp32_param(param)
        if full is not None:
            return full.detach().float()
    return param.detach().float()


def full_grad(param: torch.Tensor, in_engine: bool = False) -> torch.Tensor | None:
    """The reduced gradient of ``param`` (fp32), or None when there is none.

    Under DeepSpeed ZeRO 1/2/3 gradients do not stay in ``param.grad``: use
    ``deepspeed.utils.safe_get_full_grad`` (valid at the accumulation boundary; collective).
    """
    if in_engine or is_zero3_param(param):
        from deepspeed.utils import safe_get_full_grad

        try:
            grad = safe_get_full_grad(param)
        except ValueError:
            grad = None
        return None if grad is None else grad.detach().float()
    if param.grad is None:
        return None
    return to_local_full(param.grad.detach()).float()


@contextmanager
def gathered(params: Sequence[torch.nn.Parameter], modifier_rank: int | None = None) -> Iterator[None]:
    """Context in which ZeRO-3 parameters hold their full data (no-op for ordinary parameters).

    With ``modifier_rank`` set, edits made on that rank are broadcast to the partitions on exit.
    """
    zero3 = [p for p in params if is_zero3_param(p)]
    if not zero3:
        with nullcontext():
            yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(zero3, modifier_rank=modifier_rank):
        yield


def fsdp1_root(module: torch.nn.Module | None) -> torch.nn.Module | None:
    """``module`` when it is (or holds) an FSDP1 ``FullyShardedDataParallel`` module, else None."""
    if module is None or not torch_dist.is_available():
        return None
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(module, FullyShardedDataParallel):
        return module
    return module if any(isinstance(m, FullyShardedDataParallel) for m in module.modules()) else None


@contextmanager
def fsdp1_full_params(
    root: torch.nn.Module | None, *, with_grads: bool = False, writeback: bool = False
) -> Iterator[None]:
    """Context in which every FSDP1 parameter under ``root`` is its full, unsharded self (and, with
    ``with_grads``, its ``.grad`` the full reduced gradient); no-op when ``root`` holds no FSDP1
    module.  Collective: enter on every rank.  ``writeback``: in-place edits persist on exit.  Holds
    the whole unsharded model on each rank while open."""
    root = fsdp1_root(root)
    if root is None:
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(root, writeback=writeback, with_grads=with_grads):
        yield


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Broadcast in place from ``src`` (no-op without a process group). Bool tensors go as uint8."""
    if not is_distributed():
        return tensor
    if tensor.dtype == torch.bool:
        buf = tensor.to(torch.uint8)
        torch_dist.broadcast(buf, src)
        tensor.copy_(buf.bool())
    else:
        torch_dist.broadcast(tensor, src)
    return tensor


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """Average in place over ranks (no-op without a process group)."""
    if not is_distributed():
        return tensor
    torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    tensor.div_(torch_dist.get_world_size())
    return tensor
