"""``compression_training.activation_quantization`` -> one :class:`~lightning_compress.callbacks.ActQuant`
per group.

Each group: ``ActQuant(bits=params.bits, range=range_calibration, symmetric=quantization_type ==
"symmetric", modules=...)``.  ActQuant quantizes from the first step: a non-zero ``schedule_offset``
(DeepSpeed's default is 1000) is left out with a warning.
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
        )
        optional: dict[str, str] = {}
        if start:
            kwargs["start_step"] = start
            optional["start_step"] = (
                f"ActQuant quantizes activations from the first step (DeepSpeed's schedule_offset={start}"
                f"{' (its default)' if 'schedule_offset' not in shared else ''} has no equivalent); set "
                "schedule_offset to 0 to silence this"
            )
        specs.append(CallbackSpec(ActQuant.__name__, kwargs, group.path, optional))
    return specs
