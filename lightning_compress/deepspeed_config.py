"""DeepSpeed's ``compression_training`` config -> lightning-compress callbacks.

An existing DeepSpeed Compression user keeps the JSON and gets the equivalent callbacks::

    callbacks = from_deepspeed_config("ds_config.json")     # or the dict, or just the section
    Trainer(callbacks=callbacks, ...)

``DeepSpeedCompressionStrategy(config=...)`` does this itself when the config has the section.

Translation (DeepSpeed key -> callback argument; DeepSpeed's own defaults apply to omitted keys, as in
DeepSpeed's code: ``schedule_offset`` 1000 for pruning and activation quantization, 0 for weight
quantization):

=====================================  ======================================================================
DeepSpeed                              lightning-compress
=====================================  ======================================================================
``enabled: false`` (or omitted)        method skipped (omitted ``enabled`` warns: DeepSpeed also skipped it)
``different_groups.<g>.modules``       ``modules`` regexes (``re.search``, as DeepSpeed); ``["*"]`` = default
``dense_ratio`` r                      ``sparsity = 1 - r``
``schedule_offset``                    ``start_step`` (optimizer steps)
``schedule_offset_end``                ``end_step`` (l1/topk/row/head/channel without it: ``end_step =
                                       start_step``, DeepSpeed's one-shot pruning at the offset)
``schedule_offset_stride``             ``frequency``
``block_pattern`` ``"NxM"``            ``pattern="NxM"`` (same meaning: N output rows x M input columns)
``block_pattern`` ``"N:M"``            ``pattern="(M-N):M"``: DeepSpeed passed it to Intel Neural Compressor,
                                       where N weights of M are *pruned*; here N of M are *kept*
``excluded_modules``                   ``exclude``
sparse ``method`` l1|topk              ``SparsePruning(method, scope="local")`` (each layer pruned to its
                                       group's ratio, as DeepSpeed); unstructured unless ``block_pattern``
sparse ``method`` snip_momentum        ``SparsePruning(method="snip_momentum", scope="global")`` (INC's default)
row / head / channel pruning           ``RowPruning`` / ``HeadPruning`` / ``ChannelPruning``, one per group
                                       (each layer pruned to the group's ratio, one shot at the offset)
row ``related_modules``                one list of consumer regexes per ``modules`` entry ->
                                       ``related_modules={producer: [consumers]}``
head ``modules``                       ``...attention.output.dense`` -> ``...attention.self`` (HeadPruning
                                       takes the attention and finds q/k/v/output itself, so the usual
                                       ``related_modules`` q/k/v are implied); ``num_heads`` is read from
                                       the model (a warning says so)
channel ``related_modules``            found by tracing (a warning says they are not needed)
weight quant ``start_bits`` /          ``WeightQuant(start_bits, bits)``; ``quantization_period`` p (DeepSpeed:
``target_bits`` / period               one bit less every p steps, so ``target_bits`` is reached after
                                       p * (start - target) steps) -> ``period`` per supported width (8, 4,
                                       3, 2, 1) such that ``bits`` is reached at that same step
``quantize_groups``                    1: ``granularity="tensor"``; > 1: ValueError (use WeightQuant's
                                       ``"channel"`` or ``"group"`` + ``group_size``)
activation ``schedule_offset``         ActQuant starts at step 0: a non-zero offset warns
``quantization_type``                  ``symmetric`` True/False
activation ``bits`` /                  ``ActQuant(bits, range, symmetric)``
``range_calibration``
layer reduction                        ``LayerReductionKD(keep_layers=teacher_layer or keep_number_layer,
                                       layers=module_name_prefix)``; ``other_module_name``: the student is
                                       the teacher's own network minus layers, so those modules keep the
                                       teacher's weights anyway; numbered entries (``bert.encoder.layer.2``)
                                       are read as kept layers, as DeepSpeed allowed
=====================================  ======================================================================

Keys that only steered DeepSpeed's kernels (``quantizer_kernel``, ``quantize_verbose``,
``quantize_weight_in_forward``) are accepted; a non-default value warns that it has no effect here
(quantization always happens in forward).  Settings that would change the result and that we do not
implement (``rounding: stochastic``, ``fp16_mixed_quantize.enabled: true``) and every unknown key or
method raise ``ValueError`` naming the key and its path in the config.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["from_deepspeed_config", "plan_from_deepspeed_config", "CallbackSpec", "METHODS"]

SECTION = "compression_training"
METHODS = (
    "layer_reduction",
    "sparse_pruning",
    "row_pruning",
    "head_pruning",
    "channel_pruning",
    "weight_quantization",
    "activation_quantization",
)
#: widths WeightQuant steps through (lightning_compress.core.quantize.SUPPORTED_WEIGHT_BITS)
_WEIGHT_LEVELS = (8, 4, 3, 2, 1)
#: DeepSpeed's code defaults for ``schedule_offset`` (deepspeed/compression/constants.py)
_OFFSET_DEFAULT = {
    "sparse_pruning": 1000,
    "row_pruning": 1000,
    "head_pruning": 1000,
    "channel_pruning": 1000,
    "weight_quantization": 0,
    "activation_quantization": 1000,
}
_METHOD_DEFAULT = {"sparse_pruning": "l1", "row_pruning": "l1", "head_pruning": "topk", "channel_pruning": "l1"}
_CALLBACK = {
    "sparse_pruning": "SparsePruning",
    "row_pruning": "RowPruning",
    "head_pruning": "HeadPruning",
    "channel_pruning": "ChannelPruning",
    "weight_quantization": "WeightQuant",
    "activation_quantization": "ActQuant",
    "layer_reduction": "LayerReductionKD",
}

_SHARED_KEYS = {
    "sparse_pruning": {
        "enabled", "method", "schedule_offset", "schedule_offset_end", "schedule_offset_stride",
        "block_pattern", "dense_ratio", "excluded_modules",
    },
    "row_pruning": {"enabled", "method", "schedule_offset"},
    "head_pruning": {"enabled", "method", "schedule_offset", "num_heads"},
    "channel_pruning": {"enabled", "method", "schedule_offset"},
    "weight_quantization": {
        "enabled", "quantizer_kernel", "schedule_offset", "quantize_groups", "quantize_verbose",
        "quantization_type", "rounding", "quantize_weight_in_forward", "fp16_mixed_quantize",
    },
    "activation_quantization": {"enabled", "quantization_type", "range_calibration", "schedule_offset"},
}
_GROUP_PARAM_KEYS = {
    "sparse_pruning": {"dense_ratio"},
    "row_pruning": {"dense_ratio"},
    "head_pruning": {"dense_ratio"},
    "channel_pruning": {"dense_ratio"},
    "weight_quantization": {"start_bits", "target_bits", "quantization_period"},
    "activation_quantization": {"bits"},
}
_GROUP_KEYS = {"params", "modules", "related_modules"}
_LAYER_REDUCTION_KEYS = {"enabled", "keep_number_layer", "module_name_prefix", "teacher_layer", "other_module_name"}
_PRUNING_METHODS = {
    "sparse_pruning": ("l1", "topk", "snip_momentum"),
    "row_pruning": ("l1", "topk"),
    "head_pruning": ("l1", "topk"),
    "channel_pruning": ("l1", "topk"),
}


@dataclass
class CallbackSpec:
    """One callback to build: class name in :mod:`lightning_compress.callbacks`, its kwargs, and the
    config path it came from (for error messages)."""

    callback: str
    kwargs: dict[str, Any]
    path: str
    #: kwargs that may be dropped (with a warning) when the callback's signature lacks them
    optional: dict[str, str] = field(default_factory=dict)


def _err(path: str, message: str) -> ValueError:
    return ValueError(f"DeepSpeed config `{path}`: {message}")


def _check_keys(d: Any, allowed: set[str], path: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise _err(path, f"expected a JSON object, got {type(d).__name__} {d!r}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise _err(
            path,
            f"unknown key(s) {unknown} (at {', '.join(f'{path}.{k}' for k in unknown)}); "
            f"supported here: {sorted(allowed)}. Remove or rename them.",
        )
    return d


def _int(value: Any, path: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _err(path, f"{value!r} must be an integer >= {minimum}")
    return value


def _sparsity(dense_ratio: Any, path: str) -> float:
    if isinstance(dense_ratio, bool) or not isinstance(dense_ratio, (int, float)) or not 0.0 < dense_ratio <= 1.0:
        raise _err(path, f"dense_ratio={dense_ratio!r} must be a number in (0, 1] (the fraction of weights kept)")
    return round(1.0 - float(dense_ratio), 12)


def _pattern(block_pattern: Any, path: str) -> str:
    if not isinstance(block_pattern, str):
        raise _err(path, f"block_pattern={block_pattern!r} must be a string like '4x1' or '2:4'")
    p = block_pattern.strip().lower()
    m = re.fullmatch(r"(\d+):(\d+)", p)
    if m:
        pruned, size = int(m.group(1)), int(m.group(2))
        if not 0 < pruned < size:
            raise _err(path, f"block_pattern={block_pattern!r}: N:M needs 0 < N < M (N pruned of every M, DeepSpeed/INC)")
        return f"{size - pruned}:{size}"  # ours: N kept of every M
    if re.fullmatch(r"\d+x\d+", p) or p in ("unstructured",):
        return p
    raise _err(path, f"block_pattern={block_pattern!r} is not 'NxM' (e.g. '4x1') or 'N:M' (e.g. '2:4')")


def _modules(value: Any, path: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _err(path, f"{value!r} must be a list of module-name regexes")
    value = [v for v in value if v != "*"]  # DeepSpeed's "*" = every Linear/Conv2d = our default
    for v in value:
        try:
            re.compile(v)
        except re.error as err:
            raise _err(path, f"{v!r} is not a valid regular expression ({err})") from None
    return value or None


def _related(value: Any, path: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _err(path, f"{value!r} must be a list of lists of module-name regexes")
    flat: list[str] = []
    for i, item in enumerate(value):
        items = [item] if isinstance(item, str) else item
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise _err(f"{path}[{i}]", f"{item!r} must be a list of module-name regexes")
        flat.extend(items)
    return _modules(flat, path)


def _row_related(mods: list[str] | None, related: Any, path: str) -> dict[str, list[str]]:
    """DeepSpeed's ``related_modules`` (one list of consumer regexes per ``modules`` entry) ->
    RowPruning's ``{producer regex: [consumer regexes]}``."""
    lists = [[r] if isinstance(r, str) else list(r) for r in related]
    if not mods:
        raise _err(path, "related_modules needs the group's `modules` (the producers they belong to)")
    if len(lists) == len(mods):
        return {m: lst for m, lst in zip(mods, lists)}
    if len(lists) == 1:
        return {m: lists[0] for m in mods}
    raise _err(path, f"{len(lists)} lists for {len(mods)} modules; give one list of consumers per entry of `modules`")


