"""``compression_training.weight_quantization`` -> one :class:`~lightning_compress.callbacks.WeightQuant`
per group.

=====================================  ======================================================================
DeepSpeed                              WeightQuant
=====================================  ======================================================================
``target_bits`` / ``start_bits``       ``bits`` / ``start_bits``
``quantization_period`` p              DeepSpeed: one bit less every p steps, so ``target_bits`` is reached
                                       after p * (start - target) steps.  WeightQuant steps through the
                                       supported widths (:func:`lightning_compress.core.quantize.bit_levels`:
                                       8, 4, 3, 2, 1) with one ``period`` per width, chosen so that ``bits``
                                       is reached at that same step
``schedule_offset`` (default 0)        ``start_step``
``quantization_type``                  ``symmetric`` (True for ``"symmetric"``)
``quantize_groups``                    1: ``granularity="tensor"``; > 1: ValueError (use WeightQuant's
                                       ``"channel"`` or ``"group"`` + ``group_size``)
``quantizer_kernel``,                  kernel / logging switches, accepted; a non-default value warns that
``quantize_weight_in_forward``,        it has no effect (weights are always fake-quantized in forward)
``quantize_verbose``
``rounding: stochastic``,              ValueError: not implemented
``fp16_mixed_quantize.enabled: true``
=====================================  ======================================================================
"""

from __future__ import annotations

from typing import Any

from lightning_compress.callbacks.weight_quant import WeightQuant
from lightning_compress.core.quantize import bit_levels
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
#: kernel switches and the value that matches what WeightQuant does
_KERNEL_SWITCHES = (("quantizer_kernel", False), ("quantize_weight_in_forward", True))


def period(start_bits: int, bits: int, ds_period: int) -> int:
    """WeightQuant's ``period`` (optimizer steps per width) that reaches ``bits`` at DeepSpeed's step
    ``ds_period * (start_bits - bits)``, stepping only through the widths of ``bit_levels``."""
    steps_down = len(bit_levels(start_bits, bits)) - 1
    return max(1, round(ds_period * (start_bits - bits) / max(1, steps_down)))


def _check_shared(shared: dict[str, Any], sp: str) -> None:
    for key, ours in _KERNEL_SWITCHES:
        if key in shared and shared[key] != ours:
            warn(
                f"{sp}.{key}",
                f"={shared[key]!r} has no effect here (weights are fake-quantized in forward with a "
                "straight-through estimator, kernel-free); ignored.",
            )
    if "quantize_verbose" in shared:
        as_bool(shared["quantize_verbose"], f"{sp}.quantize_verbose")
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
    if n_groups != 1:
        raise config_error(
            f"{sp}.quantize_groups",
            f"{n_groups} groups per weight matrix is not supported; use WeightQuant(granularity='channel') (one "
            "scale per output row) or granularity='group' with group_size=<values per group> instead, or set 1",
        )
    specs = []
    for group in sec.require_groups("weight quantization", "params.start_bits/target_bits"):
        warn_unused_related(group)
        for key in ("start_bits", "target_bits"):
            if key not in group.params:
                raise config_error(f"{group.path}.params", f"{key} is missing")
        bits = as_int(group.params["target_bits"], f"{group.path}.params.target_bits", minimum=1)
        start_bits = as_int(group.params["start_bits"], f"{group.path}.params.start_bits", minimum=1)
        if start_bits < bits:
            raise config_error(f"{group.path}.params.start_bits", f"{start_bits} is below target_bits={bits}; bits only step down")
        ds_period = as_int(group.params.get("quantization_period", 1), f"{group.path}.params.quantization_period", minimum=1)
        kwargs: dict[str, Any] = dict(bits=bits, symmetric=qtype == "symmetric", modules=group.modules, start_step=start)
        if start_bits != bits:
            kwargs.update(start_bits=start_bits, period=period(start_bits, bits, ds_period))
        kwargs["granularity"] = "tensor"
        specs.append(CallbackSpec(WeightQuant.__name__, kwargs, group.path))
    return specs
