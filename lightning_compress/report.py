"""What was compressed, by how much, and what it bought.

:func:`compression_report` compares the model before clean (masks baked, full shapes) with the slim
model: per layer the weight shape before/after, parameters before/after and the fraction of zeros
left in the slim weights; totals; file sizes; and CPU latency before/after on a sample input
(median of interleaved runs, so both models see the same machine load).  :func:`format_table`
renders it as a text table.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch
from torch import nn

from lightning_compress.export.adapt import split_example
from lightning_compress.export.save import unique_tensors


def _own_params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module._parameters.items() if v is not None}


def layer_rows(before: nn.Module, after: nn.Module) -> list[dict[str, Any]]:
    """One row per module that owns parameters (matched by qualified name)."""
    after_mods = dict(after.named_modules())
    rows = []
    for name, mb in before.named_modules():
        pb = _own_params(mb)
        if not pb:
            continue
        ma = after_mods.get(name)
        pa = _own_params(ma) if ma is not None else {}
        main = "weight" if "weight" in pb else next(iter(pb))
        wa = pa.get(main)
        n_after = sum(p.numel() for p in pa.values())
        zeros = sum(int((p == 0).sum()) for p in pa.values())
        rows.append(
            {
                "layer": name,
                "type": type(mb).__name__,
                "shape_before": list(pb[main].shape),
                "shape_after": list(wa.shape) if wa is not None else None,
                "params_before": sum(p.numel() for p in pb.values()),
                "params_after": n_after,
                "sparsity_after": zeros / max(n_after, 1),
            }
        )
    return rows


def _state_bytes(model: nn.Module) -> int:
    """Bytes of the state dict's tensors (shared tensors once): what a weights file holds."""
    return sum(v.numel() * v.element_size() for v in unique_tensors(model).values())


def _call(model: nn.Module, example: Any) -> Any:
    args, kwargs = split_example(example)
    return model(*args, **kwargs)


@torch.no_grad()
def measure_latency(models: dict[str, nn.Module], example: Any, runs: int = 10, warmup: int = 2) -> dict[str, float]:
    """Median seconds per forward of each model on ``example`` (CPU, eval, interleaved runs)."""
    modes = {k: m.training for k, m in models.items()}
    for m in models.values():
        m.eval()
    try:
        for _ in range(warmup):
            for m in models.values():
                _call(m, example)
        times: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(runs):
            for k, m in models.items():
                t0 = time.perf_counter()
                _call(m, example)
                times[k].append(time.perf_counter() - t0)
    finally:
        for k, m in models.items():
            m.train(modes[k])
    return {k: statistics.median(v) for k, v in times.items()}


def _pruner_status(name: str, pruner: Any) -> dict[str, Any]:
    groups = []
    for g in pruner.groups:
        total = g.schedule.num_events if g.schedule is not None else None
        groups.append({"group": g.name, "events_done": g.events_done, "events_total": total, "target_sparsity": g.sparsity})
    reached = pruner.sparsity_stats()
    finished = bool(groups) and all(g["events_total"] is not None and g["events_done"] >= g["events_total"] for g in groups)
    detail = "; ".join(
        f"group {g['group']!r}: {g['events_done']} of {g['events_total'] if g['events_total'] is not None else '?'} "
        f"prune events, sparsity {reached.get('sparsity/' + g['group'], reached['sparsity']):.3f} of target {g['target_sparsity']:.3f}"
        for g in groups
    )
    return {"callback": name, "kind": "pruning", "finished": finished, "detail": detail, "groups": groups,
            "sparsity": reached["sparsity"], "end_step": pruner.resolved_end}


def schedule_status(callbacks: list[Any]) -> list[dict[str, Any]]:
    """Whether every compression schedule of ``callbacks`` finished, one entry per scheduled callback:
    ``{"callback", "kind", "finished", "detail", ...}``.

    * pruning (an object with a ``pruner``, :class:`~lightning_compress.core.pruner.Pruner`): every
      group ran all its prune events (``events_done == schedule.num_events``, i.e. the event at
      ``end_step`` ran and the target sparsity was applied);
    * weight quantization (a ``quantizer`` with ``current_bits``): the width in use is the final
      ``bits`` (None = not switched on yet, before ``start_step``);
    * activation quantization (a ``quantizer`` with ``range``): attached, every quantizer enabled, and
      with ``range="static"`` every range learned (entry also has ``"bits"``, ``"range"`` and ``"on"``:
      attached with every quantizer enabled).

    Pruning entries also carry ``"sparsity"`` (fraction of zeros in the masks now) and ``"groups"``
    (``events_done`` / ``events_total`` / ``target_sparsity`` per group); weight quantization ones ``"bits"``
    (the width in use, None before it switches on) and ``"target_bits"``.

    Other callbacks are skipped.  Pure: reads the objects' state, changes nothing.
    """
    from lightning_compress.core.act_quantizer import ActQuantizer
    from lightning_compress.core.pruner import Pruner
    from lightning_compress.core.weight_quantizer import WeightQuantizer

    out: list[dict[str, Any]] = []
    for cb in callbacks:
        name = getattr(cb, "owner", type(cb).__name__)
        pruner = getattr(cb, "pruner", cb if isinstance(cb, Pruner) else None)
        quantizer = getattr(cb, "quantizer", cb if isinstance(cb, (WeightQuantizer, ActQuantizer)) else None)
        if isinstance(pruner, Pruner):
            out.append(_pruner_status(name, pruner))
        elif isinstance(quantizer, WeightQuantizer):
            bits = quantizer.current_bits
            finished = quantizer.is_attached and bits == quantizer.bits
            detail = (f"{'not switched on' if bits is None else f'{bits} bits'} after {quantizer.steps_done} optimizer steps, "
                      f"target {quantizer.bits} bits (start_step={quantizer.start_step}, levels={list(quantizer.levels)})")
            out.append({"callback": name, "kind": "weight_quant", "finished": finished, "detail": detail,
                        "bits": bits, "target_bits": quantizer.bits})
        elif isinstance(quantizer, ActQuantizer):
            off = [n for n, q in quantizer.quantizers.items() if not q.enabled or q.observer is not None]
            unlearned = [n for n, r in quantizer.ranges().items() if r is None] if quantizer.range == "static" else []
            finished = quantizer.is_attached and not off and not unlearned
            detail = (f"{quantizer.bits}-bit {quantizer.range} on {len(quantizer.quantizers)} layers"
                      + (f"; switched off on {off}" if off else "") + (f"; no static range learned for {unlearned}" if unlearned else "")
                      + ("" if quantizer.is_attached else "; not attached"))
            out.append({"callback": name, "kind": "act_quant", "finished": finished, "detail": detail,
                        "bits": quantizer.bits, "range": quantizer.range, "on": quantizer.is_attached and not off})
    return out