def _attention_regex(regex: str) -> str:
    """``attention.output.dense`` (DeepSpeed: the output projection) -> ``attention.self`` (the module
    HeadPruning takes); other regexes are kept (they already name attention modules)."""
    for tail in ("output\\.dense", "output.dense"):
        if regex.endswith(tail):
            return regex[: -len(tail)] + "self"
    return regex


def _enabled(d: dict[str, Any], path: str) -> bool:
    if "enabled" not in d:
        warnings.warn(
            f"DeepSpeed config `{path}` has no `enabled` key: skipped, as DeepSpeed (default false) did. "
            f"Add \"enabled\": true to use it.",
            stacklevel=4,
        )
        return False
    if not isinstance(d["enabled"], bool):
        raise _err(f"{path}.enabled", f"{d['enabled']!r} must be true or false")
    return d["enabled"]


def _groups(method: str, section: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any], list[str] | None, Any]]:
    groups = section.get("different_groups", {})
    gpath = f"{path}.different_groups"
    if not isinstance(groups, dict):
        raise _err(gpath, f"expected a JSON object of named groups, got {groups!r}")
    out = []
    for gname, group in groups.items():
        p = f"{gpath}.{gname}"
        _check_keys(group, _GROUP_KEYS, p)
        params = _check_keys(group.get("params", {}), _GROUP_PARAM_KEYS[method], f"{p}.params")
        out.append((gname, params, _modules(group.get("modules"), f"{p}.modules"), group.get("related_modules")))
    return out


