"""The fused fake-quant path (``core/fake_quant_fused.py``) is bit for bit (sign of zero included) the
reference ops: ``torch.fake_quantize_per_{tensor,channel}_affine`` and the autograd-recorded clips /
straight-through it replaces, values and gradients, on inputs full of rounding ties, clip-bound ties,
clipped values and ``-0.0`` codes; tracing keeps the reference ops (ONNX QDQ)."""

from __future__ import annotations

import pytest
import torch

from lightning_compress.core import fake_quant_fused
from lightning_compress.core.fake_quant import fake_quant_dynamic, fake_quant_static, fake_quant_weight
from lightning_compress.core.quant_grid import affine_params, fake_quant_rows, qrange
from tests.test_qat_exact import SPECS  # the 80 weight specs of the frozen reference


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _run(fn, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.dtype)
    (y * g).sum().backward()
    return y.detach(), x.grad


def _both(fn, x: torch.Tensor, seed: int, monkeypatch) -> tuple[tuple, tuple]:
    """(fused, reference) value and gradient of ``fn`` at ``x``."""
    monkeypatch.setattr(fake_quant_fused, "ENABLED", True)
    fused = _run(fn, x, seed)
    monkeypatch.setattr(fake_quant_fused, "ENABLED", False)
    ref = _run(fn, x, seed)
    monkeypatch.setattr(fake_quant_fused, "ENABLED", True)
    return fused, ref


def _tricky_rows(scale: torch.Tensor, zp: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """Per row: exact rounding ties ``(k + 0.5) * scale`` and their float neighbours, the sub-8-bit clip
    bounds ``lo_v`` / ``hi_v`` exactly, values beyond them, zeros, ``-0.0`` and tiny negatives."""
    qmin, qmax = qrange(bits, symmetric)
    s = scale.unsqueeze(1)
    k = torch.arange(qmin - 3, qmax + 3, dtype=torch.float32).unsqueeze(0) - zp.unsqueeze(1).float()
    ties = (k + 0.5) * s
    lo_v = ((qmin - 0.49 - zp).float() * scale).unsqueeze(1)
    hi_v = ((qmax + 0.49 - zp).float() * scale).unsqueeze(1)
    specials = torch.cat([lo_v, hi_v, lo_v * 3, hi_v * 3, torch.zeros_like(lo_v), -torch.zeros_like(lo_v), -1e-3 * s, 1e-3 * s], 1)
    rows = torch.cat([ties, torch.nextafter(ties, ties + 1), torch.nextafter(ties, ties - 1), specials], 1)
    return rows.contiguous()


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("per_tensor", [True, False])
def test_fake_quant_rows_fused_is_the_reference_bit_for_bit(monkeypatch, symmetric, bits, per_tensor):
    n_rows = 1 if per_tensor else 5
    scale = torch.tensor([0.0371, 1.0, 3e-3, 0.25, 7.77][:n_rows])
    zp = torch.tensor([0, 3, 7, 1, 0][:n_rows], dtype=torch.int32) if not symmetric else torch.zeros(n_rows, dtype=torch.int32)
    rows = _tricky_rows(scale, zp, bits, symmetric)
    fused, ref = _both(lambda r: fake_quant_rows(r, scale, zp, bits, symmetric), rows, 7, monkeypatch)
    assert _same(fused[0], ref[0]) and _same(fused[1], ref[1])
    assert (ref[1] == 0).any() and (ref[1] != 0).any()  # clipped and passed values both present
    if bits < 8:  # a value exactly on a clip bound gets half the gradient (minimum / maximum ties)
        g = torch.randn(ref[0].shape, generator=torch.Generator().manual_seed(7))
        assert (ref[1] == g / 2).any()
    with torch.no_grad():  # the mask-free path gives the same values
        monkeypatch.setattr(fake_quant_fused, "ENABLED", True)
        assert _same(fake_quant_rows(rows, scale, zp, bits, symmetric), ref[0])




@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_fused_is_the_reference_bit_for_bit(monkeypatch, dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 16, generator=g) * 0.1
    w[0, :4] = 0.0
    w[0, 4:6] = -1e-6  # codes of -0.0
    w[1] = 0.0
    w[2, 3] = 1.5
    w = w.to(dtype)
    for spec in SPECS:
        fused, ref = _both(lambda t: fake_quant_weight(t, spec), w, 1, monkeypatch)
        assert _same(fused[0], ref[0]) and _same(fused[1], ref[1]), spec


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [8, 4])
def test_activation_fused_is_the_reference_bit_for_bit(monkeypatch, dtype, symmetric, bits):
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(3)) * 2
    x[0, 1] = 0.0
    x[1, 2, :5] = -1e-7  # -0.0 codes
    x[1, 3] = (torch.arange(16) - 8.0 + 0.5) * (2.1 / 127)  # rounding ties of the static grid
    x = x.to(dtype)
    for dims in ((-1,), (1, 2)):
        fused, ref = _both(lambda t: fake_quant_dynamic(t, bits, symmetric, dims), x, 2, monkeypatch)
        assert _same(fused[0], ref[0]) and _same(fused[1], ref[1]), dims
    scale, zp = affine_params(torch.tensor([-1.3]), torch.tensor([2.1]), bits, symmetric)
    fused, ref = _both(lambda t: fake_quant_static(t, scale, zp, bits, symmetric), x, 4, monkeypatch)
    assert _same(fused[0], ref[0]) and _same(fused[1], ref[1])


