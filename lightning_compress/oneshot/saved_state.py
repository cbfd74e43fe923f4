"""What a one-shot calibration leaves on a model, as plain data, and back: so a checkpoint written
after the calibration (``OneShotCompression``'s state) resumes with the very masks and quantizer ranges.

:func:`calibration_state` reads, for every module carrying machinery of ``owner``:

* ``"mask"``: the ``"sparse_mask"`` keep-mask (bool, the module's own weight layout), from
  SparseGPT / Wanda / Magnitude (restored stored one bit per weight, :mod:`~lightning_compress.oneshot.packed_mask`);
* ``"weight_quant"``: the fixed-range weight quantizer of GPTQ / RTN / SmoothQuant's W8 --
  ``spec`` (bits, granularity, group_size, symmetric, groups, scheme) and ``lo`` / ``hi`` (float32 per row of
  :func:`~lightning_compress.core.quant_grid.as_rows`, None for the ternary grid);
* ``"act_quant"``: SmoothQuant's input quantizer (bits, symmetric, range, momentum; the dynamic range
  has no other state).

Only ``dict`` / ``list`` / ``str`` / ``int`` / ``float`` / ``bool`` / ``None`` and tensors, so
``torch.load(weights_only=True)`` reads it.  The weights themselves (already pruned, on the grid, and
SmoothQuant's folded norms) are in the model's own ``state_dict``.  :func:`restore_calibration` puts
the same machinery back on a model that carries none of ``owner``'s (``ValueError`` naming the module
for a name the model lacks or a mask of another shape).  Pure PyTorch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_compress.core import act_quant as aq
from lightning_compress.core import masking
from lightning_compress.core.quant_grid import WEIGHT_QUANT_KIND, QuantSpec
from lightning_compress.oneshot.linear_view import TransposedWeightFakeQuant, is_conv1d
from lightning_compress.oneshot.packed_mask import PackedKeepMask, register_packed_mask

MASK_KIND = "sparse_mask"
MASK_BUFFER = masking.private_name("mask")
_SPEC_FIELDS = ("bits", "granularity", "group_size", "symmetric", "groups", "scheme")


def _owned(module: nn.Module, owner: str) -> list[masking.Transform]:
    ts = [t for p in masking.transformed_params(module) for t in masking.param_transforms(module, p)]
    return [t for t in ts + masking.input_transforms(module) if t.owner == owner]


def calibration_state(model: nn.Module, owner: str) -> dict[str, dict[str, Any]]:
    """``{qualified module name: {"mask" / "weight_quant" / "act_quant": ...}}`` for ``owner``'s machinery."""
    out: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        entry: dict[str, Any] = {}
        for t in _owned(module, owner):
            if t.kind == MASK_KIND:
                keep = t.fn.keep(module) if isinstance(t.fn, PackedKeepMask) else getattr(module, MASK_BUFFER)
                entry["mask"] = keep.detach().bool().cpu().clone()
            elif t.kind == WEIGHT_QUANT_KIND:
                q = t.fn
                ranges = getattr(q, "ranges", None)
                entry["weight_quant"] = {
                    "spec": {f: getattr(q.spec, f) for f in _SPEC_FIELDS},
                    "lo": None if ranges is None else ranges[0].detach().float().cpu().clone(),
                    "hi": None if ranges is None else ranges[1].detach().float().cpu().clone(),
                }
            elif t.kind == aq.ACT_QUANT_KIND:
                q = t.fn
                if q.range != "dynamic":
                    raise ValueError(f"oneshot: {name} has a static-range input quantizer; one-shot methods attach "
                                     f"dynamic ones only, so this state cannot be saved faithfully.")
                entry["act_quant"] = {"bits": q.bits, "symmetric": q.symmetric, "range": q.range, "momentum": q.momentum}
            else:
                raise ValueError(f"oneshot: {name} carries a {t.kind!r} transform of {owner!r} that a one-shot "
                                 f"checkpoint does not know how to save.")
        if entry:
            out[name] = entry
    return out


def restore_calibration(model: nn.Module, state: dict[str, dict[str, Any]], owner: str) -> dict[str, nn.Module]:
    """Put the machinery of :func:`calibration_state` back on ``model`` under ``owner``; returns the
    modules touched by name."""
    modules = dict(model.named_modules())
    missing = sorted(set(state) - set(modules))
    if missing:
        raise ValueError(f"oneshot: the saved calibration names modules this model lacks ({missing[:4]}); resume with "
                         f"the model the checkpoint was written from.")
    touched: dict[str, nn.Module] = {}
    try:
        for name, entry in state.items():
            module = modules[name]
            if "mask" in entry:
                keep = entry["mask"].to(module.weight.device).bool()
                want = tuple(getattr(module.weight, "ds_shape", module.weight.shape))
                if tuple(keep.shape) != want:
                    raise ValueError(f"oneshot: the saved mask of {name} has shape {tuple(keep.shape)}, the weight {want}; "
                                     f"resume with the model the checkpoint was written from.")
                register_packed_mask(module, keep, owner, MASK_KIND, name)
            if "weight_quant" in entry:
                wq = entry["weight_quant"]
                spec = QuantSpec(**{f: wq["spec"][f] for f in _SPEC_FIELDS})
                ranges = None if wq["lo"] is None else (wq["lo"].to(module.weight.device), wq["hi"].to(module.weight.device))
                from lightning_compress.core.fake_quant import WeightFakeQuant

                q: Any = TransposedWeightFakeQuant(spec, ranges) if is_conv1d(module) else WeightFakeQuant(spec)
                q.ranges = ranges
                masking.add_param_transform(module, "weight", owner, q, kind=WEIGHT_QUANT_KIND,
                                            priority=masking.QUANT_PRIORITY, module_name=name)
            if "act_quant" in entry:
                a = entry["act_quant"]
                aq.attach(module, aq.ActFakeQuant(a["bits"], a["symmetric"], a["range"], a["momentum"]), owner, name)
            touched[name] = module
    except Exception:  # all or nothing
        for module in touched.values():
            masking.remove_owner(module, owner)
        if name in modules and name not in touched:
            masking.remove_owner(modules[name], owner)
        raise
    return touched


__all__ = ["calibration_state", "restore_calibration"]
