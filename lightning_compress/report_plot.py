"""Pictures of a compression result: per-layer sparsity and bits, accuracy against latency.

:func:`layer_compression` (plain PyTorch) says, per Conv2d / Linear layer, what fraction of its dense
weights the compressed model no longer has (removed by ``RedundancyClean`` or zero) and at how many bits it
stores them; :func:`plot_compression` draws one PNG from that and from one accuracy / latency point per
model:

* top: per-layer sparsity bars, one colour per compressed model;
* bottom left: per-layer weight bits bars (32 = float);
* bottom right: test accuracy against CPU latency, the first point (the reference, e.g. dense) as a star.

matplotlib is an optional dependency (the ``plot`` extra: ``pip install "lightning-compress[plot]"``); it is
imported only when :func:`plot_compression` runs, and only its object-oriented API is used (no ``pyplot``,
no global backend switch), so plotting from a training script changes nothing else in the process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from lightning_compress.report import layer_rows

_OWNER = "plot_compression"
MISSING_MATPLOTLIB = (
    "lightning_compress.report_plot.plot_compression needs matplotlib, which is not installed. Install the "
    "optional `plot` extra: pip install \"lightning-compress[plot]\" (or: pip install matplotlib)."
)


def layer_compression(
    before: nn.Module,
    after: nn.Module,
    bits: Mapping[str, int] | None = None,
    types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
) -> list[dict[str, Any]]:
    """Per layer of ``types`` in ``before`` (matched by qualified name in ``after``):
    ``{"layer", "params_before", "params_after", "sparsity", "bits"}``.

    ``sparsity`` = 1 - (non-zero parameters of the layer in ``after``) / (parameters in ``before``): the
    fraction of the dense layer's weights and bias that are gone, whether removed (a slim model's smaller
    shapes) or zero (masks baked); a layer missing from ``after`` counts as fully removed.  ``bits`` is
    ``bits[name]`` when given, else 32 (float storage).
    """
    wanted = {n for n, m in before.named_modules() if isinstance(m, types)}
    out = []
    for r in layer_rows(before, after):
        if r["layer"] not in wanted:
            continue
        nonzero = r["params_after"] * (1.0 - r["sparsity_after"])
        out.append({
            "layer": r["layer"],
            "params_before": r["params_before"],
            "params_after": r["params_after"],
            "sparsity": 1.0 - nonzero / max(1, r["params_before"]),
            "bits": int((bits or {}).get(r["layer"], 32)),
        })
    return out


def _short_names(names: list[str]) -> list[str]:
    parts = [n.split(".") for n in names]
    if len(parts) > 1:  # drop the prefix every name shares ("model.")
        k = 0
        while all(len(p) > k + 1 and p[k] == parts[0][k] for p in parts):
            k += 1
        parts = [p[k:] for p in parts]
    return [".".join(p).replace("layer", "L").replace("shortcut", "sc") for p in parts]


def _check(points: Sequence[Mapping[str, Any]], layers: Mapping[str, Sequence[Mapping[str, Any]]] | None) -> None:
    if not points:
        raise ValueError(f"{_OWNER}: `points` is empty; pass one {{'name', 'accuracy', 'latency_ms'}} dict per model "
                         "(the first is the reference, e.g. dense).")
    for i, p in enumerate(points):
        missing = [k for k in ("name", "accuracy", "latency_ms") if k not in p]
        if missing:
            raise ValueError(f"{_OWNER}: `points[{i}]` has no {missing}; each point needs 'name', 'accuracy' "
                             "(fraction or percent, as you like, the same for all) and 'latency_ms'.")
    for series, rows in (layers or {}).items():
        for j, r in enumerate(rows):
            if "layer" not in r or "sparsity" not in r:
                raise ValueError(f"{_OWNER}: `layers[{series!r}][{j}]` needs 'layer' and 'sparsity' (and optionally "
                                 "'bits'); build it with layer_compression(before, after, bits).")
            if not 0.0 <= float(r["sparsity"]) <= 1.0:
                raise ValueError(f"{_OWNER}: `layers[{series!r}][{j}]['sparsity']`={r['sparsity']!r} is not a fraction "
                                 "in [0, 1]; pass the fraction of the layer's weights that are gone.")


def plot_compression(
    path: str | os.PathLike,
    points: Sequence[Mapping[str, Any]],
    layers: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Write the PNG described in the module docstring to ``path`` (folders created); returns the path.

    Args:
        path: the PNG file to write.
        points: one ``{"name", "accuracy", "latency_ms"}`` per model; the first is the reference.
        layers: ``{model name: rows}`` with rows from :func:`layer_compression` (``"layer"``,
            ``"sparsity"``, optional ``"bits"``); None or empty: only the accuracy / latency panel.
        title: the figure's title.
        dpi: resolution (100 gives a PNG of roughly 60-120 KB for a ResNet-20).

    Raises:
        ImportError: matplotlib is not installed (the message names the ``plot`` extra).
        ValueError: empty ``points``, a point or layer row without its keys, a sparsity outside [0, 1].
    """
    _check(points, layers)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(MISSING_MATPLOTLIB) from err

    layers = {k: list(v) for k, v in (layers or {}).items() if v}
    fig = Figure(figsize=(11, 7.5 if layers else 4.5), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    if layers:
        grid = fig.add_gridspec(2, 3)
        ax_sp = fig.add_subplot(grid[0, :])
        ax_bits = fig.add_subplot(grid[1, :2])
        ax_pts = fig.add_subplot(grid[1, 2])
        names = [r["layer"] for r in next(iter(layers.values()))]
        for rows in layers.values():  # every layer any series has, in first-seen order
            names += [r["layer"] for r in rows if r["layer"] not in names]
        x = list(range(len(names)))
        width = 0.8 / len(layers)
        quantized = [s for s, rows in layers.items() if any(int(r.get("bits", 32)) != 32 for r in rows)]
        bits_width = 0.8 / max(1, len(quantized))
        for k, (series, rows) in enumerate(layers.items()):
            by = {r["layer"]: r for r in rows}
            color = colors[(k + 1) % len(colors)]
            xs = [i - 0.4 + width * (k + 0.5) for i in x]
            ax_sp.bar(xs, [float(by[n]["sparsity"]) if n in by else 0.0 for n in names], width, label=series, color=color)
            if series in quantized:  # a series stored in float everywhere adds 32-bit bars only
                q = quantized.index(series)
                xs = [i - 0.4 + bits_width * (q + 0.5) for i in x]
                ax_bits.bar(xs, [int(by[n].get("bits", 32)) if n in by else 32 for n in names], bits_width,
                            label=series, color=color)
        if not quantized:
            ax_bits.text(0.5, 0.5, "every layer of every model stored as 32-bit float", ha="center", va="center",
                         transform=ax_bits.transAxes)
        labels = _short_names(names)
        for ax in (ax_sp, ax_bits):
            ax.set_xticks(x, labels, rotation=90, fontsize=7)
            ax.set_xlim(-0.6, len(names) - 0.4)
            ax.grid(axis="y", alpha=0.3)
        ax_sp.set_ylim(0, 1)
        ax_sp.set_ylabel("sparsity (fraction of weights gone)")
        ax_sp.set_title("per-layer sparsity (removed or zero)")
        ax_sp.legend(fontsize=8, loc="upper left")
        ax_bits.set_ylabel("weight bits")
        ax_bits.set_yticks([1, 2, 4, 8, 16, 32])
        ax_bits.set_ylim(0, 34)
        ax_bits.set_title("per-layer weight bits of the quantized models (32 = float; others: float everywhere)")
    else:
        ax_pts = fig.add_subplot(1, 1, 1)
    for k, p in enumerate(points):
        marker, size = ("*", 220) if k == 0 else ("o", 80)
        ax_pts.scatter([float(p["latency_ms"])], [float(p["accuracy"])], s=size, marker=marker,
                       color=colors[k % len(colors)], label=str(p["name"]), zorder=3)
        ax_pts.annotate(f"{float(p['accuracy']):.4g}", (float(p["latency_ms"]), float(p["accuracy"])),
                        textcoords="offset points", xytext=(6, 4), fontsize=7)
    ax_pts.set_xlabel("CPU latency (ms)")
    ax_pts.set_ylabel("test accuracy")
    ax_pts.set_title("accuracy vs latency")
    ax_pts.grid(alpha=0.3)
    lat = [float(p["latency_ms"]) for p in points]
    ax_pts.set_xlim(0, max(lat) * 1.15 if max(lat) > 0 else 1)
    acc = [float(p["accuracy"]) for p in points]
    pad = max(0.01 * max(abs(a) for a in acc), (max(acc) - min(acc)) * 0.25)
    ax_pts.set_ylim(min(acc) - pad, max(acc) + pad)
    ax_pts.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


__all__ = ["MISSING_MATPLOTLIB", "layer_compression", "plot_compression"]
