"""Exports you can trust: every saved form computes the trained model's function (activation
quantization and precision included); the export folder is checked at setup and replaced whole; the
report says whether every schedule finished; corrupt files are named in the loaders' errors."""

from __future__ import annotations

import copy
import json
import os
import zipfile

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress.callbacks.act_quant import ActQuant
from lightning_compress.callbacks.channel_pruning import ChannelPruning
from lightning_compress.callbacks.head_pruning import HeadPruning
from lightning_compress.callbacks.redundancy_clean import RedundancyClean
from lightning_compress.callbacks.row_pruning import RowPruning
from lightning_compress.callbacks.sparse_pruning import SparsePruning
from lightning_compress.callbacks.weight_quant import WeightQuant
from lightning_compress.export import (
    InputQuantize, input_quantizers, load_onnx, load_program, load_slim, load_slim_state, save_slim,
)
from tests.models import TinyMLP, cpu_trainer, image_loader, mlp_loader
from tests.structured_models import TinyBert, TinyResNet

ALL = ("torch_export", "safetensors", "onnx")


def _bert_loader():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (16, 8), generator=g)
    return DataLoader(TensorDataset(ids, torch.randint(0, 2, (16,), generator=g)), batch_size=4)


CASES = {
    "sparse": (TinyMLP, mlp_loader, lambda: [SparsePruning(sparsity=0.5, pattern="2:4", end_step=2)], {}),
    "row+head": (TinyBert, _bert_loader, lambda: [HeadPruning(sparsity=0.5, end_step=2), RowPruning(sparsity=0.5, end_step=2)], {}),
    "channel": (TinyResNet, image_loader, lambda: [ChannelPruning(sparsity=0.5, end_step=2)], {}),
    "W8 channel": (TinyMLP, mlp_loader, lambda: [WeightQuant(bits=8, granularity="channel")], {}),
    "W4 group": (TinyMLP, mlp_loader, lambda: [WeightQuant(bits=4, granularity="group", group_size=8)], {}),
    "W8A8 static": (TinyMLP, mlp_loader, lambda: [WeightQuant(bits=8), ActQuant(bits=8, range="static", symmetric=False)], {}),
    "A8 dynamic": (TinyMLP, mlp_loader, lambda: [ActQuant(bits=8, range="dynamic")], {}),
    "bf16-true": (TinyMLP, mlp_loader, lambda: [SparsePruning(sparsity=0.5, end_step=2), WeightQuant(bits=4, granularity="group", group_size=8)],
                  {"precision": "bf16-true"}),
}


def _fresh_slim(slim: torch.nn.Module) -> torch.nn.Module:
    """Your classes with the slim shapes and other weights, no input quantizers: what a user builds
    before loading ``model.safetensors``."""
    fresh = copy.deepcopy(slim).float()
    for m in fresh.modules():
        for k, h in list(m._forward_pre_hooks.items()):
            if isinstance(h, InputQuantize):
                del m._forward_pre_hooks[k]
    with torch.no_grad():
        for p in fresh.parameters():
            p.normal_()
    return fresh


class StopAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.mark.parametrize("case", list(CASES))
def test_every_saved_form_computes_the_trained_function(tmp_path, case):
    model_cls, loader, callbacks, kw = CASES[case]
    torch.manual_seed(0)
    model = model_cls()
    bf16 = kw.get("precision") == "bf16-true"
    rc = RedundancyClean(tmp_path / "slim", formats=ALL[:2] if bf16 else ALL, latency_runs=0)
    cpu_trainer(max_steps=3, callbacks=[*callbacks(), rc], **kw).fit(model, loader())
    assert rc.report["complete"], rc.report["notes"]
    assert rc.report["dtype"] == ("torch.bfloat16" if bf16 else "torch.float32")
    dtype = next(model.parameters()).dtype
    example = rc._stashed
    example = example.to(dtype) if example.is_floating_point() else example
    tol = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    model.eval()
    with torch.no_grad():
        expected = model(example)
        assert bool(input_quantizers(rc.slim_model)) == ("A8" in case)
        torch.testing.assert_close(rc.slim_model(example), expected, **tol)
        program = load_program(tmp_path / "slim" / "model.pt2")
        torch.testing.assert_close(program(example), expected, **tol)
        fresh = load_slim(_fresh_slim(rc.slim_model), tmp_path / "slim" / "model.safetensors").eval()
        assert next(fresh.parameters()).dtype == dtype
        torch.testing.assert_close(fresh(example), expected, **tol)
    if not bf16:
        sess = load_onnx(tmp_path / "slim" / "model.onnx")
        feeds = {i.name: example.numpy() for i in sess.get_inputs()}
        (out,) = sess.run(None, feeds)
        torch.testing.assert_close(torch.from_numpy(out), expected, atol=1e-4, rtol=1e-4)


