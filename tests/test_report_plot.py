"""report_plot: per-layer sparsity / bits from before / after models, and the PNG (matplotlib, optional)."""

from __future__ import annotations

import builtins
import json

import pytest
import torch
from torch import nn

from lightning_compress.report_plot import MISSING_MATPLOTLIB, layer_compression, plot_compression


def _nets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    before = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 4))
    after = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        after[4].weight[:, :4] = 0  # half of the Linear weights zero
    return before, after


def test_layer_compression_counts_removed_and_zero_weights() -> None:
    before, after = _nets()
    rows = layer_compression(before, after, bits={"2": 8})
    assert [r["layer"] for r in rows] == ["0", "2", "4"]  # Conv2d / Linear only (no BatchNorm)
    conv0, conv2, fc = rows
    assert conv0["params_before"] == 8 * 27 + 8 and conv0["params_after"] == 4 * 27 + 4
    assert conv0["sparsity"] == pytest.approx(1 - (4 * 27 + 4) / (8 * 27 + 8))  # half the output channels gone
    assert conv2["sparsity"] == pytest.approx(1 - (8 * 4 * 9 + 8) / (8 * 8 * 9 + 8)) and conv2["bits"] == 8
    assert fc["sparsity"] == pytest.approx(16 / 36) and fc["bits"] == 32  # 16 of 32 weights zero, bias kept


def test_plot_writes_a_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    before, after = _nets()
    layers = {"half channels": layer_compression(before, after), "w8": layer_compression(before, before, {"0": 8, "2": 8})}
    points = [{"name": "dense", "accuracy": 0.9, "latency_ms": 10.0}, {"name": "half channels", "accuracy": 0.88, "latency_ms": 4.0},
              {"name": "w8", "accuracy": 0.895, "latency_ms": 11.0}]
    out = plot_compression(tmp_path / "sub" / "report.png", points, json.loads(json.dumps(layers)), title="t")
    data = out.read_bytes()
    assert out == tmp_path / "sub" / "report.png" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    only_points = plot_compression(tmp_path / "points.png", points)  # no layer data: the accuracy / latency panel alone
    assert only_points.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("points", "layers", "match"),
    [
        ([], None, r"plot_compression: `points` is empty"),
        ([{"name": "dense", "accuracy": 0.9}], None, r"plot_compression: `points\[0\]` has no \['latency_ms'\]"),
        ([{"name": "d", "accuracy": 0.9, "latency_ms": 1.0}], {"x": [{"layer": "a", "sparsity": 1.5}]},
         r"plot_compression: `layers\['x'\]\[0\]\['sparsity'\]`=1\.5 is not a fraction in \[0, 1\]"),
        ([{"name": "d", "accuracy": 0.9, "latency_ms": 1.0}], {"x": [{"sparsity": 0.5}]},
         r"plot_compression: `layers\['x'\]\[0\]` needs 'layer' and 'sparsity'"),
    ],
)
def test_bad_input_is_refused_before_plotting(tmp_path, points, layers, match) -> None:
    with pytest.raises(ValueError, match=match):
        plot_compression(tmp_path / "x.png", points, layers)
    assert not (tmp_path / "x.png").exists()


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"needs matplotlib.*lightning-compress\[plot\]") as err:
        plot_compression(tmp_path / "x.png", [{"name": "d", "accuracy": 0.9, "latency_ms": 1.0}])
    assert str(err.value) == MISSING_MATPLOTLIB
