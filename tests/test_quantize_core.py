"""Properties of the fake quantizers, observers and bit packing (lightning_compress.core.quantize)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_compress.core import masking
from lightning_compress.core.quantize import (
    QuantSpec,
    RangeObserver,
    WeightFakeQuant,
    affine_params,
    as_rows,
    fake_quant_dynamic,
    fake_quant_static,
    fake_quant_weight,
    pack_bits,
    pack_model,
    pack_state,
    pack_weight,
    packed_nbytes,
    qrange,
    quantize_weight_int,
    unpack_bits,
    unpack_model,
    unpack_state,
)

FAST = settings(max_examples=25, deadline=None)

shapes = st.tuples(st.integers(1, 6), st.sampled_from([4, 8, 12]))
seeds = st.integers(0, 2**16)
affine_bits = st.sampled_from([8, 4, 3])
grans = st.sampled_from(["tensor", "channel", "group"])


def _w(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


@FAST
@given(shapes, seeds, affine_bits, grans, st.booleans())
def test_affine_values_on_grid(shape, seed, bits, gran, sym):
    w = _w(shape, seed)
    spec = QuantSpec(bits, gran, 4, sym)
    fq = fake_quant_weight(w, spec)
    q, scale, zp = quantize_weight_int(w, spec)
    qmin, qmax = qrange(bits, sym)
    assert q.min() >= qmin and q.max() <= qmax
    rows = as_rows(fq, gran, 4)
    zp_ = zp if zp is not None else torch.zeros_like(scale)
    k = rows / scale[:, None] + zp_[:, None]
    # every value is (integer - zp) * scale with the integer in the b-bit range
    assert torch.allclose(k, k.round(), atol=1e-3)
    assert k.round().min() >= qmin and k.round().max() <= qmax
    # the dequantized integer codes are the fake-quant values
    assert torch.allclose(((q - zp_[:, None]) * scale[:, None]).reshape(w.shape), fq, atol=1e-6)
    # quantization error at most half a step (minmax: no clipping)
    assert ((fq - w).abs().reshape(rows.shape) <= scale[:, None] / 2 + 1e-6).all()


@FAST
@given(shapes, seeds, affine_bits, grans)
def test_symmetric_scale_and_zero_point(shape, seed, bits, gran):
    w = _w(shape, seed)
    _, scale, zp = quantize_weight_int(w, QuantSpec(bits, gran, 4, True))
    assert zp is None
    amax = as_rows(w, gran, 4).abs().amax(1)
    assert torch.allclose(scale, amax / (2 ** (bits - 1) - 1))


@FAST
@given(shapes, seeds, affine_bits, grans, st.floats(-3, 3))
def test_asymmetric_scale_and_zero_point(shape, seed, bits, gran, shift):
    w = _w(shape, seed) + shift
    _, scale, zp = quantize_weight_int(w, QuantSpec(bits, gran, 4, False))
    rows = as_rows(w, gran, 4)
    lo, hi = rows.amin(1).clamp(max=0), rows.amax(1).clamp(min=0)
    assert torch.allclose(scale, (hi - lo) / (2**bits - 1))
    assert torch.equal(zp.long(), torch.round(-lo / scale).clamp(0, 2**bits - 1).long())
    # zero is exactly representable
    assert torch.allclose((0 - zp) * scale + zp * scale, torch.zeros_like(scale))


def test_per_channel_and_group_scales_are_independent():
    w = torch.ones(3, 8)
    w[1] *= 10
    w[2, :4] *= 100
    _, s_ch, _ = quantize_weight_int(w, QuantSpec(8, "channel"))
    assert torch.allclose(s_ch, torch.tensor([1.0, 10.0, 100.0]) / 127)
    _, s_g, _ = quantize_weight_int(w, QuantSpec(8, "group", 4))
    assert torch.allclose(s_g, torch.tensor([1.0, 1, 10, 10, 100, 1]) / 127)
    _, s_t, _ = quantize_weight_int(w, QuantSpec(8, "tensor"))
    assert s_t.shape == (1,) and torch.allclose(s_t, torch.tensor([100.0 / 127]))


@FAST
@given(shapes, seeds, grans)
def test_ternary_set_and_twn_scaling(shape, seed, gran):
    w = _w(shape, seed)
    fq = fake_quant_weight(w, QuantSpec(2, gran, 4))
    rows_w, rows_q = as_rows(w, gran, 4), as_rows(fq, gran, 4)
    for rw, rq in zip(rows_w, rows_q):
        delta = 0.7 * rw.abs().mean()
        keep = rw.abs() > delta
        alpha = rw.abs()[keep].mean() if keep.any() else torch.tensor(0.0)
        vals = rq.unique()
        assert vals.numel() <= 3 and (vals.abs().unique().numel() <= 2)
        assert torch.allclose(rq, torch.sign(rw) * keep * alpha, atol=1e-6)


@FAST
@given(shapes, seeds, grans)
def test_binary_set_and_xtc_scaling(shape, seed, gran):
    w = _w(shape, seed)
    fq = fake_quant_weight(w, QuantSpec(1, gran, 4))
    for rw, rq in zip(as_rows(w, gran, 4), as_rows(fq, gran, 4)):
        alpha = rw.abs().mean()
        assert torch.allclose(rq.abs(), alpha.expand_as(rq), atol=1e-6)
        assert torch.equal(rq >= 0, rw >= 0)


@pytest.mark.parametrize("bits", [8, 4, 3, 2, 1])
def test_ste_passes_gradient(bits):
    w = torch.randn(4, 8, requires_grad=True)
    fake_quant_weight(w, QuantSpec(bits, "channel")).sum().backward()
    # minmax ranges: nothing is clipped, the gradient is the identity's
    assert torch.equal(w.grad, torch.ones_like(w))
    x = torch.randn(2, 3, 8, requires_grad=True)
    fake_quant_dynamic(x, 8, True, (-1,)).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_clipped_values_get_no_gradient():
    x = torch.tensor([-5.0, 0.1, 0.5, 5.0], requires_grad=True)
    scale, zp = affine_params(torch.tensor([-1.0]), torch.tensor([1.0]), 8, True)
    out = fake_quant_static(x, scale, zp, 8, True)
    out.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert out[0].item() == pytest.approx(-128 / 127) and out[3].item() == pytest.approx(1.0)


@FAST
@given(st.integers(1, 5), st.integers(2, 9), seeds, st.booleans())
def test_dynamic_per_token_ranges(batch, dim, seed, sym):
    x = _w((batch, 3, dim), seed)
    x[0, 0] *= 100  # one loud token must not change the others' scale
    out = fake_quant_dynamic(x, 8, sym, (-1,))
    quiet = fake_quant_dynamic(x[:, 1:], 8, sym, (-1,))
    assert torch.equal(out[:, 1:], quiet)
    if sym:
        step = x.abs().amax(-1) / 127
    else:
        step = (x.amax(-1).clamp(min=0) - x.amin(-1).clamp(max=0)) / 255
    assert ((out - x).abs() <= step[..., None] / 2 * (1 + 1e-4) + 1e-6).all()


@FAST
@given(st.sampled_from([8, 4, 3, 2, 1]), st.integers(1, 70), seeds)
def test_pack_unpack_bits_roundtrip(bits, n, seed):
    cb = {8: 8, 4: 4, 3: 4, 2: 2, 1: 1}[bits]
    codes = torch.randint(0, 2 ** min(bits, cb), (n,), generator=torch.Generator().manual_seed(seed)).to(torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n * cb // 8)
    assert torch.equal(unpack_bits(packed, bits, n), codes)


@FAST
@given(shapes, seeds, st.sampled_from([8, 4, 3, 2, 1]), grans, st.booleans())
def test_pack_weight_roundtrip_equals_fake_quant(shape, seed, bits, gran, sym):
    w = _w(shape, seed)
    spec = QuantSpec(bits, gran, 4, sym)
    state = pack_weight(w, spec)
    assert torch.equal(unpack_state(state), fake_quant_weight(w, spec))
    if bits == 8 and sym:
        assert state["qweight"].dtype == torch.int8
    else:
        assert state["qweight"].dtype == torch.uint8
    assert ("zero_point" in state) == (not sym and bits > 2)


@pytest.mark.parametrize("bits,ratio", [(8, 4), (4, 8), (2, 16), (1, 32)])
def test_packed_size_by_bits(bits, ratio):
    w = torch.randn(64, 1024)
    state = pack_weight(w, QuantSpec(bits, "channel"))
    fp32 = w.numel() * 4
    # integer payload is exactly 1/ratio of fp32; per-row fp32 scales + metadata add a few %
    assert state["qweight"].numel() * state["qweight"].element_size() * ratio == fp32
    assert packed_nbytes(state) < fp32 / ratio * 1.05


def test_pack_state_applies_mask_first_and_documents_keys():
    lin = nn.Linear(8, 4)
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[:, :4] = False
    lin.register_buffer("m", mask, persistent=False)
    masking.add_param_transform(lin, "weight", "pruner", masking.mask_transform("m"), kind="mask", priority=masking.MASK_PRIORITY)
    q = WeightFakeQuant(QuantSpec(4, "channel", None, False))
    masking.add_param_transform(lin, "weight", "quant", q, kind="weight_quant", priority=masking.QUANT_PRIORITY)
    state = pack_state(lin)
    assert set(state) == {"qweight", "scale", "zero_point", "meta"}
    w = unpack_state(state)
    assert torch.equal(w[:, :4], torch.zeros(4, 4))
    assert torch.equal(w, masking.effective_param(lin, "weight"))
    assert state["meta"].tolist() == [1, 4, 1, 0, 0, 2, 4, 8]


def test_pack_state_without_quantizer_raises():
    with pytest.raises(ValueError, match="carries no 'weight_quant' transform"):
        pack_state(nn.Linear(2, 2))


def test_spec_validation_messages():
    with pytest.raises(ValueError, match=r"`bits`=5 is not a supported bit width"):
        QuantSpec(5).validate()
    with pytest.raises(ValueError, match="granularity='group' needs a positive integer `group_size`"):
        QuantSpec(8, "group", None).validate()
    with pytest.raises(ValueError, match="`granularity`='row'"):
        QuantSpec(8, "row").validate()  # type: ignore[arg-type]


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_observers(observer):
    torch.manual_seed(0)
    obs = RangeObserver(observer, 8, False)
    for i in range(4):
        x = torch.randn(5000)
        if i == 0:
            x[0] = 50.0  # one outlier in 20000 values
        obs.update(x)
    lo, hi = obs.compute()
    assert lo < 0 < hi and hi <= 50.0
    if observer == "minmax":
        assert hi == 50.0
    else:  # clipping observers cut the outlier
        assert hi < 50.0
    # weight observers: clipping never widens the range
    w = torch.randn(4, 64)
    for obs_name in ("percentile", "mse"):
        q = WeightFakeQuant(QuantSpec(4, "channel"), observer=obs_name)
        q.calibrate(w)
        assert q.ranges is not None and (q.ranges[1].abs() <= w.abs().amax(1) + 1e-6).all()


def test_empty_observer_raises():
    with pytest.raises(ValueError, match="saw no value"):
        RangeObserver("minmax").compute()


def test_bf16_weight_keeps_dtype():
    w = torch.randn(4, 8, dtype=torch.bfloat16)
    out = fake_quant_weight(w, QuantSpec(8, "channel"))
    assert out.dtype == torch.bfloat16
    assert (out.float() - w.float()).abs().max() < 0.05


@pytest.mark.parametrize("sym", [True, False])
def test_packed_codes_match_forward_on_bf16_ties(sym):
    # bf16 weights hit exact rounding ties often; storage must still equal what forward used
    torch.manual_seed(0)
    spec = QuantSpec(4, "group", 8, sym)
    for _ in range(20):
        w = (torch.randn(32, 32) * 0.1).bfloat16()
        forward = fake_quant_weight(w, spec).float()
        stored = unpack_state(pack_weight(w, spec)).bfloat16().float()
        assert torch.equal(forward, stored)


def test_pack_model_flat_keys_roundtrip():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 4)))
    for name, bits in (("0", 4), ("2.0", 1)):
        q = WeightFakeQuant(QuantSpec(bits, "channel"))
        masking.add_param_transform(model.get_submodule(name), "weight", "t", q, kind="weight_quant", priority=masking.QUANT_PRIORITY)
    flat = pack_state(model)  # a whole model: flat keys (what RedundancyClean calls)
    assert set(flat) == {f"{n}.weight.{k}" for n in ("0", "2.0") for k in ("qweight", "scale", "meta")}
    weights = unpack_model({**flat, "0.bias": torch.zeros(8)})
    assert set(weights) == {"0.weight", "2.0.weight"}
    for name in ("0", "2.0"):
        assert torch.equal(weights[f"{name}.weight"], masking.effective_param(model.get_submodule(name), "weight"))
    assert pack_model(nn.Linear(2, 2)) == {}
