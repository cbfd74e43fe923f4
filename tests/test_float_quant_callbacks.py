"""WeightQuant with float schemes (FP8, MXFP8/6/4, NVFP4): QAT under a CPU Trainer, forward on the
format's grid, packed storage exact, RedundancyClean's files reload to the same outputs, bad specs
refused at __init__."""

from __future__ import annotations

import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress.callbacks import RedundancyClean, WeightQuant
from lightning_compress.core import masking
from lightning_compress.core.microscaling import quantize_float
from lightning_compress.core.quantize import pack_state, unpack_state

CASES = {
    "fp8_e4m3": dict(bits=8, scheme="fp8_e4m3"),
    "fp8_e5m2_tensor": dict(bits=8, scheme="fp8_e5m2", granularity="tensor"),
    "mxfp8_e4m3": dict(bits=8, scheme="mxfp8_e4m3", granularity="group", group_size=32),
    "mxfp6_e3m2": dict(bits=6, scheme="mxfp6_e3m2", granularity="group", group_size=32),
    "mxfp4": dict(bits=4, scheme="mxfp4", granularity="group", group_size=32),
    "nvfp4": dict(bits=4, scheme="nvfp4", granularity="group", group_size=16),
}


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))
        self.example_input_array = torch.zeros(2, 32)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(cbs, steps=3):
    g = torch.Generator().manual_seed(1)
    data = DataLoader(TensorDataset(torch.randn(32, 32, generator=g), torch.randint(0, 2, (32,), generator=g)), batch_size=8)
    model = Net()
    pl.Trainer(accelerator="cpu", devices=1, callbacks=cbs, max_steps=steps, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(model, data)
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_float_qat_forward_on_grid_and_packed_exact(case):
    kw = CASES[case]
    model = _fit([WeightQuant(**kw)])
    lin = model.net[0]
    w = masking.effective_param(lin, "weight").detach()
    raw = lin.weight.detach()
    per_row = kw.get("granularity", "channel") == "channel"
    ref = quantize_float(raw if per_row or kw.get("granularity") == "group" else raw.reshape(1, -1), kw["scheme"], per_row=per_row)
    assert torch.equal(w, ref.dequantize().reshape(w.shape))
    state = pack_state(lin)
    assert torch.equal(unpack_state(state), w)
    bits = kw["bits"]
    assert state["qweight"].numel() == raw.numel() * (4 if bits == 4 else 8) // 8


def test_redundancy_clean_float_files_reload_in_fresh_process(tmp_path):
    model = _fit([WeightQuant(**CASES["nvfp4"]), RedundancyClean(str(tmp_path / "slim"))])
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(5))
    model.eval()
    with torch.no_grad():
        expected = model(x)
    lin = model.net[0]
    w = masking.effective_param(lin, "weight") if masking.is_wrapped(lin) else lin.weight
    torch.save({"x": x, "y": expected, "w": w.detach()}, tmp_path / "io.pt")
    code = f"""
import torch, lightning_compress as lc
io = torch.load({str(tmp_path / 'io.pt')!r})
prog = lc.export.load_program({str(tmp_path / 'slim' / 'model.pt2')!r})
y = prog(io['x'])
assert torch.equal(y, io['y']), (y - io['y']).abs().max()
state = lc.export.load_slim_state({str(tmp_path / 'slim' / 'model.safetensors')!r})
assert torch.equal(state['net.0.weight'], io['w'])
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok" in out.stdout


@pytest.mark.parametrize("kw,match", [
    (dict(bits=8, scheme="nvfp4", granularity="group", group_size=16), "use one of \\[4\\]"),
    (dict(bits=4, scheme="nvfp4"), "pass granularity='group', group_size=16"),
    (dict(bits=4, scheme="mxfp4", granularity="group", group_size=16), "group_size=32"),
    (dict(bits=8, scheme="fp8_e4m3", granularity="group", group_size=32), "per tensor or per output channel"),
    (dict(bits=8, scheme="fp8_e4m3", symmetric=False), "sign-magnitude"),
    (dict(bits=8, scheme="fp9"), "scheme"),
])
def test_bad_float_specs_refused_at_init(kw, match):
    with pytest.raises(ValueError, match=match):
        WeightQuant(**kw)
