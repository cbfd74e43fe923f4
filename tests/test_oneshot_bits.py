"""GPTQ / RTN at 5, 6 and 7 bits: on the grid, below RTN's error, stored and exported exactly."""

from __future__ import annotations

import pytest
import torch

from lightning_compress.core import masking
from lightning_compress.core.bit_packing import pack_bits, unpack_bits
from lightning_compress.core.quantize import unpack_model
from lightning_compress.export import clean_for_storage
from lightning_compress.oneshot import GPTQ, RTN, oneshot
from tests.oneshot_models import calib, tiny


def effective(model):
    return {n: masking.effective_param(m, "weight").detach().clone() for n, m in model.named_modules() if masking.is_wrapped(m)}


def mean_error(report):
    return sum(r.output_error for r in report.layers) / len(report.layers)


@pytest.mark.parametrize("bits", [5, 6, 7])
def test_gptq_5_to_7_bits(bits):
    data = calib()
    e_rtn = mean_error(oneshot(tiny("llama"), [RTN(bits, 32)], data))
    model = tiny("llama")
    e_gptq = mean_error(oneshot(model, [GPTQ(bits, 32)], data))
    assert e_gptq < e_rtn, (bits, e_gptq, e_rtn)
    eff = effective(model)
    for name, m in model.named_modules():
        if name in eff:  # the stored weight is a fixed point of its quantizer
            assert torch.equal(eff[name].float(), m.weight.detach().float()), name
    _, packed, _ = clean_for_storage(model)
    deq = unpack_model(packed)
    for name, w in eff.items():
        assert torch.equal(deq[f"{name}.weight"], w), name
    q = packed["model.layers.0.mlp.down_proj.weight.qweight"]
    assert q.dtype == torch.uint8 and q.numel() == model.model.layers[0].mlp.down_proj.weight.numel()  # a code a byte


def test_byte_containers_round_trip():
    for bits in (5, 6, 7):
        codes = torch.randint(0, 2**bits, (37,), dtype=torch.int32)
        assert torch.equal(unpack_bits(pack_bits(codes, bits), bits, 37).to(torch.int32), codes)


def test_compressed_tensors_6_bits(tmp_path):
    pytest.importorskip("compressed_tensors")
    from lightning_compress.oneshot.compressed_tensors import load_compressed_tensors, save_compressed_tensors

    model, data = tiny("llama"), calib()
    oneshot(model, [GPTQ(6, 32, symmetric=False)], data)
    eff = effective(model)
    info = save_compressed_tensors(model, tmp_path)
    assert info["format"] == "pack-quantized"
    sd = load_compressed_tensors(tmp_path).state_dict()
    for name, w in eff.items():  # compressed-tensors' own decompression gives exactly our weights
        assert torch.equal(sd[f"{name}.weight"].float(), w.float()), name
