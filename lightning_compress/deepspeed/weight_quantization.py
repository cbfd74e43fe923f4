"""``compression_training.weight_quantization`` -> one :class:`~lightning_compress.callbacks.WeightQuant`
per group, with DeepSpeed's quantizers (``scheme="deepspeed"``).

=====================================  ======================================================================
DeepSpeed                              WeightQuant
=====================================  ======================================================================
(always)                               ``scheme="deepspeed"``: DeepSpeed's grids (``SymQuantizer`` /
                                       ``AsymQuantizer`` and MoQ's ``quantize_highbit``: ``2**b`` levels,
                                       symmetric scale ``2 max|w| / 2**b``, asymmetric ``(max - min) /
                                       2**b``); 2 bits ternary, 1 bit binary; any width 1..16 (12 too);
                                       Embedding weights per row (token-wise, as ``Embedding_Compress``)
``target_bits``                        ``bits``
``quantize_weight_in_forward: true``   DeepSpeed's forward quantizer uses ``target_bits`` from the offset
                                       on: ``bits=target_bits``, no schedule (``start_bits`` /
                                       ``quantization_period`` unused; a differing ``start_bits`` warns)
``quantize_weight_in_forward: false``  MoQ (DeepSpeed's default): ``start_bits=start_bits``,
(the default)                          ``period=quantization_period``: one bit less once ``offset + p``,
                                       ``offset + 2p``, ``offset + 4p`` ... optimizer steps are done (8 -> 4
                                       at p=50: 7 bits at 50, 6 at 100, 5 at 200, 4 at 400); ``p=0``: one
                                       bit per step.  DeepSpeed quantized the fp16 weights after each
                                       optimizer step while the fp32 master weights stayed full precision;
                                       fake quantization in forward with full-precision weights is that
``quantization_period``                accepted from 0 on; with ``start_bits == target_bits`` unused
``schedule_offset`` (default 0)        ``start_step``
``quantization_type``                  ``symmetric`` (True for ``"symmetric"``); asymmetric with 1 or 2
                                       bits is refused, as DeepSpeed asserted
``quantize_groups`` G                  1: ``granularity="tensor"``; > 1: ``granularity="row_block",
                                       groups=G`` (DeepSpeed's ``reshape(G, -1)`` of the ``[out, in]``
                                       weight: blocks of ``out / G`` rows)
``quantizer_kernel``,                  kernel / logging switches, accepted; ``quantizer_kernel: true`` warns
``quantize_verbose``                   that it has no effect
``rounding: stochastic``,              ValueError: not implemented
``fp16_mixed_quantize.enabled: true``
=====================================  ======================================================================
"""

from __future__ import annotations

from typing import Any

from lightning_compress.callbacks.weight_quant import WeightQuant
from lightning_compress.deepspeed.config import (
    as_bool,
    as_int,
    check_keys,
    config_error,
    method_section,
    one_of,
    warn,
    warn_unused_related,
)
from lightning_compress.deepspeed.registry import register_translator
from lightning_compress.deepspeed.spec import CallbackSpec

SHARED_KEYS = {
    "enabled", "quantizer_kernel", "schedule_offset", "quantize_groups", "quantize_verbose",
    "quantization_type", "rounding", "quantize_weight_in_forward", "fp16_mixed_quantize",
}
PARAM_KEYS = {"start_bits", "target_bits", "quantization_period"}
#: DeepSpeed's code default for ``schedule_offset`` (deepspeed/compression/constants.py)
DEFAULT_OFFSET = 0
#: DeepSpeed's code defaults (constants.py)
DEFAULT_PERIOD = 1
DEFAULT_IN_FORWARD = False


def _check_shared(shared: dict[str, Any], sp: str) -> None:
    if shared.get("quantizer_kernel", False) is not False:
        warn(
            f"{sp}.quantizer_kernel",
            f"={shared['quantizer_kernel']!r} has no effect here (weights are fake-quantized in forward with a "
            "straight-through estimator, kernel-free); ignored.",
        )
    for key in ("quantize_verbose", "quantize_weight_in_forward"):
        if key in shared:
            as_bool(shared[key], f"{sp}.{key}")
    rounding = shared.get("rounding", "nearest")
    if rounding != "nearest":
        raise config_error(f"{sp}.rounding", f"{rounding!r} is not supported (only 'nearest'); remove the key or set 'nearest'")
    mixed = shared.get("fp16_mixed_quantize")
    if mixed is not None:
        check_keys(mixed, {"enabled", "quantize_change_ratio"}, f"{sp}.fp16_mixed_quantize")
        if mixed.get("enabled", False):
            raise config_error(
                f"{sp}.fp16_mixed_quantize.enabled",
                "mixing fp16 and quantized weights is not supported; set it to false (bits can instead step down "
                "from start_bits to target_bits)",
            )


@register_translator("weight_quantization", WeightQuant)
def translate(section: Any, path: str) -> list[CallbackSpec]:
    sec = method_section(section, path, SHARED_KEYS, PARAM_KEYS)
    if sec is None:
        return []
    shared, sp = sec.shared, sec.shared_path
    _check_shared(shared, sp)
    qtype = one_of(shared.get("quantization_type", "symmetric"), ("symmetric", "asymmetric"), f"{sp}.quantization_type")
    start = sec.offset(DEFAULT_OFFSET)
    n_groups = as_int(shared.get("quantize_groups", 1), f"{sp}.quantize_groups", minimum=1)
    in_forward = shared.get("quantize_weight_in_forward", DEFAULT_IN_FORWARD)
    grouping: dict[str, Any] = {"granularity": "tensor"} if n_groups == 1 else {"granularity": "row_block", "groups": n_groups}
    specs = []
    for group in sec.require_groups("weight quantization", "params.start_bits/target_bits"):
        warn_unused_related(group)
        for key in ("start_bits", "target_bits"):
            if key not in group.params:
                raise config_error(f"{group.path}.params", f"{key} is missing")
        pp = f"{group.path}.params"
        bits = as_int(group.params["target_bits"], f"{pp}.target_bits", minimum=1)
        start_bits = as_int(group.params["start_bits"], f"{pp}.start_bits", minimum=1)
        for key, value in (("target_bits", bits), ("start_bits", start_bits)):
            if value > 16:
                raise config_error(f"{pp}.{key}", f"{value} bits is more than the 16 a fake quantizer here holds")
        if start_bits < bits:
            raise config_error(f"{pp}.start_bits", f"{start_bits} is below target_bits={bits}; bits only step down")
        if qtype == "asymmetric" and bits <= 2:
            raise config_error(
                f"{sp}.quantization_type",
                f"asymmetric with target_bits={bits}: DeepSpeed's ternary / binary quantizers are symmetric only "
                "(it asserted so); use 'symmetric'",
            )
        ds_period = as_int(group.params.get("quantization_period", DEFAULT_PERIOD), f"{pp}.quantization_period", minimum=0)
        kwargs: dict[str, Any] = dict(
            bits=bits, symmetric=qtype == "symmetric", modules=group.modules, start_step=start, scheme="deepspeed", **grouping
        )
        if start_bits != bits:
            if in_forward:
                warn(
                    f"{pp}.start_bits",
                    f"={start_bits} is not used: with quantize_weight_in_forward=true DeepSpeed quantizes to "
                    f"target_bits={bits} from schedule_offset on (MoQ's bit schedule only runs with it false).",
                )
            else:
                kwargs.update(start_bits=start_bits, period=ds_period)
        specs.append(CallbackSpec(WeightQuant.__name__, kwargs, group.path))
    return specs
