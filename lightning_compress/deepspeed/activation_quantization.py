"""``compression_training.activation_quantization`` -> one :class:`~lightning_compress.callbacks.ActQuant`
per group.

Each group: ``ActQuant(bits=params.bits, range=range_calibration, symmetric=quantization_type ==
"symmetric", modules=..., start_step=schedule_offset)`` (DeepSpeed's default offset is 1000): inputs
pass unquantized until ``schedule_offset`` optimizer steps are done.  ``dynamic`` is per token (the
last dimension), as DeepSpeed's ``num_groups = numel / size(-1)``; ``static`` an EMA (momentum 0.95)
of the batch min / max, as DeepSpeed's ``QuantAct``.  ``bits`` must be 4 or 8 (DeepSpeed asserted so).
``lightning_compress.clean`` keeps the quantize-dequantize of the inputs in the slim model.
"""

from __future__ import annotations

from typing import Any

from lightning_compress.callbacks.act_quant import ActQuant
from lightning_compress.deepspeed.config import as_int, config_error, method_section, one_of, warn_unused_related
from lightning_compress.deepspeed.registry import register_translator
from lightning_compress.deepspeed.spec import CallbackSpec

SHARED_KEYS = {"enabled", "quantization_type", "range_calibration", "schedule_offset"}
PARAM_KEYS = {"bits"}
#: DeepSpeed's code default for ``schedule_offset`` (deepspeed/compression/constants.py)
DEFAULT_OFFSET = 1000


@register_translator("activation_quantization", ActQuant)
def translate(section: Any, path: str) -> list[CallbackSpec]:
    sec = method_section(section, path, SHARED_KEYS, PARAM_KEYS)
    if sec is None:
        return []
    shared, sp = sec.shared, sec.shared_path
    qtype = one_of(shared.get("quantization_type", "symmetric"), ("symmetric", "asymmetric"), f"{sp}.quantization_type")
    rng = one_of(shared.get("range_calibration", "dynamic"), ("dynamic", "static"), f"{sp}.range_calibration")
    start = sec.offset(DEFAULT_OFFSET)
    specs = []
    for group in sec.require_groups("activation quantization", "params.bits"):
        warn_unused_related(group)
        if "bits" not in group.params:
            raise config_error(f"{group.path}.params", "bits is missing")
        kwargs: dict[str, Any] = dict(
            bits=as_int(group.params["bits"], f"{group.path}.params.bits", minimum=1),
            range=rng,
            symmetric=qtype == "symmetric",
            modules=group.modules,
            start_step=start,
        )
        if kwargs["bits"] not in (4, 8):
            raise config_error(f"{group.path}.params.bits", f"{kwargs['bits']}: DeepSpeed quantizes activations to 4 or 8 bits only")
        specs.append(CallbackSpec(ActQuant.__name__, kwargs, group.path))
    return specs