def _warn_unused_related(related: Any, path: str) -> None:
    if related:
        warnings.warn(
            f"DeepSpeed config `{path}` = {related!r} has no effect for this method (only row/head/channel "
            "pruning use related modules); ignored.",
            stacklevel=5,
        )


def _pruning_specs(method: str, section: dict[str, Any], path: str) -> list[CallbackSpec]:
    _check_keys(section, {"shared_parameters", "different_groups"}, path)
    shared = _check_keys(section.get("shared_parameters", {}), _SHARED_KEYS[method], f"{path}.shared_parameters")
    sp = f"{path}.shared_parameters"
    if not _enabled(shared, sp):
        return []
    algo = shared.get("method", _METHOD_DEFAULT[method])
    if algo not in _PRUNING_METHODS[method]:
        raise _err(f"{sp}.method", f"{algo!r} is not a {method} method; choose one of {list(_PRUNING_METHODS[method])}")
    start = _int(shared.get("schedule_offset", _OFFSET_DEFAULT[method]), f"{sp}.schedule_offset")
    groups = _groups(method, section, path)
    cls = _CALLBACK[method]

    if method == "sparse_pruning":
        if algo == "snip_momentum" and "schedule_offset_end" not in shared:
            raise _err(sp, "snip_momentum needs schedule_offset_end (the step of the last prune event; mandatory in DeepSpeed too)")
        end = _int(shared.get("schedule_offset_end", start), f"{sp}.schedule_offset_end")
        if end < start:
            raise _err(f"{sp}.schedule_offset_end", f"{end} is before schedule_offset={start}")
        frequency = _int(shared.get("schedule_offset_stride", 1), f"{sp}.schedule_offset_stride", minimum=1)
        default_pattern = "4x1" if algo == "snip_momentum" else "unstructured"
        pattern = _pattern(shared.get("block_pattern", default_pattern), f"{sp}.block_pattern")
        exclude = _modules(shared.get("excluded_modules"), f"{sp}.excluded_modules")
        kwargs: dict[str, Any] = dict(
            method=algo,
            pattern=pattern,
            start_step=start,
            end_step=end,
            frequency=frequency,
            scope="global" if algo == "snip_momentum" else "local",
            exclude=exclude,
        )
        if not groups:
            if algo != "snip_momentum" and "dense_ratio" not in shared:
                raise _err(
                    f"{path}.different_groups",
                    f"method {algo!r} needs at least one group with params.dense_ratio (or a shared dense_ratio)",
                )
            kwargs["sparsity"] = _sparsity(shared.get("dense_ratio", 0.1), f"{sp}.dense_ratio")
            return [CallbackSpec(cls, kwargs, path)]
        spec_groups: dict[str, dict[str, Any]] = {}
        for gname, params, mods, related in groups:
            gp = f"{path}.different_groups.{gname}"
            _warn_unused_related(related, f"{gp}.related_modules")
            if "dense_ratio" in params:
                gs = _sparsity(params["dense_ratio"], f"{gp}.params.dense_ratio")
            elif "dense_ratio" in shared:
                gs = _sparsity(shared["dense_ratio"], f"{sp}.dense_ratio")
            else:
                raise _err(f"{gp}.params", "dense_ratio is missing (the fraction of weights kept in this group)")
            g: dict[str, Any] = {"sparsity": gs}
            if mods is not None:
                g["modules"] = mods
            spec_groups[gname] = g
        if len(spec_groups) == 1:
            (g,) = spec_groups.values()
            kwargs.update(sparsity=g["sparsity"], modules=g.get("modules"))
        else:
            kwargs.update(sparsity=None, groups=spec_groups)
        return [CallbackSpec(cls, kwargs, path)]

    # row / head / channel pruning: one callback per group (each has its own modules and related modules)
    if not groups:
        raise _err(f"{path}.different_groups", f"{method} is enabled but has no group (each group needs params.dense_ratio)")
    specs = []
    for gname, params, mods, related in groups:
        gp = f"{path}.different_groups.{gname}"
        if "dense_ratio" not in params:
            raise _err(f"{gp}.params", "dense_ratio is missing (the fraction of rows/heads/channels kept)")
        kwargs = dict(
            sparsity=_sparsity(params["dense_ratio"], f"{gp}.params.dense_ratio"),
            method=algo,
            start_step=start,
            end_step=start,
            modules=mods,
        )
        optional: dict[str, str] = {}
        rel = _related(related, f"{gp}.related_modules")
        if method == "row_pruning":
            if rel is not None:
                kwargs["related_modules"] = _row_related(mods, related, f"{gp}.related_modules")
        elif method == "head_pruning":
            # DeepSpeed named the output projection (`attention.output.dense`) and its q/k/v as related
            # modules; HeadPruning takes the self-attention module and finds q/k/v/output itself.
            if mods is not None:
                kwargs["modules"] = [_attention_regex(m) for m in mods]
            if rel is not None and sorted(r.rsplit(".", 1)[-1] for r in rel) != ["key", "query", "value"]:
                kwargs["related_modules"] = rel
                optional["related_modules"] = "HeadPruning finds query/key/value and the output projection itself"
            if "num_heads" in shared:
                kwargs["num_heads"] = _int(shared["num_heads"], f"{sp}.num_heads", minimum=1)
                optional["num_heads"] = "HeadPruning reads the number of heads from the model"
        elif rel is not None:  # channel pruning: BatchNorms and consumer convs are found by tracing
            kwargs["related_modules"] = rel
            optional["related_modules"] = "ChannelPruning finds the coupled BatchNorms and convs by tracing the model"
        specs.append(CallbackSpec(cls, kwargs, gp, optional))
    return specs


