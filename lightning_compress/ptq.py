"""Post-training quantization: :func:`quantize` (static with a calibration loader, else dynamic) and
the :func:`zeroquant` preset.  No training step; the model comes back fake-quantized (weights and
layer inputs), ready for :mod:`lightning_compress.export.onnx`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import nn

from lightning_compress.core import act_quant as aq
from lightning_compress.core import args, masking
from lightning_compress.core.act_quantizer import attach_act_quantizers
from lightning_compress.core.direct_reads import guard_direct_reads
from lightning_compress.core.fake_quant import pre_quant_weight, weight_quantizer
from lightning_compress.core.quant_grid import (
    GRANULARITIES,
    OBSERVERS,
    SUPPORTED_ACT_BITS,
    SUPPORTED_WEIGHT_BITS,
    QuantSpec,
    check_bits,
)
from lightning_compress.core.quant_observers import RangeObserver
from lightning_compress.core.weight_quantizer import attach_weight_quantizers, select_weight_targets

OWNER = "quantize"


def _to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def default_forward(model: nn.Module, batch: Any) -> Any:
    """dict -> ``model(**batch)``; tuple / list -> ``model(batch[0])`` (an ``(x, y)`` pair); tensor -> ``model(batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(batch[0])
    return model(batch)


def quantize(
    model: nn.Module,
    calib_dataloader: Iterable[Any] | None = None,
    weight_bits: int | None = 8,
    act_bits: int | None = 8,
    observer: Literal["minmax", "percentile", "mse"] = "minmax",
    granularity: Literal["tensor", "channel", "group"] = "channel",
    group_size: int | None = None,
    symmetric: bool = True,
    act_symmetric: bool | None = None,
    modules: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    num_batches: int | None = None,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Post-training quantization: returns a fake-quantized copy of ``model`` (no training step).

    Weights: fake-quantized with ``weight_bits`` / ``granularity`` / ``symmetric``; their clipping
    ranges are fixed once from the weights by ``observer`` (``minmax``; ``percentile``: the 99.99th
    percentile of each row; ``mse``: the clipping ratio minimizing the squared error per row).

    Activations (the input of each targeted Linear / Conv2d):

    * with ``calib_dataloader``: **static** per-tensor ranges, from running the model (eval mode, no
      grad, weights already quantized) over the loader (at most ``num_batches`` batches) with
      ``observer``; asymmetric by default (``act_symmetric=None``), i.e. uint8 QDQ in ONNX.
    * without: **dynamic** ranges per token (Linear) / per image (Conv) at every call; symmetric by
      default.

    Args:
        model: a torch model (not modified unless ``inplace``).
        calib_dataloader: iterable of batches (see ``forward_fn``); None for dynamic activations.
        weight_bits: 8, 4, 3, 2 (ternary), 1 (binary); None leaves weights in full precision.
        act_bits: 8 or 4; None leaves activations in full precision.
        observer: ``"minmax"``, ``"percentile"`` or ``"mse"`` (weights and static activations).
        granularity: weight scales per ``"tensor"``, ``"channel"`` or ``"group"`` (of ``group_size``).
        group_size: input values per weight group (``granularity="group"``).
        symmetric: symmetric weight quantization.
        act_symmetric: symmetric activation quantization (None: static asymmetric, dynamic symmetric).
        modules: regexes of modules to quantize (Linear, Conv2d; Embedding weights when named);
            None: every Linear / Conv2d except the last one.
        exclude: regexes of modules to leave alone.
        num_batches: calibration batches to use (None: the whole loader).
        forward_fn: ``fn(model, batch)`` running one batch (default :func:`default_forward`).
        inplace: quantize ``model`` itself instead of a deep copy.

    Raises:
        TypeError: an argument of the wrong type (:mod:`lightning_compress.core.args`: ``weight_bits="8"``,
            ``symmetric="no"``, ``inplace=1``, ``forward_fn=3``).
        ValueError: unsupported bits / observer / granularity, ``modules=[]``, a regex that does not
            compile, a group size that does not divide a module's input dimension, no quantizable layer,
            or a calibration loader that yields nothing.

    Example::

        qmodel = lightning_compress.quantize(model, calib_loader, weight_bits=8, act_bits=8, observer="percentile")
        lightning_compress.export_qdq(qmodel, (x,), "model_qdq.onnx")
    """
    owner = "quantize"
    if not isinstance(model, nn.Module):
        args.fail(owner, "model", model, f"is not a torch.nn.Module", "pass the model to quantize", TypeError)
    if weight_bits is not None:
        check_bits(weight_bits, SUPPORTED_WEIGHT_BITS, "weight_bits", owner)
    if act_bits is not None:
        check_bits(act_bits, SUPPORTED_ACT_BITS, "act_bits", owner)
    if weight_bits is None and act_bits is None:
        raise ValueError("quantize: `weight_bits` and `act_bits` are both None: nothing to quantize; set one of them.")
    args.check_choice(observer, "observer", owner, OBSERVERS)
    args.check_choice(granularity, "granularity", owner, GRANULARITIES)
    args.check_bool(act_symmetric, "act_symmetric", owner, allow_none=True)
    args.check_int(num_batches, "num_batches", owner, minimum=1, allow_none=True)
    args.check_callable(forward_fn, "forward_fn", owner, what="a function fn(model, batch)")
    args.check_bool(inplace, "inplace", owner)
    modules = args.check_regexes(modules, "modules", owner)
    exclude = args.check_regexes(exclude, "exclude", owner, allow_empty=True)
    if calib_dataloader is not None and not isinstance(calib_dataloader, Iterable):
        args.fail(owner, "calib_dataloader", calib_dataloader, "is not iterable", "pass a DataLoader (or any iterable of batches) or None", TypeError)
    spec = QuantSpec(weight_bits or 8, granularity, group_size, symmetric).validate(owner, "weight_bits")

    if not inplace:
        model = copy.deepcopy(model)
    static = calib_dataloader is not None
    if act_symmetric is None:
        act_symmetric = not static

    wtargets = select_weight_targets(model, modules, exclude, "quantize")
    atargets = {n: m for n, m in wtargets.items() if isinstance(m, (nn.Linear, nn.Conv2d))}
    if act_bits is not None and not atargets:
        raise ValueError("quantize: `act_bits` is set but no Linear / Conv2d module is selected; set act_bits=None or widen `modules`.")

    if weight_bits is not None:
        attach_weight_quantizers(wtargets, spec, OWNER, "quantize", observer=observer, calibrate=True)

    if act_bits is not None:
        # momentum is unused: static ranges come from the calibration below, then stay frozen
        quantizers = attach_act_quantizers(atargets, act_bits, act_symmetric, "static" if static else "dynamic", 0.95, OWNER)
    try:  # parents that read a child's weights directly (nn.MultiheadAttention's out_proj) substitute them
        guard_direct_reads(model)
    except ValueError as err:
        for module in wtargets.values():
            masking.remove_owner(module, OWNER)
        raise ValueError(f"quantize: {err}") from None
    if act_bits is not None:
        if static:
            _calibrate(model, atargets, quantizers, calib_dataloader, observer, act_bits, act_symmetric, num_batches, forward_fn)
    return model


def _calibrate(model, targets, quantizers, loader, observer, bits, symmetric, num_batches, forward_fn) -> None:
    for q in quantizers.values():
        q.observer = RangeObserver(observer, bits, symmetric)
    was_training = model.training
    model.eval()
    fwd = forward_fn or default_forward
    ref = next(iter(model.parameters()), None)
    seen = 0
    try:
        with torch.no_grad():
            for batch in loader:
                if ref is not None:
                    batch = _to_device(batch, ref.device)
                fwd(model, batch)
                seen += 1
                if num_batches is not None and seen >= num_batches:
                    break
        if seen == 0:
            raise ValueError(
                "quantize: `calib_dataloader` yielded no batch; give it at least one batch or pass "
                "calib_dataloader=None for dynamic activation quantization."
            )
        for name, q in quantizers.items():
            assert q.observer is not None
            if q.observer.lo is None:
                raise ValueError(
                    f"quantize: module {name!r} was never called during calibration; exclude it (`exclude`) "
                    f"or make `forward_fn` run it."
                )
            lo, hi = q.observer.compute()
            aq.set_static_range(targets[name], lo, hi)
            q.frozen = True
    finally:
        for q in quantizers.values():
            q.observer = None
        model.train(was_training)


def zeroquant(
    model: nn.Module,
    weight_bits: Literal[8, 4] = 8,
    group_size: int = 64,
    int4_modules: Sequence[str] | None = None,
    act_bits: int | None = 8,
    modules: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    inplace: bool = False,
) -> nn.Module:
    """ZeroQuant (Yao et al. 2022) without training: group-wise symmetric weights + token-wise
    dynamic symmetric activations.

    * W8A8: ``zeroquant(model)`` (weights INT8 in groups of ``group_size``, activations INT8 per token);
    * W4/8 mixed: ``zeroquant(model, int4_modules=[r"intermediate\\.dense", r"output\\.dense"])``
      puts the named modules (regexes; e.g. a BERT's FFN) at 4 bits and the rest at 8;
      ``weight_bits=4`` puts every targeted module at 4 bits.

    Raises:
        TypeError, ValueError: as :func:`quantize` (messages start ``zeroquant:`` for its own arguments); an
            empty ``int4_modules`` list or a regex in it that matches no quantized module.
    """
    owner = "zeroquant"
    args.check_choice(weight_bits, "weight_bits", owner, (8, 4), problem="must be 8 or 4")
    if act_bits is not None:
        check_bits(act_bits, SUPPORTED_ACT_BITS, "act_bits", owner)
    args.check_int(group_size, "group_size", owner, minimum=1)
    int4 = [args.compile_regex(rx, f"int4_modules[{i}]", owner)
            for i, rx in enumerate(args.check_regexes(int4_modules, "int4_modules", owner) or [])]
    args.check_bool(inplace, "inplace", owner)
    args.check_regexes(modules, "modules", owner)
    args.check_regexes(exclude, "exclude", owner, allow_empty=True)
    qmodel = quantize(
        model, None, weight_bits=weight_bits, act_bits=act_bits, granularity="group", group_size=group_size,
        symmetric=True, act_symmetric=True, modules=modules, exclude=exclude, inplace=inplace,
    )
    for pattern in int4:
        hits = [(n, m) for n, m in qmodel.named_modules() if n and pattern.search(n) and weight_quantizer(m) is not None]
        if not hits:
            raise ValueError(f"zeroquant: `int4_modules` regex {pattern.pattern!r} matches no quantized module; fix the regex.")
        for _, m in hits:
            q = weight_quantizer(m)
            assert q is not None
            q.spec = replace(q.spec, bits=4)
            q.bits = 4
            q.ranges = None
            q.calibrate(pre_quant_weight(m))
    return qmodel
