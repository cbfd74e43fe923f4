"""Export of one-shot compressed models in the compressed-tensors format, read back by that package."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("compressed_tensors")

from safetensors import safe_open  # noqa: E402

from lightning_compress.core import masking  # noqa: E402
from lightning_compress.oneshot import GPTQ, SmoothQuant, SparseGPT, oneshot  # noqa: E402
from lightning_compress.oneshot.compressed_tensors import load_compressed_tensors, save_compressed_tensors  # noqa: E402
from tests.oneshot_models import calib, tiny  # noqa: E402


def effective(model):
    return {n: masking.effective_param(m, "weight").detach().clone() for n, m in model.named_modules() if masking.is_wrapped(m)}


@pytest.mark.parametrize("methods,fmt,stored", [
    (lambda: [SparseGPT(None, "2:4"), GPTQ(4, 32)], "pack-quantized", "weight_packed"),
    (lambda: [GPTQ(4, 32, symmetric=False)], "pack-quantized", "weight_packed"),
    (lambda: [GPTQ(8, None)], "pack-quantized", "weight_packed"),
    (lambda: [SmoothQuant(0.5)], "int-quantized", "weight"),
])
def test_round_trip(tmp_path, methods, fmt, stored):
    model, data = tiny("llama"), calib()
    oneshot(model, methods(), data)
    eff = effective(model)
    info = save_compressed_tensors(model, tmp_path)
    assert info["format"] == fmt and len(info["modules"]) == 14
    cfg = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors" and cfg["format"] == fmt
    with safe_open(str(next(tmp_path.glob("*.safetensors"))), "pt") as f:
        keys = set(f.keys())
        q = f.get_tensor(f"model.layers.0.mlp.down_proj.{stored}")
    assert "model.layers.0.mlp.down_proj.weight_scale" in keys
    assert q.dtype in (torch.int32, torch.int8)  # integers on disk, not floats
    back = load_compressed_tensors(tmp_path)
    sd = back.state_dict()
    for name, w in eff.items():  # compressed-tensors' own decompression gives exactly our weights
        assert torch.equal(sd[f"{name}.weight"].float(), w.float()), name
    if fmt == "pack-quantized":  # weight-only: the whole model computes the same
        with torch.no_grad():
            assert torch.allclose(back(data[0]).logits, model(data[0]).logits, atol=1e-5)


def test_refuses_conv1d_and_unquantized(tmp_path):
    gpt2 = tiny("gpt2")
    oneshot(gpt2, [GPTQ(4, 32)], calib(2))
    with pytest.raises(ValueError, match="stores quantized nn.Linear layers only"):
        save_compressed_tensors(gpt2, tmp_path)
    with pytest.raises(ValueError, match="no quantized nn.Linear"):
        save_compressed_tensors(tiny("llama"), tmp_path)
