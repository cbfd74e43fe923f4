"""Distributed helpers that work the same with no process group, DDP, and DeepSpeed ZeRO 0-3.

DeepSpeed is imported lazily inside functions.  Under ZeRO-3 a parameter is an empty placeholder
outside forward (it has a ``ds_id`` attribute); :func:`full_param` / :func:`full_grad` return the full
fp32 tensors (collectives: call them on every rank, in the same order).
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


def full_param(param: torch.Tensor, in_engine: bool = False) -> torch.Tensor:
    """The whole parameter as an fp32 tensor, detached (gathers ZeRO-3 partitions).

    ``in_engine``: the parameter belongs to a DeepSpeed engine (use its fp32 master copy).
    """
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
    return None if param.grad is None else param.grad.detach().float()


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