def test_tracing_records_the_reference_ops():
    """Under ``torch.jit.trace`` (the ONNX exporter) the graph holds ``fake_quantize`` (QDQ), not the chain."""
    scale, zp = torch.tensor([0.05]), torch.tensor([0], dtype=torch.int32)
    traced = torch.jit.trace(lambda x: fake_quant_static(x, scale, zp, 8, True), torch.randn(3, 4))
    assert "fake_quantize_per_tensor_affine" in str(traced.graph)
    assert fake_quant_fused.fast_path()


def test_nan_stays_nan():
    """The documented deviation: a NaN input gives NaN (the old kernel's int cast made it qmin * scale)."""
    x = torch.tensor([[0.5, float("nan"), -0.2]])
    out = fake_quant_static(x, torch.tensor([0.01]), torch.tensor([0], dtype=torch.int32), 8, True)
    assert torch.isnan(out[0, 1]) and not torch.isnan(out[0, [0, 2]]).any()


@pytest.mark.parametrize("autocast", [False, True])
def test_training_steps_bit_identical(monkeypatch, autocast):
    """Four AdamW steps of a small MLP under W4 group + W8 channel + A8 static / A4 dynamic quantizers:
    the parameters and the learned static ranges are the same bits with the fused path and the reference."""
    from torch import nn

    from lightning_compress.core.act_quant import HI, LO
    from lightning_compress.core.act_quantizer import ActQuantizer
    from lightning_compress.core.weight_quantizer import WeightQuantizer

    def train(enabled: bool) -> dict[str, torch.Tensor]:
        monkeypatch.setattr(fake_quant_fused, "ENABLED", enabled)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        WeightQuantizer(model, bits=4, granularity="group", group_size=8, modules=["0"])
        WeightQuantizer(model, bits=8, granularity="channel", modules=["2"])
        ActQuantizer(model, bits=8, range="static", modules=["0", "2"])
        ActQuantizer(model, bits=4, range="dynamic", symmetric=False, modules=["4"])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            x = torch.randn(8, 16, generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = model(x).float().pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state.update({f"{i}.{n}": getattr(model[i], n).clone() for i in (0, 2) for n in (LO, HI)})
        return state

    fused, ref = train(True), train(False)
    assert fused.keys() == ref.keys()
    for k in ref:
        assert _same(fused[k], ref[k]), k