def test_activation_quantization_kept_and_load_slim_state_refuses_it(tmp_path):
    torch.manual_seed(0)
    model = TinyMLP()
    aq = ActQuant(bits=8, range="static")
    rc = RedundancyClean(tmp_path / "slim", formats=("safetensors",), latency_runs=0)
    cpu_trainer(max_steps=3, callbacks=[aq, rc]).fit(model, mlp_loader())
    x = rc._stashed
    with torch.no_grad():
        expected = model.eval()(x)
        hooks = input_quantizers(rc.slim_model)
        assert sorted(hooks) == ["net.0", "net.2"] and all(h.mode == "static" for h in hooks.values())
        without = _fresh_slim(rc.slim_model)
        without.load_state_dict(rc.slim_model.state_dict())
        assert (without(x) - expected).abs().max() > 1e-4  # what dropping it used to give
    with pytest.raises(ValueError, match=r"model\.safetensors: the saved model quantizes the inputs of \['net.0', 'net.2'\].*load_slim"):
        load_slim_state(tmp_path / "slim" / "model.safetensors")


def test_weight_quant_never_switched_on_is_float_in_every_form(tmp_path):
    torch.manual_seed(0)
    model = TinyMLP()
    rc = RedundancyClean(tmp_path / "slim", latency_runs=0)
    with pytest.warns(UserWarning, match=r"WeightQuant#\d+ did not finish \(not switched on"):
        # the fit stops (early) before WeightQuant's start_step
        cpu_trainer(max_steps=4, callbacks=[WeightQuant(bits=4, start_step=3), StopAt(2), rc]).fit(model, mlp_loader())
    from safetensors.torch import load_file

    raw = load_file(str(tmp_path / "slim" / "model.safetensors"))
    assert not any(k.startswith("lc_packed.") for k in raw)  # no 4-bit file for a float model
    x = rc._stashed
    with torch.no_grad():
        expected = model.eval()(x)
        torch.testing.assert_close(load_program(tmp_path / "slim" / "model.pt2")(x), expected)
        torch.testing.assert_close(load_slim(_fresh_slim(rc.slim_model), tmp_path / "slim" / "model.safetensors")(x), expected)
    rep = json.loads((tmp_path / "slim" / "report.json").read_text())
    assert rep["complete"] is False and rep["notes"][0].startswith("INCOMPLETE")


def test_fit_stopped_early_is_reported_incomplete(tmp_path):
    torch.manual_seed(0)
    sp = SparsePruning(sparsity=0.8, start_step=0, end_step=5, frequency=1)
    rc = RedundancyClean(tmp_path / "slim", formats=("safetensors",), latency_runs=0)
    with pytest.warns(UserWarning, match=r"SparsePruning#\d+ did not finish \(group 'default': \d of 6 prune events, sparsity 0\.\d+ of target 0\.800"):
        cpu_trainer(max_steps=6, callbacks=[sp, StopAt(2), rc]).fit(TinyMLP(), mlp_loader())
    rep = json.loads((tmp_path / "slim" / "report.json").read_text())
    assert rep["complete"] is False
    (status,) = rep["schedules"]
    assert status["kind"] == "pruning" and not status["finished"] and status["sparsity"] < 0.8
    assert "INCOMPLETE" in rep["notes"][0]


def _fit_export(tmp_path, rc, steps=2):
    torch.manual_seed(0)
    cpu_trainer(max_steps=steps, callbacks=[rc]).fit(TinyMLP(), mlp_loader())


def test_output_dir_checked_at_setup(tmp_path, monkeypatch):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    started = []

    class Probe(pl.Callback):
        def on_train_start(self, *a):
            started.append(1)

    def fit(rc):
        torch.manual_seed(0)
        cpu_trainer(max_steps=2, callbacks=[rc, Probe()]).fit(TinyMLP(), mlp_loader())

    with pytest.raises(ValueError, match=r"RedundancyClean: `output_dir`=.*file\.txt' is a file"):
        fit(RedundancyClean(a_file, latency_runs=0))
    with pytest.raises(PermissionError, match=r"file\.txt' is not a writable folder"):
        fit(RedundancyClean(a_file / "sub", latency_runs=0))
    import lightning_compress.export.folder as folder

    monkeypatch.setattr(folder.os, "access", lambda *a, **k: False)
    with pytest.raises(PermissionError, match="cannot be written"):
        fit(RedundancyClean(tmp_path / "new", latency_runs=0))
    monkeypatch.undo()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"holds files an export does not write \(\['notes.txt'\]\)"):
        fit(RedundancyClean(foreign, latency_runs=0))
    with pytest.raises(ValueError, match="two RedundancyClean callbacks write"):
        torch.manual_seed(0)
        cpu_trainer(max_steps=2, callbacks=[RedundancyClean(tmp_path / "o"), RedundancyClean(tmp_path / "o")]).fit(TinyMLP(), mlp_loader())
    assert started == []  # every refusal came before training
    with pytest.raises(TypeError, match="`overwrite`=1 must be a bool"):
        RedundancyClean(tmp_path / "x", overwrite=1)