def unfinished_warning(status: list[dict[str, Any]]) -> str | None:
    """One message naming every schedule of :func:`schedule_status` that did not finish (None if all did)."""
    bad = [s for s in status if not s["finished"]]
    if not bad:
        return None
    return (
        "the slim model is NOT the one the compression schedules aim at: "
        + "; ".join(f"{s['callback']} did not finish ({s['detail']})" for s in bad)
        + ". Train to the schedules' end (end_step / start_step / period within the fit) before trusting this export."
    )


def compression_report(
    before: nn.Module,
    after: nn.Module,
    example_input: Any = None,
    files: dict[str, str] | None = None,
    latency_runs: int = 10,
    notes: list[str] | None = None,
    schedules: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build the report dict (JSON-serialisable).  With ``schedules`` (from :func:`schedule_status`)
    the report has ``"schedules"`` and ``"complete"`` (every schedule finished), and a note naming
    each unfinished one."""
    rows = layer_rows(before, after)
    pb = sum(p.numel() for p in before.parameters())
    pa = sum(p.numel() for p in after.parameters())
    zeros = sum(int((p == 0).sum()) for p in after.parameters())
    report: dict[str, Any] = {
        "layers": rows,
        "totals": {
            "params_before": pb,
            "params_after": pa,
            "params_ratio": pa / max(pb, 1),
            "nonzero_params_after": pa - zeros,
            "state_bytes_before": _state_bytes(before),
            "state_bytes_after": _state_bytes(after),
        },
        "files": {k: {"path": v, "bytes": os.path.getsize(v)} for k, v in (files or {}).items() if os.path.exists(v)},
        "notes": list(notes or []),
    }
    if schedules is not None:
        report["schedules"] = schedules
        report["complete"] = all(s["finished"] for s in schedules)
        warning = unfinished_warning(schedules)
        if warning:
            report["notes"].insert(0, f"INCOMPLETE: {warning}")
    if example_input is not None and latency_runs > 0:
        lat = measure_latency({"before": before, "after": after}, example_input, runs=latency_runs)
        report["latency"] = {
            "before_ms": lat["before"] * 1e3,
            "after_ms": lat["after"] * 1e3,
            "speedup": lat["before"] / max(lat["after"], 1e-12),
            "runs": latency_runs,
        }
    return report


def format_table(report: dict[str, Any]) -> str:
    """Text table of a :func:`compression_report`."""
    head = f"{'layer':<44} {'type':<14} {'shape before':<18} {'shape after':<18} {'params':>19} {'zeros':>6}"
    lines = [head, "-" * len(head)]
    for r in report["layers"]:
        sb = "x".join(map(str, r["shape_before"]))
        sa = "x".join(map(str, r["shape_after"])) if r["shape_after"] else "-"
        params = f"{r['params_before']}->{r['params_after']}"
        lines.append(f"{r['layer'][-44:]:<44} {r['type'][:14]:<14} {sb:<18} {sa:<18} {params:>19} {r['sparsity_after']:>6.1%}")
    t = report["totals"]
    lines.append("-" * len(head))
    if "complete" in report:
        lines.append("schedules: " + ("all finished" if report["complete"] else "NOT ALL FINISHED (see notes)"))
    lines.append(f"total parameters: {t['params_before']} -> {t['params_after']} ({t['params_ratio']:.1%}); nonzero after: {t['nonzero_params_after']}")
    lines.append(f"weights: {t['state_bytes_before'] / 1e6:.3f} MB -> {t['state_bytes_after'] / 1e6:.3f} MB")
    for k, f in report.get("files", {}).items():
        lines.append(f"file {k}: {f['path']} ({f['bytes'] / 1e6:.3f} MB)")
    lat = report.get("latency")
    if lat:
        lines.append(
            f"CPU latency (median of {lat['runs']} interleaved runs): {lat['before_ms']:.2f} ms -> "
            f"{lat['after_ms']:.2f} ms ({lat['speedup']:.2f}x)"
        )
    for n in report.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines)


def log_report(logger: Any, report: dict[str, Any], step: int = 0, prefix: str = "redundancy_clean") -> None:
    """Log the totals and latency to a Lightning logger."""
    if logger is None:
        return
    metrics = {f"{prefix}/{k}": float(v) for k, v in report["totals"].items()}
    if "complete" in report:
        metrics[f"{prefix}/schedules_complete"] = float(report["complete"])
    for k, v in report.get("latency", {}).items():
        metrics[f"{prefix}/latency_{k}"] = float(v)
    for k, f in report.get("files", {}).items():
        metrics[f"{prefix}/bytes_{k}"] = float(f["bytes"])
    logger.log_metrics(metrics, step=step)