def _weight_quant_specs(section: dict[str, Any], path: str) -> list[CallbackSpec]:
    method = "weight_quantization"
    _check_keys(section, {"shared_parameters", "different_groups"}, path)
    sp = f"{path}.shared_parameters"
    shared = _check_keys(section.get("shared_parameters", {}), _SHARED_KEYS[method], sp)
    if not _enabled(shared, sp):
        return []
    # kernel / logging switches: no effect on the result; say so when they ask for something we do not do
    for key, ours in (("quantizer_kernel", False), ("quantize_weight_in_forward", True)):
        if key in shared and shared[key] != ours:
            warnings.warn(
                f"DeepSpeed config `{sp}.{key}`={shared[key]!r} has no effect here (weights are fake-quantized in "
                "forward with a straight-through estimator, kernel-free); ignored.",
                stacklevel=4,
            )
    if "quantize_verbose" in shared and not isinstance(shared["quantize_verbose"], bool):
        raise _err(f"{sp}.quantize_verbose", f"{shared['quantize_verbose']!r} must be true or false")
    rounding = shared.get("rounding", "nearest")
    if rounding != "nearest":
        raise _err(f"{sp}.rounding", f"{rounding!r} is not supported (only 'nearest'); remove the key or set 'nearest'")
    mixed = shared.get("fp16_mixed_quantize")
    if mixed is not None:
        _check_keys(mixed, {"enabled", "quantize_change_ratio"}, f"{sp}.fp16_mixed_quantize")
        if mixed.get("enabled", False):
            raise _err(
                f"{sp}.fp16_mixed_quantize.enabled",
                "mixing fp16 and quantized weights is not supported; set it to false (bits can instead step down "
                "from start_bits to target_bits)",
            )
    qtype = shared.get("quantization_type", "symmetric")
    if qtype not in ("symmetric", "asymmetric"):
        raise _err(f"{sp}.quantization_type", f"{qtype!r} must be 'symmetric' or 'asymmetric'")
    start = _int(shared.get("schedule_offset", _OFFSET_DEFAULT[method]), f"{sp}.schedule_offset")
    n_groups = _int(shared.get("quantize_groups", 1), f"{sp}.quantize_groups", minimum=1)
    if n_groups != 1:
        raise _err(
            f"{sp}.quantize_groups",
            f"{n_groups} groups per weight matrix is not supported; use WeightQuant(granularity='channel') (one "
            "scale per output row) or granularity='group' with group_size=<values per group> instead, or set 1",
        )
    groups = _groups(method, section, path)
    if not groups:
        raise _err(f"{path}.different_groups", "weight quantization is enabled but has no group (params.start_bits/target_bits)")
    specs = []
    for gname, params, mods, related in groups:
        gp = f"{path}.different_groups.{gname}"
        _warn_unused_related(related, f"{gp}.related_modules")
        for key in ("start_bits", "target_bits"):
            if key not in params:
                raise _err(f"{gp}.params", f"{key} is missing")
        bits = _int(params["target_bits"], f"{gp}.params.target_bits", minimum=1)
        start_bits = _int(params["start_bits"], f"{gp}.params.start_bits", minimum=1)
        if start_bits < bits:
            raise _err(f"{gp}.params.start_bits", f"{start_bits} is below target_bits={bits}; bits only step down")
        period = _int(params.get("quantization_period", 1), f"{gp}.params.quantization_period", minimum=1)
        kwargs: dict[str, Any] = dict(bits=bits, symmetric=qtype == "symmetric", modules=mods, start_step=start)
        if start_bits != bits:
            # DeepSpeed: one bit less every `period` steps, so `bits` is reached after
            # period * (start_bits - bits) steps.  WeightQuant steps through the widths it supports
            # (8, 4, 3, 2, 1) with one period per width: reach `bits` at the same step.
            steps_down = len([b for b in _WEIGHT_LEVELS if bits <= b <= start_bits]) - 1
            kwargs.update(start_bits=start_bits, period=max(1, round(period * (start_bits - bits) / max(1, steps_down))))
        kwargs["granularity"] = "tensor"
        specs.append(CallbackSpec(_CALLBACK[method], kwargs, gp))
    return specs


