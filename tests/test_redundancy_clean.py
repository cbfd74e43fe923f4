"""RedundancyClean: saved slim model loads and runs without the model's code; files shrink; report."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress.callbacks.channel_pruning import ChannelPruning
from lightning_compress.callbacks.head_pruning import HeadPruning
from lightning_compress.callbacks.redundancy_clean import RedundancyClean
from lightning_compress.callbacks.row_pruning import RowPruning
from lightning_compress.export import save_slim
from tests.models import cpu_trainer, image_loader
from tests.structured_models import TinyBert, TinyResNet, randomize_bn

LOADER = textwrap.dedent(
    """
    import sys, torch
    assert "tests" not in sys.modules and "lightning_compress" not in sys.modules
    prog = torch.export.load(sys.argv[1]).module()
    x = torch.load(sys.argv[2])
    args = x if isinstance(x, tuple) else (x,)
    torch.save(prog(*args), sys.argv[3])
    bad = [m for m in sys.modules if m.startswith(("tests", "lightning_compress", "lightning", "transformers"))]
    assert not bad, bad
    """
)


def run_fresh(tmp_path, pt2, x):
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "load.py"
    script.write_text(LOADER)
    # cwd = tmp_path and -I: the repository (and its tests package) is not importable
    subprocess.run([sys.executable, "-I", str(script), str(pt2), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                   check=True, cwd=tmp_path, timeout=120)
    return torch.load(tmp_path / "y.pt")


def test_resnet_channel_pruning_saved_and_loaded_without_code(tmp_path, capsys):
    torch.manual_seed(0)
    model = TinyResNet()
    randomize_bn(model)
    dense_dir = tmp_path / "dense"
    save_slim(model.eval(), dense_dir, formats=("safetensors",))
    rc = RedundancyClean(tmp_path / "slim", latency_runs=3)
    trainer = cpu_trainer(max_steps=4, callbacks=[ChannelPruning(sparsity=0.5, end_step=2), rc],
                          logger=CSVLogger(tmp_path / "logs"))
    trainer.fit(model, image_loader())
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        masked = model(x)
        slim_out = rc.slim_model(x)
    torch.testing.assert_close(slim_out, masked, atol=1e-5, rtol=1e-4)
    assert (tmp_path / "slim" / "model.pt2").exists()
    loaded = run_fresh(tmp_path, tmp_path / "slim" / "model.pt2", x)
    torch.testing.assert_close(loaded, masked, atol=1e-5, rtol=1e-4)
    # files shrink with the parameters
    dense_bytes = (dense_dir / "model.safetensors").stat().st_size
    slim_bytes = (tmp_path / "slim" / "model.safetensors").stat().st_size
    rep = json.loads((tmp_path / "slim" / "report.json").read_text())
    ratio = rep["totals"]["params_after"] / rep["totals"]["params_before"]
    assert ratio < 0.5
    assert slim_bytes < 0.6 * dense_bytes
    assert rep["files"]["safetensors"]["bytes"] == slim_bytes
    assert rep["totals"]["state_bytes_after"] < 0.6 * rep["totals"]["state_bytes_before"]
    assert rep["latency"]["before_ms"] > 0 and rep["latency"]["after_ms"] > 0
    by_layer = {r["layer"]: r for r in rep["layers"]}
    assert by_layer["stem"]["shape_before"] == [8, 3, 3, 3] and by_layer["stem"]["shape_after"] == [4, 3, 3, 3]
    # the safetensors weights match the slim model
    from safetensors.torch import load_file

    sd = load_file(tmp_path / "slim" / "model.safetensors")
    torch.testing.assert_close(sd["fc.weight"], rc.slim_model.fc.weight)
    printed = capsys.readouterr().out
    assert "shape before" in printed and "CPU latency" in printed and "stem" in printed
    trainer.logger.finalize("success")
    metrics = (tmp_path / "logs").rglob("metrics.csv")
    assert any("redundancy_clean/params_after" in p.read_text() for p in metrics)


def test_bert_heads_rows_saved_and_loaded_without_code(tmp_path):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (16, 8), generator=g)
    y = torch.randint(0, 2, (16,), generator=g)
    model = TinyBert()
    rc = RedundancyClean(tmp_path / "slim", formats=("torch_export", "safetensors", "onnx"), latency_runs=2)
    cbs = [HeadPruning(sparsity=0.5, end_step=2), RowPruning(sparsity=0.5, end_step=2), rc]
    cpu_trainer(max_steps=3, callbacks=cbs).fit(model, DataLoader(TensorDataset(ids, y), batch_size=4))
    model.eval()
    with torch.no_grad():
        masked = model(ids[:4])  # the stashed example is the first batch: same shape
    loaded = run_fresh(tmp_path, tmp_path / "slim" / "model.pt2", ids[:4])
    torch.testing.assert_close(loaded, masked, atol=1e-5, rtol=1e-4)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "slim" / "model.onnx"))
    (out,) = sess.run(None, {sess.get_inputs()[0].name: ids[:4].numpy()})
    torch.testing.assert_close(torch.from_numpy(out), masked, atol=1e-4, rtol=1e-4)
    assert rc.report["totals"]["params_after"] < rc.report["totals"]["params_before"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="RedundancyClean: `formats\\[0\\]`='tflite' must be one of"):
        RedundancyClean("out", formats=("tflite",))
    with pytest.raises(ValueError, match="`latency_runs`=-1"):
        RedundancyClean("out", latency_runs=-1)


def test_export_needs_example_input(tmp_path):
    with pytest.raises(ValueError, match="need `example_input`"):
        save_slim(TinyResNet(), tmp_path, None, formats=("torch_export",))


def test_clean_bakes_foreign_quantizer_values_and_does_not_pack_them():
    from torch import nn

    from lightning_compress.core import masking
    from lightning_compress.export import clean, pack_quantized

    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    model = nn.Sequential(lin)
    masking.add_param_transform(lin, "weight", "q", lambda m, w: torch.round(w * 4) / 4, kind="weight_quant",
                                priority=masking.QUANT_PRIORITY)
    x = torch.randn(3, 8)
    with torch.no_grad():
        expected = model(x)
    # a hand-written quantizer has no integer form to pack: its values are baked as floats
    assert pack_quantized(model) is None
    clean(model)
    assert type(lin) is nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    assert torch.equal(lin.weight, torch.round(lin.weight * 4) / 4)


def test_input_from_batch():
    from lightning_compress.callbacks.redundancy_clean import input_from_batch

    x = torch.zeros(2, 3)
    assert input_from_batch((x, torch.ones(2))) is x
    assert set(input_from_batch({"input_ids": x, "attention_mask": x, "labels": x})) == {"input_ids", "attention_mask"}
    assert input_from_batch(x) is x
