"""The fused path's CPU shortcuts that read known bounds and skip passes (``core/fake_quant_fused.py``:
the in-range check from the rows' min / max, the all-zero zero point's ``c * s + 0.0``, the mask written
into the codes' buffer) give the reference bits, values and gradients, sign of zero included: on the
tie-heavy rows of ``test_fake_quant_fused`` with the size threshold lowered, on weights and activations
large enough to take them by default, and through the static ``ActFakeQuant`` in training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_compress.core import fake_quant_fused
from lightning_compress.core.act_quant import ActFakeQuant
from lightning_compress.core.fake_quant import fake_quant_dynamic, fake_quant_static, fake_quant_weight
from lightning_compress.core.quant_grid import QuantSpec, affine_params, fake_quant_rows
from tests.test_fake_quant_fused import _both, _same, _tricky_rows


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("per_tensor", [True, False])
def test_bounds_on_ties_and_clips(monkeypatch, symmetric, bits, per_tensor):
    """Rows full of rounding ties, values on and beyond the clip bounds, ``-0.0``: with ``bounds`` (the
    rows' exact min / max) read at every size, the reference bits; rows shifted inside the range take
    the in-range shortcut from the bounds and still match."""
    monkeypatch.setattr(fake_quant_fused, "BOUNDS_MIN_NUMEL", 0)
    n_rows = 1 if per_tensor else 5
    scale = torch.tensor([0.0371, 1.0, 3e-3, 0.25, 7.77][:n_rows])
    zp = torch.tensor([0, 3, 7, 1, 0][:n_rows], dtype=torch.int32) if not symmetric else torch.zeros(n_rows, dtype=torch.int32)
    rows = _tricky_rows(scale, zp, bits, symmetric)
    inside = rows.clamp(-0.4 * scale.unsqueeze(1) * 2 ** (bits - 1), 0.4 * scale.unsqueeze(1) * (2 ** (bits - 1) - 1))
    for r in (rows, inside.contiguous()):
        def fn(t: torch.Tensor) -> torch.Tensor:
            lo, hi = t.detach().amin(1), t.detach().amax(1)
            bounds = (lo.reshape(()), hi.reshape(())) if per_tensor else (lo, hi)
            return fake_quant_rows(t, scale, zp, bits, symmetric, bounds)

        fused, ref = _both(fn, r, 11, monkeypatch)
        assert _same(fused[0], ref[0]) and _same(fused[1], ref[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_weights_and_activations(monkeypatch, dtype):
    """Weights of 256 x 512 values (per tensor / channel / group, 8 / 4 bits, both symmetries) and
    activations of 2 x 64 x 1024 (static with bounds, dynamic): the reference bits, values and gradients."""
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(256, 512, generator=g) * 0.05).to(dtype)
    w[0, :8] = 0.0
    w[1, :8] = -1e-7  # codes of -0.0
    for spec in [QuantSpec(b, gr, 32 if gr == "group" else None, s) for b in (8, 4) for gr in ("tensor", "channel", "group")
                 for s in (True, False)]:
        fused, ref = _both(lambda t: fake_quant_weight(t, spec), w, 1, monkeypatch)
        assert _same(fused[0], ref[0]) and _same(fused[1], ref[1]), spec
    x = (torch.randn(2, 64, 1024, generator=g) * 1.7).to(dtype)
    x[0, 0, :16] = -1e-6
    for symmetric in (True, False):
        scale, zp = affine_params(torch.tensor([-2.5]), torch.tensor([2.0]), 8, symmetric)  # clips the tails
        for lim in (None, 1.9):  # out of range / all codes in range
            xs = x if lim is None else x.clamp(-lim, lim)

            def static(t: torch.Tensor) -> torch.Tensor:
                bounds = (t.detach().float().amin(), t.detach().float().amax())
                return fake_quant_static(t, scale, zp, 8, symmetric, bounds)

            fused, ref = _both(static, xs, 2, monkeypatch)
            assert _same(fused[0], ref[0]) and _same(fused[1], ref[1]), (symmetric, lim)
        fused, ref = _both(lambda t: fake_quant_dynamic(t, 8, symmetric, (-1,)), x, 3, monkeypatch)
        assert _same(fused[0], ref[0]) and _same(fused[1], ref[1]), symmetric


def test_static_act_quant_training_steps(monkeypatch):
    """``ActFakeQuant`` static in training (the EMA hands its batch min / max on as bounds), three
    batches of 2 x 64 x 1024: outputs, input gradients and learned ranges are the reference bits."""

    def run(enabled: bool) -> list[torch.Tensor]:
        monkeypatch.setattr(fake_quant_fused, "ENABLED", enabled)
        mod = nn.Linear(1024, 4).train()
        ActFakeQuant.init_buffers(mod)
        q = ActFakeQuant(8, symmetric=True, range="static")
        g = torch.Generator().manual_seed(4)
        got = []
        for i in range(3):
            x = (torch.randn(2, 64, 1024, generator=g) * (1 + i)).requires_grad_()
            y = q(mod, x)
            (y * torch.randn(y.shape, generator=g)).sum().backward()
            got += [y.detach(), x.grad]
        return got + [b.clone().float() for b in mod.buffers()]  # lo, hi, init

    fused, ref = run(True), run(False)
    assert len(fused) == len(ref) == 9
    for a, b in zip(fused, ref):
        assert _same(a, b)