def _act_quant_specs(section: dict[str, Any], path: str) -> list[CallbackSpec]:
    method = "activation_quantization"
    _check_keys(section, {"shared_parameters", "different_groups"}, path)
    sp = f"{path}.shared_parameters"
    shared = _check_keys(section.get("shared_parameters", {}), _SHARED_KEYS[method], sp)
    if not _enabled(shared, sp):
        return []
    qtype = shared.get("quantization_type", "symmetric")
    if qtype not in ("symmetric", "asymmetric"):
        raise _err(f"{sp}.quantization_type", f"{qtype!r} must be 'symmetric' or 'asymmetric'")
    rng = shared.get("range_calibration", "dynamic")
    if rng not in ("dynamic", "static"):
        raise _err(f"{sp}.range_calibration", f"{rng!r} must be 'dynamic' or 'static'")
    start = _int(shared.get("schedule_offset", _OFFSET_DEFAULT[method]), f"{sp}.schedule_offset")
    groups = _groups(method, section, path)
    if not groups:
        raise _err(f"{path}.different_groups", "activation quantization is enabled but has no group (params.bits)")
    specs = []
    for gname, params, mods, related in groups:
        gp = f"{path}.different_groups.{gname}"
        _warn_unused_related(related, f"{gp}.related_modules")
        if "bits" not in params:
            raise _err(f"{gp}.params", "bits is missing")
        kwargs: dict[str, Any] = dict(
            bits=_int(params["bits"], f"{gp}.params.bits", minimum=1),
            range=rng,
            symmetric=qtype == "symmetric",
            modules=mods,
        )
        optional: dict[str, str] = {}
        if start:
            kwargs["start_step"] = start
            optional["start_step"] = (
                f"ActQuant quantizes activations from the first step (DeepSpeed's schedule_offset={start}"
                f"{' (its default)' if 'schedule_offset' not in shared else ''} has no equivalent); set "
                "schedule_offset to 0 to silence this"
            )
        specs.append(CallbackSpec(_CALLBACK[method], kwargs, gp, optional))
    return specs


