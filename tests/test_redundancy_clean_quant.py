"""RedundancyClean with quantized weights: real low-bit storage after structured + sparse pruning."""

from __future__ import annotations

import pytest
import torch

from lightning_compress import RedundancyClean, RowPruning, SparsePruning
from lightning_compress.callbacks.weight_quant import WeightQuant
from lightning_compress.export import load_slim_state, save_slim
from tests.models import TinyMLP, cpu_trainer, mlp_loader
from tests.test_redundancy_clean import run_fresh


class WideMLP(TinyMLP):
    def __init__(self) -> None:
        super().__init__(hidden=256)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_rows_pruned_model_is_stored_in_low_bits(tmp_path, bits):
    torch.manual_seed(0)
    model = WideMLP()
    dense_dir = tmp_path / "dense"
    save_slim(model, dense_dir, formats=("safetensors",))
    rc = RedundancyClean(tmp_path / "slim", latency_runs=0)
    callbacks = [
        RowPruning(sparsity=0.5, end_step=2, modules=[r"^net\.0$"]),
        SparsePruning(sparsity=0.5, pattern="2:4", end_step=2, modules=[r"^net\.2$"]),
        WeightQuant(bits=bits, granularity="channel", modules=[r"^net\.0$", r"^net\.2$"]),
        rc,
    ]
    trainer = cpu_trainer(max_steps=4, callbacks=callbacks)
    trainer.fit(model, mlp_loader())
    x = torch.randn(5, 16)
    model.eval()
    with torch.no_grad():
        masked_quantized = model(x)
        slim_out = rc.slim_model(x)
    torch.testing.assert_close(slim_out, masked_quantized, atol=1e-5, rtol=1e-4)
    # net.0 lost half its rows, and net.2 half its input columns
    assert rc.slim_model.net[0].out_features == 128 and rc.slim_model.net[2].in_features == 128
    # the safetensors file holds packed integers, not float copies, and reloads to the same model
    state = load_slim_state(tmp_path / "slim" / "model.safetensors")
    fresh = WideMLP()
    fresh.net[0] = torch.nn.Linear(16, 128)
    fresh.net[2] = torch.nn.Linear(128, 256)
    fresh.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), masked_quantized, atol=1e-5, rtol=1e-4)
    from safetensors.torch import load_file

    raw = load_file(str(tmp_path / "slim" / "model.safetensors"))
    assert "net.0.weight" not in raw and "lc_packed.net.0.weight.qweight" in raw
    quantized_fp32 = (128 * 16 + 256 * 128) * 4
    packed_bytes = raw["lc_packed.net.0.weight.qweight"].numel() + raw["lc_packed.net.2.weight.qweight"].numel()
    assert packed_bytes == quantized_fp32 * bits / 32
    dense = (dense_dir / "model.safetensors").stat().st_size
    slim = (tmp_path / "slim" / "model.safetensors").stat().st_size
    assert slim < dense * (0.5 * bits / 32 + 0.08)
    # the torch.export program holds integer codes too, and runs without our code
    pt2 = tmp_path / "slim" / "model.pt2"
    loaded = run_fresh(tmp_path, pt2, x)
    torch.testing.assert_close(loaded, masked_quantized, atol=1e-5, rtol=1e-4)
    assert pt2.stat().st_size < dense * 0.6
