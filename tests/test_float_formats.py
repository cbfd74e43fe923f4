"""FP8 / FP6 / FP4 / E8M0 element formats and the MX / NVFP4 / scaled-FP8 schemes: bit-exact against an
independent decode table, torch's own float8 casts, and plain-Python references of the OCP MX and
NVFP4 recipes."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_compress.core.float_formats import (
    FORMATS, decode, decode_table, encode, get_format, pack_fp4, round_to_format, unpack_fp4,
)
from lightning_compress.core.microscaling import (
    SCHEMES, ScaledFloat, e8m0_scale, fake_quantize_float, fp8_quantize, mx_quantize, nvfp4_quantize, quantize_float,
)

TORCH_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2, "e8m0": torch.float8_e8m0fnu}


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e8m0"])
def test_decode_table_matches_torch_dtype(name):
    codes = torch.arange(256, dtype=torch.uint8)
    ref = codes.view(TORCH_DTYPES[name]).float()
    table = decode_table(name)
    assert torch.equal(torch.isnan(ref), torch.isnan(table))
    fin = ~torch.isnan(ref)
    assert torch.equal(ref[fin], table[fin])
    assert torch.equal(torch.signbit(ref[fin]), torch.signbit(table[fin]))


def test_format_constants():
    assert get_format("e4m3").max_value == 448.0
    assert get_format("e5m2").max_value == 57344.0
    assert get_format("e2m1").max_value == 6.0
    assert get_format("e3m2").max_value == 28.0
    assert get_format("e2m3").max_value == 7.5
    assert get_format("e8m0").max_value == 2.0**127
    assert decode_table("e2m1")[:8].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    with pytest.raises(ValueError, match="unknown float element format 'fp3'"):
        get_format("fp3")


def _hard_values(f) -> torch.Tensor:
    table = decode_table(f)
    fin = table[torch.isfinite(table)].unique()
    mids = (fin[1:] + fin[:-1]) / 2  # exact ties between neighbours
    g = torch.Generator().manual_seed(0)
    rnd = (torch.rand(4000, generator=g) * 2 - 1) * f.max_value * 1.0
    tiny = (torch.rand(500, generator=g) * 2 - 1) * f.min_subnormal * 4
    return torch.cat([fin, mids, -mids, rnd, tiny, mids.nextafter(torch.tensor(math.inf)), mids.nextafter(torch.tensor(-math.inf))])


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_round_matches_torch_cast(name):
    f = get_format(name)
    x = _hard_values(f)
    x = x[x.abs() <= f.max_value]
    assert torch.equal(round_to_format(x, f), x.to(TORCH_DTYPES[name]).float())


def _nearest_even_reference(x: torch.Tensor, f) -> torch.Tensor:
    table = decode_table(f)
    codes = torch.arange(table.numel())
    fin = torch.isfinite(table)
    vals, codes = table[fin], codes[fin]
    out = []
    for v in x.tolist():
        v = max(min(v, f.max_value), -f.max_value)  # saturate
        d = [(abs(v - t), c, t) for t, c in zip(vals.tolist(), codes.tolist())]
        best = min(e[0] for e in d)
        cands = [e for e in d if e[0] == best]
        even = [e for e in cands if e[1] % 2 == 0]
        t = (even or cands)[0][2]
        out.append(math.copysign(abs(t), v) if t == 0 else t)
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("name", ["e2m1", "e3m2", "e2m3", "e4m3"])
def test_round_matches_brute_force_nearest_even(name):
    f = get_format(name)
    x = _hard_values(f)[::7]
    x = torch.cat([x, torch.tensor([f.max_value * 3, -f.max_value * 1.01])])
    got = round_to_format(x, f)
    ref = _nearest_even_reference(x, f)
    assert torch.equal(got, ref)


def test_saturation_and_nan():
    assert round_to_format(torch.tensor([1e6, -1e6]), "e4m3").tolist() == [448.0, -448.0]
    assert torch.isnan(round_to_format(torch.tensor([1e6]), "e4m3", saturate=False)).all()
    assert torch.isinf(round_to_format(torch.tensor([1e6]), "e5m2", saturate=False)).all()
    assert torch.isnan(round_to_format(torch.tensor([math.nan]), "e2m1")).all()


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_encode_decode_roundtrip_every_code(name):
    table = decode_table(name)
    codes = torch.arange(table.numel())[torch.isfinite(table)]
    back = encode(decode(codes.to(torch.uint8), name), name)
    assert torch.equal(decode(back, name), decode(codes.to(torch.uint8), name))
    with pytest.raises(ValueError, match="not representable"):
        encode(torch.tensor([0.3]), "e2m1")


def test_fp4_packing_layout():
    codes = torch.tensor([[1, 2, 3, 15]], dtype=torch.uint8)
    packed = pack_fp4(codes)
    assert packed.tolist() == [[0x21, 0xF3]]
    assert torch.equal(unpack_fp4(packed), codes)


def _mx_reference(row: list[float], elem: str) -> list[float]:
    f = get_format(elem)
    out = []
    for b in range(0, len(row), 32):
        blk = row[b : b + 32]
        amax = max(abs(v) for v in blk)
        e = -127 if amax == 0 else max(-127, min(127, math.floor(math.log2(amax)) - f.emax))
        scale = 2.0**e
        q = round_to_format(torch.tensor([v / scale for v in blk]), f)
        out += [float(v) * scale for v in q]
    return out


@pytest.mark.parametrize("elem", ["e2m1", "e4m3", "e5m2", "e3m2", "e2m3"])
def test_mx_matches_ocp_reference(elem):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 64, generator=g) * torch.tensor([1e-3, 1.0, 50.0, 0.0]).view(4, 1)
    sf = mx_quantize(x, elem)
    ref = torch.tensor([_mx_reference(r, elem) for r in x.tolist()])
    assert torch.equal(sf.dequantize(), ref)
    # the scales are powers of two, E8M0-encodable
    assert torch.equal(torch.frexp(sf.scales)[0], torch.full_like(sf.scales, 0.5))
    assert sf.scales.shape == (4, 2)


def test_e8m0_scale_floor_and_clamp():
    s = e8m0_scale(torch.tensor([6.0, 7.9, 8.0, 0.0, 1e-45]), 2)
    assert s[:3].tolist() == [1.0, 1.0, 2.0]
    assert s[3].item() == 2.0**-127 and s[4].item() == 2.0**-127


def test_nvfp4_matches_reference():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 32, generator=g) * 3
    x[1] = 0.0
    sf = nvfp4_quantize(x)
    amax = x.abs().max().item()
    gs = torch.tensor(amax / (448 * 6), dtype=torch.float32)
    ref = []
    for row in x.tolist():
        for b in range(0, 32, 16):
            blk = torch.tensor(row[b : b + 16])
            s = round_to_format(blk.abs().max() / 6.0 / gs, "e4m3")
            q = torch.zeros(16) if s == 0 else round_to_format(blk / (s * gs), "e2m1")
            ref.append(q * s * gs)
    assert torch.equal(sf.dequantize(), torch.cat(ref).reshape(3, 32))
    assert torch.equal(sf.dequantize()[1], torch.zeros(32))


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_packed_roundtrip_and_size(scheme):
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(3))
    sf = quantize_float(x, scheme)
    packed = sf.packed()
    back = ScaledFloat.from_packed(scheme, packed, tuple(x.shape))
    assert torch.equal(back.dequantize(), sf.dequantize())
    elem_bits = get_format(SCHEMES[scheme][0]).bits
    assert packed["codes"].numel() * 8 == x.numel() * (4 if elem_bits == 4 else 8)
    err = (sf.dequantize() - x).abs().max() / x.abs().max()
    assert err < (0.2 if elem_bits <= 6 else 0.13)  # MX saturates the top binade (OCP floor scale)


def test_fp8_per_row_and_ste():
    w = torch.randn(4, 16, generator=torch.Generator().manual_seed(4)) * torch.tensor([1, 10, 100, 0]).view(4, 1)
    sf = fp8_quantize(w, "e4m3", per_row=True)
    assert sf.scales[3].item() == 1.0
    assert torch.allclose(sf.scales[:3], w[:3].abs().amax(1) / 448)
    x = w.clone().requires_grad_(True)
    y = fake_quantize_float(x, "fp8_e4m3", per_row=True)
    assert torch.equal(y.detach(), sf.dequantize())
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_bad_block_shape_and_scheme():
    with pytest.raises(ValueError, match="divisible by 32"):
        mx_quantize(torch.randn(2, 48))
    with pytest.raises(ValueError, match="not a float format"):
        quantize_float(torch.randn(2, 32), "fp5")
    with pytest.raises(ValueError, match="per_row is for fp8"):
        quantize_float(torch.randn(2, 32), "mxfp4", per_row=True)