def _layer_reduction_specs(section: dict[str, Any], path: str) -> list[CallbackSpec]:
    _check_keys(section, _LAYER_REDUCTION_KEYS, path)
    if not _enabled(section, path):
        return []
    keep_n = section.get("keep_number_layer")
    teacher_layer = section.get("teacher_layer")
    prefix = section.get("module_name_prefix")
    other = section.get("other_module_name")
    if keep_n is not None:
        keep_n = _int(keep_n, f"{path}.keep_number_layer", minimum=1)
    if prefix is not None and not isinstance(prefix, str):
        raise _err(f"{path}.module_name_prefix", f"{prefix!r} must be a module name like 'bert.encoder.layer'")
    if other is not None and (not isinstance(other, list) or not all(isinstance(v, str) for v in other)):
        raise _err(f"{path}.other_module_name", f"{other!r} must be a list of module names")
    # other_module_name: modules whose weights the student takes from the teacher.  The student built
    # here *is* the teacher's network with layers removed, so every such weight is the teacher's already;
    # numbered entries ("bert.encoder.layer.2") are DeepSpeed's alternative spelling of kept layers.
    numbered: list[tuple[str, int]] = []
    for name in other or []:
        m = re.fullmatch(r"(.+)\.(\d+)", name)
        if m and (prefix is None or m.group(1) == prefix):
            numbered.append((m.group(1), int(m.group(2))))
    if teacher_layer is not None:
        if not isinstance(teacher_layer, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in teacher_layer):
            raise _err(f"{path}.teacher_layer", f"{teacher_layer!r} must be a list of layer indices")
        keep: Any = list(teacher_layer)
    elif numbered:
        stacks = sorted({stack for stack, _ in numbered})
        if len(stacks) > 1:
            raise _err(f"{path}.other_module_name", f"numbered layers of several stacks {stacks}; name one layer stack")
        prefix = stacks[0]
        keep = [i for _, i in numbered]
    elif keep_n is not None:
        keep = keep_n
    else:
        raise _err(path, "needs teacher_layer (the teacher layers the student keeps) or keep_number_layer")
    if keep_n is not None and isinstance(keep, list) and keep_n != len(keep):
        source = "teacher_layer" if teacher_layer is not None else "the numbered other_module_name entries"
        raise _err(f"{path}.keep_number_layer", f"{keep_n} differs from len({source})={len(keep)}; they must agree")
    kwargs: dict[str, Any] = {"keep_layers": keep}
    if prefix is not None:
        kwargs["layers"] = prefix
    return [CallbackSpec(_CALLBACK["layer_reduction"], kwargs, path)]


