"""Activation (layer input) quantization kept in a slim model: a plain quantize-dequantize pre-hook.

``ActQuant`` (and DeepSpeed's ``activation_quantization``) / :func:`lightning_compress.quantize` put an
:class:`~lightning_compress.core.act_quant.ActFakeQuant` on a layer's first input; the trained model
computes with it.  :func:`lightning_compress.export.clean` must not drop it (the slim model would
compute another function), so it is replaced by an :class:`InputQuantize`: a forward pre-hook
(``module.register_forward_pre_hook``) that quantize-dequantizes the first positional input with the
quantizer's *frozen* eval-mode semantics:

* ``mode="static"``: one per-tensor scale / zero-point (the learned range, float32 scale, int32
  zero-point), computed as plain arithmetic with the fused kernel's values (:func:`per_tensor_qdq`);
* ``mode="dynamic"``: a range per slice computed at every call, reduced over the last dimension
  (``granularity="token"``, Linear) or over all but the batch dimension (``"sample"``, Conv2d), or
  per call over the whole tensor (``"tensor"``: a static quantizer that never learned a range).

A pre-hook keeps the user's class and ``state_dict`` keys; ``torch.export`` and the ONNX exporter
trace it into the graph.  A ``state_dict`` cannot carry it, so :func:`save_slim` stores it in
``model.safetensors`` under ``lc_act.<module>.scale`` / ``.zero_point`` with the settings in the
file's metadata, and :func:`lightning_compress.export.load_slim` puts it back (``load_slim_state``
refuses such a file, naming the modules).  Pure PyTorch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_compress.core import masking
from lightning_compress.core.act_quant import ActFakeQuant, dynamic_dims, static_range
from lightning_compress.core.fake_quant import fake_quant_dynamic
from lightning_compress.core.quant_grid import ACT_QUANT_KIND, affine_params, qrange

#: safetensors key prefix of the input quantizers' tensors
ACT_PREFIX = "lc_act."
#: safetensors metadata key of the input quantizers' settings (JSON)
ACT_META = "lc_act"
MODES = ("static", "dynamic")
GRANULARITIES = ("tensor", "token", "sample")


def per_tensor_qdq(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """:func:`lightning_compress.core.fake_quant.fake_quant_static` in plain arithmetic, the same values
    (the kernel's ``(clamp(round(x * (1 / scale)) + zp, qmin, qmax) - zp) * scale`` in float32, round
    half to even, with the same pre-clip below 8 bits), traceable by ``torch.export`` (the fused
    ``torch.fake_quantize_*`` with tensor parameters has no meta kernel) and by the ONNX exporter."""
    qmin, qmax = qrange(bits, symmetric)
    q8min, q8max = qrange(8, symmetric)
    s = scale.reshape(()).float()
    zp = zero_point.reshape(()).float()
    xf = x.float()
    if bits < 8:
        xf = torch.maximum(torch.minimum(xf, (qmax + 0.49 - zp) * s), (qmin - 0.49 - zp) * s)
    q = torch.clamp(torch.round(xf * (1.0 / s)) + zp, q8min, q8max)
    return ((q - zp) * s).to(x.dtype)


@dataclass
class InputQuantize:
    """Forward pre-hook: quantize-dequantize the first positional (floating) input of a module.

    Attributes:
        bits: width (8 or 4); symmetric: zero-point 0 or from the range.
        mode: ``"static"`` (fixed ``scale`` [1] float32 / ``zero_point`` [1] int32) or ``"dynamic"``.
        granularity: for ``"dynamic"``: ``"token"`` (reduce over the last dim), ``"sample"`` (all
            but dim 0; inputs of fewer than 2 dims reduce over the last), ``"tensor"`` (one range
            per call, as a static quantizer without a learned range).
    """

    bits: int
    symmetric: bool
    mode: str
    granularity: str = "tensor"
    scale: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "static":
            assert self.scale is not None and self.zero_point is not None
            return per_tensor_qdq(x, self.scale.to(x.device), self.zero_point.to(x.device), self.bits, self.symmetric)
        if self.granularity == "tensor":
            xd = x.detach().float()
            scale, zp = affine_params(xd.amin().reshape(1), xd.amax().reshape(1), self.bits, self.symmetric)
            return per_tensor_qdq(x, scale, zp, self.bits, self.symmetric)
        dims = (-1,) if self.granularity == "token" or x.dim() < 2 else tuple(range(1, x.dim()))
        return fake_quant_dynamic(x, self.bits, self.symmetric, dims)

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        if not args or not torch.is_tensor(args[0]) or not args[0].is_floating_point():
            return None
        return (self.quantize(args[0]),) + tuple(args[1:])

    def settings(self) -> dict[str, Any]:
        return {"bits": self.bits, "symmetric": self.symmetric, "mode": self.mode, "granularity": self.granularity}


def from_act_fake_quant(module: nn.Module, q: ActFakeQuant) -> InputQuantize | None:
    """The eval-mode function of ``q`` on ``module`` as an :class:`InputQuantize` (None when ``q``
    is disabled or only observing: the input then passes unchanged)."""
    if not q.enabled or q.observer is not None:
        return None
    if q.range == "dynamic":
        # as core.act_quant.dynamic_dims: per token for Linear and HF Conv1D, per sample otherwise
        granularity = "token" if dynamic_dims(module, torch.zeros(1, 1, 1)) == (-1,) else "sample"
        return InputQuantize(q.bits, bool(q.symmetric), "dynamic", granularity)
    rng = static_range(module)
    if rng is None:  # no range learned: ActFakeQuant uses the call's own per-tensor min / max
        return InputQuantize(q.bits, bool(q.symmetric), "dynamic", "tensor")
    scale, zp = affine_params(torch.tensor([rng[0]]), torch.tensor([rng[1]]), q.bits, bool(q.symmetric))
    return InputQuantize(q.bits, bool(q.symmetric), "static", "tensor", scale.clone(), zp.clone())


def collect_input_quant(model: nn.Module) -> dict[str, InputQuantize]:
    """``{module name: InputQuantize}`` for every input transform on ``model`` (call before
    :func:`lightning_compress.core.masking.strip`).

    Raises:
        ValueError: an input transform that is not an :class:`ActFakeQuant` (it cannot be kept in a
            plain model and dropping it would change what the model computes), or two on one module.
    """
    out: dict[str, InputQuantize] = {}
    for name, module in model.named_modules():
        transforms = masking.input_transforms(module)
        if not transforms:
            continue
        bad = [t for t in transforms if t.kind != ACT_QUANT_KIND or not isinstance(t.fn, ActFakeQuant)]
        if bad or len(transforms) > 1:
            what = [(t.owner, t.kind, type(t.fn).__name__) for t in transforms]
            raise ValueError(
                f"clean: module {name!r} carries input transforms {what}; only one ActFakeQuant "
                f"(ActQuant / lightning_compress.quantize) per module can be kept in the slim model, and dropping "
                f"the others would change what it computes. Remove them (masking.drop) before clean."
            )
        iq = from_act_fake_quant(module, transforms[0].fn)  # type: ignore[arg-type]
        if iq is not None:
            out[name] = iq
    return out


def attach_input_quant(model: nn.Module, quantizers: dict[str, InputQuantize]) -> nn.Module:
    """Register each :class:`InputQuantize` as a forward pre-hook of ``model.get_submodule(name)``
    (a previous one on that module is replaced).  Returns ``model``."""
    for name, iq in quantizers.items():
        module = model.get_submodule(name)
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, InputQuantize):
                del module._forward_pre_hooks[key]
        module.register_forward_pre_hook(iq)
    return model


def input_quantizers(model: nn.Module) -> dict[str, InputQuantize]:
    """``{module name: InputQuantize}`` registered on ``model`` (by :func:`attach_input_quant`)."""
    out: dict[str, InputQuantize] = {}
    for name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, InputQuantize):
                out[name] = hook
    return out


def to_safetensors(quantizers: dict[str, InputQuantize]) -> tuple[dict[str, torch.Tensor], str]:
    """Tensors (``lc_act.<module>.scale`` / ``.zero_point``) and the JSON settings to store."""
    tensors: dict[str, torch.Tensor] = {}
    for name, iq in quantizers.items():
        if iq.mode == "static":
            assert iq.scale is not None and iq.zero_point is not None
            tensors[f"{ACT_PREFIX}{name}.scale"] = iq.scale.detach().cpu().float().contiguous().clone()
            tensors[f"{ACT_PREFIX}{name}.zero_point"] = iq.zero_point.detach().cpu().to(torch.int32).contiguous().clone()
    return tensors, json.dumps({name: iq.settings() for name, iq in quantizers.items()})


def from_safetensors(raw: dict[str, torch.Tensor], meta: str, path: str) -> dict[str, InputQuantize]:
    """Inverse of :func:`to_safetensors`; ``path`` names the file in errors."""
    try:
        settings = json.loads(meta)
        out: dict[str, InputQuantize] = {}
        for name, s in settings.items():
            if s["mode"] not in MODES or s["granularity"] not in GRANULARITIES or int(s["bits"]) not in (4, 8):
                raise ValueError(f"bad settings {s}")
            scale = zp = None
            if s["mode"] == "static":
                scale, zp = raw[f"{ACT_PREFIX}{name}.scale"], raw[f"{ACT_PREFIX}{name}.zero_point"]
                if scale.shape != (1,) or zp.shape != (1,):
                    raise ValueError(f"scale/zero_point of {name!r} have shapes {tuple(scale.shape)}/{tuple(zp.shape)}, not (1,)")
            out[name] = InputQuantize(int(s["bits"]), bool(s["symmetric"]), s["mode"], s["granularity"], scale, zp)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(
            f"{path}: the activation-quantization entries are corrupt or incomplete ({type(err).__name__}: {err}); "
            f"re-export the model."
        ) from err
    return out


__all__ = [
    "ACT_META", "ACT_PREFIX", "InputQuantize", "attach_input_quant", "collect_input_quant", "from_act_fake_quant",
    "from_safetensors", "input_quantizers", "to_safetensors",
]
