"""Activation (layer input) fake quantizer riding on a module's forward (``add_input_transform``).

Put on modules by :class:`lightning_compress.core.act_quantizer.ActQuantizer` (behind the ``ActQuant``
callback) and by post-training :func:`lightning_compress.quantize`.  The static range lives in three
non-persistent buffers of the module (names in ``LO`` / ``HI`` / ``INIT``; :func:`static_range`,
:func:`set_static_range` and :func:`sync_static_ranges` are the only readers and writers).
Pure PyTorch.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import nn

from lightning_compress.core import masking
from lightning_compress.core.conv1d import is_conv1d
from lightning_compress.core.fake_quant import fake_quant_dynamic, fake_quant_static
from lightning_compress.core.quant_grid import ACT_QUANT_KIND, affine_params
from lightning_compress.core.quant_observers import RangeObserver, min_max

LO, HI, INIT = (masking.private_name(n) for n in ("act_lo", "act_hi", "act_init"))


def dynamic_dims(module: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """Per token for Linear and Hugging Face ``Conv1D`` (last dim), per image for Conv (all but the batch dim)."""
    if isinstance(module, nn.Linear) or is_conv1d(module) or x.dim() < 2:
        return (-1,)
    return tuple(range(1, x.dim()))


class ActFakeQuant:
    """Input transform ``fn(module, x)``.

    ``range="dynamic"``: ranges per token (Linear) / per image (Conv) at every call.
    ``range="static"``: one per-tensor range kept in the module's non-persistent buffers
    ``_lc_act_lo`` / ``_lc_act_hi`` / ``_lc_act_init``.  In training mode (and not ``frozen``) each
    call first updates it by an exponential moving average of the batch min / max
    (``r <- momentum * r + (1 - momentum) * batch``; the first batch sets it), then quantizes with it;
    in eval mode it is used as is.  Until a range exists (e.g. Lightning's sanity-check validation
    before any training), the call's own per-tensor min / max is used.

    ``observer`` (a :class:`RangeObserver`, post-training calibration) when set: the call only
    records the input and returns it unchanged.
    """

    def __init__(self, bits: int = 8, symmetric: bool = True, range: str = "dynamic", momentum: float = 0.95) -> None:
        self.bits = bits
        self.symmetric = symmetric
        self.range = range
        self.momentum = momentum
        self.frozen = False
        self.enabled = True
        self.observer: RangeObserver | None = None

    @staticmethod
    def init_buffers(module: nn.Module) -> None:
        ref = next(iter(module.parameters()), None)
        device = ref.device if ref is not None else None
        for name, value in ((LO, 0.0), (HI, 0.0)):
            if name not in module._buffers:
                module.register_buffer(name, torch.tensor(value, dtype=torch.float32, device=device), persistent=False)
        if INIT not in module._buffers:
            module.register_buffer(INIT, torch.tensor(False, device=device), persistent=False)

    def __call__(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or not torch.is_tensor(x) or not x.is_floating_point():
            return x
        if self.observer is not None:
            self.observer.update(x)
            return x
        if self.range == "dynamic":
            return fake_quant_dynamic(x, self.bits, self.symmetric, dynamic_dims(module, x))
        lo_b: torch.Tensor = getattr(module, LO)
        hi_b: torch.Tensor = getattr(module, HI)
        init: torch.Tensor = getattr(module, INIT)
        bounds = None
        if module.training and not self.frozen:
            # no host synchronisation: the first batch's range or the EMA, picked on the device
            # (``r * m + (1 - m) * batch`` rounds as the in-place ``mul_`` / ``add_`` it replaces)
            with torch.no_grad():
                b_lo, b_hi = min_max(x.detach().float())
                m = self.momentum
                lo_b.copy_(torch.where(init, lo_b * m + (1 - m) * b_lo, b_lo))
                hi_b.copy_(torch.where(init, hi_b * m + (1 - m) * b_hi, b_hi))
                init.fill_(True)
            lo, hi = lo_b, hi_b
            bounds = (b_lo, b_hi)  # x's exact min / max: the quantizer's CPU range check reads them
        elif bool(init):
            lo, hi = lo_b, hi_b
        else:
            lo, hi = min_max(x.detach().float())
        scale, zp = affine_params(lo.reshape(1), hi.reshape(1), self.bits, self.symmetric)
        return fake_quant_static(x, scale, zp, self.bits, self.symmetric, bounds)

    def __repr__(self) -> str:
        return f"ActFakeQuant(bits={self.bits}, symmetric={self.symmetric}, range={self.range!r}, frozen={self.frozen})"


def attach(module: nn.Module, quantizer: ActFakeQuant, owner: str, module_name: str) -> None:
    """Put ``quantizer`` on ``module``'s first input under ``owner`` (kind ``"act_quant"``); a static
    quantizer's range buffers are created first."""
    if quantizer.range == "static":
        ActFakeQuant.init_buffers(module)
    masking.add_input_transform(module, owner, quantizer, kind=ACT_QUANT_KIND, priority=masking.QUANT_PRIORITY, module_name=module_name)


def static_range(module: nn.Module) -> tuple[float, float] | None:
    """The (lo, hi) static range of a module (None when none was learned)."""
    if INIT not in module._buffers or not bool(module._buffers[INIT]):
        return None
    return float(module._buffers[LO]), float(module._buffers[HI])


def set_static_range(module: nn.Module, lo: float, hi: float) -> None:
    ActFakeQuant.init_buffers(module)
    module._buffers[LO].fill_(lo)  # type: ignore[union-attr]
    module._buffers[HI].fill_(hi)  # type: ignore[union-attr]
    module._buffers[INIT].fill_(True)  # type: ignore[union-attr]


def sync_static_ranges(modules: list[nn.Module]) -> None:
    """Average the static ranges over all ranks (no-op without a process group) so every rank
    quantizes with the same range.  Collective: call on every rank with the same module list."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_world_size() < 2 or not modules:
        return
    lo = [m._buffers[LO] for m in modules]
    hi = [m._buffers[HI] for m in modules]
    init = [m._buffers[INIT] for m in modules]
    flat = torch.stack([torch.stack(lo), torch.stack(hi), torch.stack(init).float()]).float()  # type: ignore[arg-type]
    torch_dist.all_reduce(flat)
    world = torch_dist.get_world_size()
    flat[:2] /= world
    for i, m in enumerate(modules):  # tensor copies: no host synchronisation
        m._buffers[LO].copy_(flat[0, i])  # type: ignore[union-attr]
        m._buffers[HI].copy_(flat[1, i])  # type: ignore[union-attr]
        m._buffers[INIT].copy_(flat[2, i] > 0)  # type: ignore[union-attr]