def _load(path_or_dict: str | os.PathLike | dict[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(path_or_dict, (str, os.PathLike)):
        p = Path(path_or_dict)
        if not p.is_file():
            raise ValueError(f"DeepSpeed config file {str(p)!r} does not exist")
        try:
            cfg = json.loads(p.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"DeepSpeed config file {str(p)!r} is not valid JSON: {err}") from None
    elif isinstance(path_or_dict, dict):
        cfg = path_or_dict
    else:
        raise ValueError(f"from_deepspeed_config expects a path or a dict, got {type(path_or_dict).__name__}")
    if not isinstance(cfg, dict):
        raise ValueError(f"DeepSpeed config must be a JSON object, got {type(cfg).__name__}")
    if SECTION in cfg:
        section = cfg[SECTION]
        if section is None:
            return {}, SECTION
        if not isinstance(section, dict):
            raise _err(SECTION, f"expected a JSON object, got {section!r}")
        return section, SECTION
    stray = [k for k in cfg if k in METHODS]
    if stray and len(stray) == len(cfg):
        return cfg, SECTION  # the section itself was passed
    if stray:
        raise _err(stray[0], f"{stray} must sit inside `{SECTION}`, not at the top level of the DeepSpeed config")
    return {}, SECTION


def plan_from_deepspeed_config(path_or_dict: str | os.PathLike | dict[str, Any]) -> list[CallbackSpec]:
    """The callbacks (class names and keyword arguments) that the config describes, without building them.

    Accepts a JSON file path, a full DeepSpeed config dict, or the ``compression_training`` section.
    A config without the section gives ``[]``.

    Raises:
        ValueError: unknown method or key, a bad value, or a setting we do not support (the message
            names the key and its path, e.g. ``compression_training.sparse_pruning.shared_parameters.foo``).
    """
    section, root = _load(path_or_dict)
    unknown = sorted(set(section) - set(METHODS))
    if unknown:
        raise _err(
            f"{root}.{unknown[0]}",
            f"unknown compression method(s) {unknown}; DeepSpeed's methods are {list(METHODS)}",
        )
    specs: list[CallbackSpec] = []
    for method in METHODS:  # DeepSpeed's order: layer reduction first, then pruning, then quantization
        if method not in section:
            continue
        path = f"{root}.{method}"
        if method == "layer_reduction":
            specs += _layer_reduction_specs(section[method], path)
        elif method == "weight_quantization":
            specs += _weight_quant_specs(section[method], path)
        elif method == "activation_quantization":
            specs += _act_quant_specs(section[method], path)
        else:
            specs += _pruning_specs(method, section[method], path)
    return specs


_CALLBACK_MODULES = {
    "SparsePruning": "sparse_pruning",
    "RowPruning": "row_pruning",
    "HeadPruning": "head_pruning",
    "ChannelPruning": "channel_pruning",
    "WeightQuant": "weight_quant",
    "ActQuant": "act_quant",
    "LayerReductionKD": "layer_reduction_kd",
}


def _callback_class(name: str, path: str) -> type:
    cls = getattr(importlib.import_module("lightning_compress.callbacks"), name, None)
    if cls is None and name in _CALLBACK_MODULES:
        try:
            cls = getattr(importlib.import_module(f"lightning_compress.callbacks.{_CALLBACK_MODULES[name]}"), name, None)
        except ImportError:
            cls = None
    if cls is None:
        raise _err(path, f"needs the callback {name}, which this installation of lightning_compress does not provide")
    return cls


def build_callback(spec: CallbackSpec) -> Any:
    """Instantiate one :class:`CallbackSpec`, checking its kwargs against the callback's signature."""
    cls = _callback_class(spec.callback, spec.path)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {}
    for key, value in spec.kwargs.items():
        if key in params or takes_any:
            kwargs[key] = value
        elif key in spec.optional:
            warnings.warn(f"DeepSpeed config `{spec.path}`: {key}={value!r} not passed: {spec.optional[key]}.", stacklevel=3)
        elif value is None:
            continue  # an unset option the callback does not have: nothing lost
        else:
            raise _err(
                spec.path,
                f"translates to {spec.callback}({key}={value!r}), but {spec.callback} has no `{key}` argument: "
                "this DeepSpeed setting is not supported; remove it from the config",
            )
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise ValueError(f"DeepSpeed config `{spec.path}` -> {spec.callback}: {err}") from err


def from_deepspeed_config(path_or_dict: str | os.PathLike | dict[str, Any]) -> list[Any]:
    """Callbacks equivalent to a DeepSpeed ``compression_training`` config (see the module docstring).

    Args:
        path_or_dict: a DeepSpeed JSON config file, its dict, or just the ``compression_training`` dict.

    Returns:
        The callbacks in DeepSpeed's order (layer reduction, sparse/row/head/channel pruning, weight and
        activation quantization); ``[]`` when there is no ``compression_training`` section.

    Raises:
        ValueError: unknown method or key, an unsupported setting, or a bad value; the message names the
            key and its path in the config.

    Example::

        trainer = Trainer(callbacks=from_deepspeed_config("ds_config.json"))
    """
    return [build_callback(spec) for spec in plan_from_deepspeed_config(path_or_dict)]
