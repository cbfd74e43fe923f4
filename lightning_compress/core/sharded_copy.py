"""A full, plain CPU copy of an FSDP1- or FSDP2-sharded model, gathered on rank 0 only.

Used by ``RedundancyClean`` (and by a user who wants ``clean`` after sharded training)::

    full = full_model_copy(trainer.strategy.model, pl_module)   # collective: every rank calls it
    if full is not None:                                         # rank 0
        slim = lightning_compress.clean(full)

Memory: the full parameters come from the sharded model's full state dict, built unit by unit and
offloaded to CPU on rank 0 (FSDP1 ``FULL_STATE_DICT`` with ``offload_to_cpu`` and ``rank0_only``;
FSDP2 ``get_model_state_dict(full_state_dict=True, cpu_offload=True)``), and the copy *reuses* those
tensors as its parameters: rank 0 holds one full copy, the other ranks none (never the gathered
state plus a clone of it).

The copy has the user's module classes (FSDP1 wrappers removed, FSDP2's ``FSDP<cls>`` layer taken off
the class), every lightning-compress transform and ``_lc_*`` buffer (masks are full plain buffers on
every rank, copied from the live model), and no hooks.  Pure PyTorch (no lightning import).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

#: nn.Module attributes holding hooks: the copy gets empty ones (FSDP's hooks stay with the original)
HOOK_DICTS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)


#: module attributes holding FSDP's own state (``fully_shard`` stores it under a composable-API key)
_SHARDING_STATE_PREFIXES = ("__composable_api_state_key", "_fsdp_")


def _fsdp1_inner(module: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel

    while isinstance(module, FullyShardedDataParallel):
        module = module._fsdp_wrapped_module
    return module


def plain_class(cls: type) -> type:
    """``cls`` without FSDP2's class layer (``fully_shard`` makes ``FSDP<X>`` with bases ``(FSDPModule, X)``)."""
    from torch.distributed.fsdp import FSDPModule

    while issubclass(cls, FSDPModule) and FSDPModule in cls.__bases__:
        rest = [b for b in cls.__bases__ if b is not FSDPModule]
        if len(rest) != 1:
            break
        cls = rest[0]
    return cls


def full_state_dict_rank0(root: nn.Module) -> dict[str, torch.Tensor]:
    """The full model state dict on CPU, on rank 0 ({} elsewhere); ``root`` is the FSDP1 root or an
    FSDP2 (``fully_shard``-ed) model.  Collective."""
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

    if isinstance(root, FullyShardedDataParallel):
        cfg = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FullyShardedDataParallel.state_dict_type(root, StateDictType.FULL_STATE_DICT, cfg):
            state = root.state_dict()
        return dict(state) if torch.distributed.get_rank() == 0 else {}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return dict(state) if torch.distributed.get_rank() == 0 else {}


@torch.no_grad()
def copy_with_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model``'s module tree whose parameters (and persistent buffers) are the tensors of
    ``state`` (keys: qualified names in ``model`` with FSDP1 wrapper prefixes removed), used as they
    are (not cloned); other buffers are cloned from ``model``."""
    model = _fsdp1_inner(model)
    memo: dict[int, Any] = {}
    named: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        inner = _fsdp1_inner(module)
        if id(inner) in memo:
            memo[id(module)] = memo[id(inner)]
            return
        cls = plain_class(type(inner))
        shell = cls.__new__(cls)
        memo[id(inner)] = memo[id(module)] = shell
        named.append((prefix, inner))
        for cname, child in inner._modules.items():
            if child is not None:
                walk(f"{prefix}.{cname}" if prefix else cname, child)

    walk("", model)
    missing = []
    for prefix, module in named:
        for pname, p in module._parameters.items():
            if p is None or id(p) in memo:
                continue
            key = f"{prefix}.{pname}" if prefix else pname
            if key not in state:
                missing.append(key)
                continue
            memo[id(p)] = nn.Parameter(state[key], requires_grad=p.requires_grad)
        for bname, b in module._buffers.items():
            if b is None or id(b) in memo:
                continue
            key = f"{prefix}.{bname}" if prefix else bname
            memo[id(b)] = state[key] if key in state else b.detach().cpu().clone()
        for attr in HOOK_DICTS:
            d = module.__dict__.get(attr)
            if d is not None:
                memo[id(d)] = type(d)()
    if missing:
        raise ValueError(f"copy_with_state: the full state dict lacks parameters {missing[:5]}")
    for _, module in named:
        shell = memo[id(module)]
        body = dict(module.__getstate__() if hasattr(module, "__getstate__") else module.__dict__)
        if "_device_mesh" in body:  # a LightningModule's mesh belongs to the live process group
            body["_device_mesh"] = None
        for key in [k for k in body if k.startswith(_SHARDING_STATE_PREFIXES)]:
            del body[key]  # FSDP2's per-module state (process groups, hooks) stays with the original
        for key, value in body.items():
            try:
                shell.__dict__[key] = copy.deepcopy(value, memo)
            except TypeError as err:
                raise TypeError(f"copy_with_state: attribute {key!r} of {type(module).__name__}: {err}") from err
    return memo[id(model)].cpu()


def full_model_copy(root: nn.Module, model: nn.Module | None = None) -> nn.Module | None:
    """A full plain CPU copy of ``model`` (default: the module ``root`` wraps) on rank 0, None on the
    other ranks.  ``root``: the FSDP1 root ``FullyShardedDataParallel`` or the FSDP2 model.
    Collective: call on every rank."""
    state = full_state_dict_rank0(root)
    if torch.distributed.get_rank() != 0:
        return None
    return copy_with_state(model if model is not None else root, state)


__all__ = ["HOOK_DICTS", "copy_with_state", "full_model_copy", "full_state_dict_rank0", "plain_class"]
