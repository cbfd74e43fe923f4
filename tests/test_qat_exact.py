"""The fake quantizers give bit-identical values and straight-through gradients to a frozen reference
copy of their formulas (as they were before the speed-ups of issue 17): weights per tensor / channel /
group / row_block, symmetric and asymmetric, 8 / 4 / 3 bits, ternary / binary, both schemes;
activations static (with its EMA range) and dynamic per token / per image; fp32 and bf16 (autocast)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_compress.core.act_quant import HI, INIT, LO, ActFakeQuant
from lightning_compress.core.fake_quant import fake_quant_dynamic, fake_quant_static, fake_quant_weight
from lightning_compress.core.quant_grid import QuantSpec


# ----------------------------------------------------------------------------- reference (frozen copy)
def _qrange(bits, symmetric):
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def _as_rows(w, spec):
    if spec.granularity == "tensor":
        return w.reshape(1, -1)
    if spec.granularity == "row_block":
        return w.reshape(spec.groups, -1)
    w2 = w.reshape(w.shape[0], -1)
    return w2 if spec.granularity == "channel" else w2.reshape(-1, spec.group_size)


def _affine_params(lo, hi, bits, symmetric):
    lo, hi = lo.detach().float(), hi.detach().float()
    qmin, qmax = _qrange(bits, symmetric)
    if symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / qmax
        zp = torch.zeros_like(scale, dtype=torch.int32)
    else:
        lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
        scale = (hi - lo) / (qmax - qmin)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = torch.clamp(torch.round(-lo / safe), qmin, qmax).to(torch.int32)
    return torch.where(scale > 0, scale, torch.ones_like(scale)), zp


def _fake_quant_rows(rows, scale, zp, bits, symmetric):
    qmin, qmax = _qrange(bits, symmetric)
    if bits < 8:
        lo_v = ((qmin - 0.49 - zp).float() * scale).unsqueeze(1)
        hi_v = ((qmax + 0.49 - zp).float() * scale).unsqueeze(1)
        rows = torch.maximum(torch.minimum(rows, hi_v), lo_v)
    q8min, q8max = _qrange(8, symmetric)
    if rows.shape[0] == 1:
        return torch.fake_quantize_per_tensor_affine(rows, scale.reshape(()), zp.reshape(()), q8min, q8max)
    return torch.fake_quantize_per_channel_affine(rows, scale, zp, 0, q8min, q8max)


def _ste(w, q):
    return q.detach() + (w - w.detach())


def _ref_weight(w, spec):
    rows = _as_rows(w, spec).float()
    if spec.bits == 2:
        a = rows.detach().float().abs()
        keep = a > 0.7 * a.mean(1, keepdim=True)
        alpha = (a * keep).sum(1) / keep.sum(1).clamp_min(1)
        out = _ste(rows, torch.sign(rows.detach().float()) * keep * alpha.unsqueeze(1))
    elif spec.bits == 1:
        r = rows.detach().float()
        codes = torch.where(r >= 0, torch.ones_like(r), -torch.ones_like(r))
        out = _ste(rows, codes * r.abs().mean(1).unsqueeze(1))
    elif spec.scheme == "deepspeed":
        lo, hi = rows.detach().float().amin(1), rows.detach().float().amax(1)
        levels = 2**spec.bits
        if spec.symmetric:
            scale = 2 * torch.maximum(lo.abs(), hi.abs()) / levels
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            zp, qmin, qmax = torch.zeros_like(scale, dtype=torch.int32), -(levels // 2), levels // 2 - 1
        else:
            scale = (hi - lo) / levels
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            zp, qmin, qmax = (-torch.round(lo / scale)).to(torch.int32), 0, levels - 1
        s = scale.unsqueeze(1)
        q = torch.clamp(torch.round((rows.detach().float() + zp.unsqueeze(1).float() * s) / s), qmin, qmax)
        out = _ste(rows, q * s - zp.unsqueeze(1).float() * s)
    else:
        r = rows.detach().float()
        scale, zp = _affine_params(r.amin(1), r.amax(1), spec.bits, spec.symmetric)
        out = _fake_quant_rows(rows, scale, zp, spec.bits, spec.symmetric)
    return out.reshape(w.shape).to(w.dtype)


def _ref_dynamic(x, bits, symmetric, dims):
    xf = x.float()
    lo, hi = xf.detach().amin(dim=dims, keepdim=True), xf.detach().amax(dim=dims, keepdim=True)
    qmin, qmax = _qrange(bits, symmetric)
    if symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / qmax
        zp = torch.zeros_like(scale)
    else:
        lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
        scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if not symmetric:
        zp = torch.clamp(torch.round(-lo / scale), qmin, qmax)
    q = torch.clamp(torch.round(xf / scale) + zp, qmin, qmax)
    return _ste(xf, (q - zp) * scale).to(x.dtype)


def _ref_static(x, lo, hi, bits, symmetric):
    scale, zp = _affine_params(lo.reshape(1), hi.reshape(1), bits, symmetric)
    rows = x.float().reshape(1, -1)
    return _fake_quant_rows(rows, scale.reshape(1).float(), zp.reshape(1).to(torch.int32), bits, symmetric).reshape(x.shape).to(x.dtype)


# ----------------------------------------------------------------------------- helpers
def _value_and_grad(fn, x, seed):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.dtype)
    (y * g).sum().backward()
    return y.detach(), x.grad


def _weight(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, 16, generator=g) * 0.1
    w[0, :4] = 0.0  # ties and zero rows
    w[1] = 0.0
    w[2, 3] = 1.5  # an outlier (clipped at 3/4 bits by other rows' ranges in per-tensor)
    return w.to(dtype)


SPECS = [
    QuantSpec(bits=b, granularity=g, symmetric=s, group_size=8 if g == "group" else None, groups=4 if g == "row_block" else None, scheme=sc)
    for b in (8, 4, 3, 2, 1)
    for g in ("tensor", "channel", "group", "row_block")
    for s in (True, False)
    for sc in ("affine", "deepspeed")
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_fake_quant_bit_identical(dtype):
    for spec in SPECS:
        w = _weight(dtype)
        y_new, g_new = _value_and_grad(lambda t: fake_quant_weight(t, spec), w, 1)
        y_ref, g_ref = _value_and_grad(lambda t: _ref_weight(t, spec), w, 1)
        assert y_new.dtype == y_ref.dtype == dtype, spec
        assert torch.equal(y_new, y_ref), spec
        assert torch.equal(g_new, g_ref), spec
        assert g_new.abs().sum() > 0, spec  # a gradient flows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [8, 4])
def test_activation_fake_quant_bit_identical(dtype, symmetric, bits):
    x = (torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(3)) * 2).to(dtype)
    x[0, 1] = 0.0  # a zero token
    for dims in ((-1,), (1, 2)):
        got = _value_and_grad(lambda t: fake_quant_dynamic(t, bits, symmetric, dims), x, 2)
        ref = _value_and_grad(lambda t: _ref_dynamic(t, bits, symmetric, dims), x, 2)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), dims
    lo, hi = torch.tensor(-1.3), torch.tensor(2.1)
    scale, zp = _affine_params_new(lo, hi, bits, symmetric)
    got = _value_and_grad(lambda t: fake_quant_static(t, scale, zp, bits, symmetric), x, 4)
    ref = _value_and_grad(lambda t: _ref_static(t, lo, hi, bits, symmetric), x, 4)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    assert (ref[1] == 0).any() and (ref[1] != 0).any()  # clipped values get no gradient, others do


def _affine_params_new(lo, hi, bits, symmetric):
    from lightning_compress.core.quant_grid import affine_params

    return affine_params(lo.reshape(1), hi.reshape(1), bits, symmetric)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
def test_act_fake_quant_static_module_matches_reference(autocast, symmetric):
    """Three training calls (first range, then EMA updates) and one eval call on a Linear's input,
    with the range buffers, values and input gradients compared to the reference EMA + formula."""
    lin = nn.Linear(16, 4)
    ActFakeQuant.init_buffers(lin)
    q = ActFakeQuant(bits=8, symmetric=symmetric, range="static", momentum=0.9)
    lo_r = hi_r = None
    for i, training in enumerate((True, True, True, False)):
        lin.train(training)
        x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(10 + i)) * (1 + i)
        if autocast:
            x = x.to(torch.bfloat16)
        if training:
            b_lo, b_hi = x.float().amin(), x.float().amax()
            if lo_r is None:
                lo_r, hi_r = b_lo.clone(), b_hi.clone()
            else:
                lo_r = lo_r.mul(0.9).add((1 - 0.9) * b_lo)
                hi_r = hi_r.mul(0.9).add((1 - 0.9) * b_hi)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            got = _value_and_grad(lambda t: q(lin, t), x, 20 + i)
            ref = _value_and_grad(lambda t: _ref_static(t, lo_r, hi_r, 8, symmetric), x, 20 + i)
        assert bool(getattr(lin, INIT))
        assert torch.equal(getattr(lin, LO), lo_r) and torch.equal(getattr(lin, HI), hi_r), i
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), i


def test_no_grad_cache_reuses_until_the_weight_changes():
    """Evaluation pays weight fake-quant once: the same tensor comes back while the parameter is
    unchanged; an in-place write, an optimizer step or a new width recomputes it (values as fresh)."""
    from lightning_compress.core.fake_quant import WeightFakeQuant

    lin = nn.Linear(16, 8)
    q = WeightFakeQuant(QuantSpec(bits=8, granularity="channel"))
    with torch.no_grad():
        a = q(lin, lin.weight)
        assert q(lin, lin.weight) is a
        assert q(lin, lin.weight * 1.0) is not a  # not the parameter itself (a masked copy): never cached
        lin.weight.mul_(2.0)  # in-place write: new _version
        b = q(lin, lin.weight)
        assert b is not a and torch.equal(b, _ref_weight(lin.weight, q.spec))
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    lin(torch.randn(2, 16)).sum().backward()
    with torch.no_grad():
        before = q(lin, lin.weight)
    opt.step()  # counted by the optimizer step hook even if the version check were fooled
    with torch.no_grad():
        c = q(lin, lin.weight)
        assert c is not before and torch.equal(c, _ref_weight(lin.weight, q.spec))
        q.bits = 4
        d = q(lin, lin.weight)
        assert torch.equal(d, _ref_weight(lin.weight, QuantSpec(bits=4, granularity="channel")))
    y = q(lin, lin.weight)  # with grad: never from the cache, gradient flows
    assert y.requires_grad and y is not d