def test_export_replaced_whole_or_refused(tmp_path):
    out = tmp_path / "slim"
    _fit_export(tmp_path, RedundancyClean(out, formats=ALL, latency_runs=0))
    assert sorted(os.listdir(out)) == ["model.onnx", "model.pt2", "model.safetensors", "report.json"]
    with pytest.raises(ValueError, match=r"already holds an export .*pass overwrite=True"):
        _fit_export(tmp_path, RedundancyClean(out, formats=("torch_export",), latency_runs=0))
    rc = RedundancyClean(out, formats=("torch_export",), latency_runs=0, overwrite=True)
    _fit_export(tmp_path, rc, steps=3)
    # no older model.onnx / model.safetensors next to the new model.pt2
    assert sorted(os.listdir(out)) == ["model.pt2", "report.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slim"]  # no temporary folder left
    rep = json.loads((out / "report.json").read_text())
    assert rep["files"]["torch_export"]["path"] == str(out / "model.pt2") == rc.files["torch_export"]


def test_failed_export_leaves_the_earlier_one_untouched(tmp_path, monkeypatch):
    out = tmp_path / "slim"
    _fit_export(tmp_path, RedundancyClean(out, latency_runs=0))
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    import lightning_compress.export.writers as writers

    def broken(*a, **k):
        raise RuntimeError("export failed")

    monkeypatch.setattr(writers, "export_program", broken)
    with pytest.raises(RuntimeError, match="export failed"):
        _fit_export(tmp_path, RedundancyClean(out, latency_runs=0, overwrite=True), steps=3)
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before  # no new safetensors next to the old pt2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slim"]


def test_corrupt_files_are_named(tmp_path):
    torch.manual_seed(0)
    model = TinyMLP().eval()
    x = torch.randn(4, 16)
    paths = save_slim(model, tmp_path / "ok", x, formats=ALL)
    st, pt2, onnx = (tmp_path / "ok" / n for n in ("model.safetensors", "model.pt2", "model.onnx"))
    bad = tmp_path / "bad"
    bad.mkdir()
    trunc = bad / "model.safetensors"
    trunc.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{trunc}: not a readable safetensors file"):
        load_slim_state(trunc)
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors: no such safetensors file"):
        load_slim_state(bad / "missing.safetensors")
    from safetensors.torch import save_file

    foreign = bad / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"{foreign}: metadata .* is not that of a lightning-compress slim export"):
        load_slim_state(foreign)
    wrong_dtype = bad / "dtype.safetensors"
    save_file({"w": torch.zeros(2)}, str(wrong_dtype), metadata={"format": "lightning_compress.slim", "class": "x.Y", "dtype": "int7"})
    with pytest.raises(ValueError, match=rf"{wrong_dtype}: metadata 'dtype'='int7'"):
        load_slim_state(wrong_dtype)
    with pytest.raises(ValueError, match=rf"{st}: does not fit TinyMLP"):
        m = TinyMLP()
        m.net[0] = torch.nn.Linear(16, 8)
        load_slim(m, st)
    bad_zip = bad / "model.pt2"
    with zipfile.ZipFile(pt2) as zin:
        names = zin.namelist()
    bad_zip.write_bytes(pt2.read_bytes()[: pt2.stat().st_size // 3])
    with pytest.raises(ValueError, match=rf"{bad_zip}: not a readable torch.export program"):
        load_program(bad_zip)
    assert names  # the good one is a zip
    not_onnx = bad / "model.onnx"
    not_onnx.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=rf"{not_onnx}: not a readable ONNX model"):
        load_onnx(not_onnx)
    assert load_onnx(onnx) is not None and load_program(paths["torch_export"]) is not None


def test_onnx_refused_for_half_precision(tmp_path):
    with pytest.raises(ValueError, match=r"`formats` has 'onnx' but the model trains in precision='bf16-true'"):
        cpu_trainer(max_steps=2, precision="bf16-true", callbacks=[RedundancyClean(tmp_path / "s", formats=ALL)]).fit(TinyMLP(), mlp_loader())
    with pytest.raises(ValueError, match=r"save_slim: format 'onnx' with a torch.bfloat16 model"):
        save_slim(TinyMLP().to(torch.bfloat16), tmp_path / "b", torch.randn(2, 16), formats=("onnx",))


def test_act_quant_not_switched_on_is_reported_and_not_kept(tmp_path):
    torch.manual_seed(0)
    model = TinyMLP()
    rc = RedundancyClean(tmp_path / "slim", formats=("torch_export",), latency_runs=0)
    with pytest.warns(UserWarning, match=r"ActQuant#\d+ did not finish \(8-bit dynamic on 2 layers; switched off on \['net.0', 'net.2'\]"):
        cpu_trainer(max_steps=4, callbacks=[ActQuant(bits=8, start_step=3), StopAt(2), rc]).fit(model, mlp_loader())
    assert input_quantizers(rc.slim_model) == {} and rc.report["complete"] is False
    x = rc._stashed
    with torch.no_grad():
        expected = model.eval()(x)
        torch.testing.assert_close(load_program(tmp_path / "slim" / "model.pt2")(x), expected)
