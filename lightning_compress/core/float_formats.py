"""Small floating-point element formats, emulated exactly on any device: FP8 E4M3 / E5M2, FP6 E3M2 /
E2M3, FP4 E2M1 and the exponent-only scale format E8M0.

A format is ``sign | exponent (e bits, bias b) | mantissa (m bits)``.  Normal codes hold
``(-1)^s 2^(E - b) (1 + M / 2^m)``, subnormal codes (``E = 0``) ``(-1)^s 2^(1 - b) (M / 2^m)``.  The
formats differ only in what the top codes mean (:class:`FloatFormat`):

* ``e4m3`` (OCP / NVIDIA "E4M3FN", ``torch.float8_e4m3fn``): no infinities, only ``S.1111.111`` is NaN,
  largest finite 448.
* ``e5m2`` (IEEE-like, ``torch.float8_e5m2``): exponent 31 is inf / NaN, largest finite 57344.
* ``e3m2``, ``e2m3``, ``e2m1`` (OCP MX v1.0 FP6 / FP4): every code finite (28, 7.5, 6.0).
* ``e8m0`` (OCP MX scale): 8 exponent bits, no sign, no mantissa, bias 127, ``0xFF`` NaN: the value
  ``2^(E - 127)``.

:func:`round_to_format` maps float32 values to the nearest representable value, ties to the even code
(IEEE round-to-nearest-even, as the hardware casts do), saturating at the largest finite magnitude
(``saturate=True``, the convention of the OCP MX spec and of NVIDIA's FP8 recipes; with ``False``
out-of-range values become NaN or inf as a non-saturating cast would).  It works from ``torch.frexp``
and exact power-of-two scaling, so it is bit-exact on every device and dtype path; :func:`decode_table`
is the independent reference (every code decoded from its bit fields) that the tests compare against,
and against torch's own float8 casts where torch has the dtype.

:func:`encode` / :func:`decode` convert between on-grid float32 values and integer codes (uint8 per
element; FP4 is packed two per byte by :func:`pack_fp4`, element ``2i`` in the low nibble, the layout
of ``torch.float4_e2m1fn_x2`` and of the OCP MX spec).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "FloatFormat",
    "FORMATS",
    "get_format",
    "decode_table",
    "round_to_format",
    "encode",
    "decode",
    "pack_fp4",
    "unpack_fp4",
]


@dataclass(frozen=True)
class FloatFormat:
    """One element format: ``exp_bits``, ``man_bits``, exponent ``bias``, whether the top exponent is
    reserved for inf/NaN (``ieee_special``: E5M2) or only the all-ones code is NaN (``nan_all_ones``:
    E4M3FN), and whether the format has a sign bit (E8M0 has none)."""

    name: str
    exp_bits: int
    man_bits: int
    bias: int
    ieee_special: bool = False
    nan_all_ones: bool = False
    signed: bool = True
    torch_dtype: str | None = None

    @property
    def bits(self) -> int:
        return int(self.signed) + self.exp_bits + self.man_bits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal value (the subnormal quantum is ``2^(emin - man_bits)``);
        a format without mantissa (E8M0) has no subnormals: its code 0 is ``2^-bias``."""
        return -self.bias if self.man_bits == 0 else 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite value."""
        top = 2**self.exp_bits - 1
        if self.ieee_special or (self.nan_all_ones and self.man_bits == 0):
            top -= 1
        return top - self.bias

    @property
    def max_value(self) -> float:
        """Largest finite magnitude."""
        mant = 2**self.man_bits - 1
        if self.nan_all_ones:
            mant -= 1  # S.1111.111 is NaN
        if self.man_bits == 0:
            return float(2.0**self.emax)
        return float(2.0**self.emax * (1 + mant / 2**self.man_bits))

    @property
    def min_subnormal(self) -> float:
        return float(2.0 ** (self.emin - self.man_bits))


FORMATS: dict[str, FloatFormat] = {
    f.name: f
    for f in (
        FloatFormat("e4m3", 4, 3, 7, nan_all_ones=True, torch_dtype="float8_e4m3fn"),
        FloatFormat("e5m2", 5, 2, 15, ieee_special=True, torch_dtype="float8_e5m2"),
        FloatFormat("e3m2", 3, 2, 3),
        FloatFormat("e2m3", 2, 3, 1),
        FloatFormat("e2m1", 2, 1, 1),
        FloatFormat("e8m0", 8, 0, 127, nan_all_ones=True, signed=False, torch_dtype="float8_e8m0fnu"),
    )
}


def get_format(name: str | FloatFormat) -> FloatFormat:
    """The :class:`FloatFormat` called ``name`` (``"e4m3"``, ``"e5m2"``, ``"e3m2"``, ``"e2m3"``, ``"e2m1"``,
    ``"e8m0"``); ValueError naming the choices otherwise."""
    if isinstance(name, FloatFormat):
        return name
    if name not in FORMATS:
        raise ValueError(f"unknown float element format {name!r}: use one of {sorted(FORMATS)}")
    return FORMATS[name]


def decode_table(fmt: str | FloatFormat) -> torch.Tensor:
    """float32 value of every code ``0 .. 2^bits - 1`` from its bit fields (the reference decode)."""
    f = get_format(fmt)
    out = []
    for code in range(2**f.bits):
        sign = -1.0 if f.signed and (code >> (f.exp_bits + f.man_bits)) & 1 else 1.0
        e = (code >> f.man_bits) & (2**f.exp_bits - 1)
        m = code & (2**f.man_bits - 1)
        if f.nan_all_ones and e == 2**f.exp_bits - 1 and m == 2**f.man_bits - 1:
            out.append(float("nan"))
            continue
        if f.ieee_special and e == 2**f.exp_bits - 1:
            out.append(sign * float("inf") if m == 0 else float("nan"))
            continue
        if e == 0 and f.man_bits > 0:
            out.append(sign * 2.0 ** f.emin * (m / 2**f.man_bits))
        else:
            out.append(sign * 2.0 ** (e - f.bias) * (1 + m / 2**f.man_bits))
    return torch.tensor(out, dtype=torch.float32)


def round_to_format(x: torch.Tensor, fmt: str | FloatFormat, saturate: bool = True) -> torch.Tensor:
    """``x`` (any float dtype; computed in float32) rounded to the nearest value of ``fmt``, ties to
    even, as float32.  Magnitudes above :attr:`FloatFormat.max_value` saturate to it (``saturate=True``)
    or become NaN (E4M3, no inf) / inf (E5M2) / NaN (formats without specials) otherwise; NaN stays NaN.
    E8M0 (unsigned, no mantissa) rounds ``log2`` to the nearest integer exponent (ties up, the OCP
    convention is to *floor* for scales: use :func:`lightning_compress.core.microscaling.e8m0_scale`)."""
    f = get_format(fmt)
    xf = x.float()
    if not f.signed:
        if (xf < 0).any():
            raise ValueError(f"round_to_format: {f.name} is unsigned; got negative values")
    ax = xf.abs()
    mant, exp = torch.frexp(ax)  # ax = mant * 2^exp, mant in [0.5, 1)
    e = torch.clamp(exp - 1, min=f.emin)  # exponent of the binade (subnormals share emin)
    shift = (f.man_bits - e).to(torch.float32)
    # |x| / quantum, with quantum = 2^(e - man_bits): exact power-of-two scaling via ldexp
    scaled = torch.ldexp(ax, shift)
    r = torch.round(scaled)  # round half to even
    y = torch.ldexp(r, -shift)
    y = torch.where(ax == 0, torch.zeros_like(y), y)
    too_big = y > f.max_value
    if saturate:
        y = torch.where(too_big, torch.full_like(y, f.max_value), y)
    else:
        special = float("inf") if f.ieee_special else float("nan")
        y = torch.where(too_big, torch.full_like(y, special), y)
    y = torch.copysign(y, xf)
    return torch.where(torch.isnan(xf), xf, y)


def _code_lookup(f: FloatFormat) -> tuple[torch.Tensor, torch.Tensor]:
    table = decode_table(f)
    finite = torch.isfinite(table)
    codes = torch.arange(table.numel())[finite]
    values = table[finite]
    # +0.0 and -0.0 compare equal: a stable sort keeps code order, so the first zero is +0 (code 0)
    order = torch.argsort(values, stable=True)
    return values[order], codes[order]


def encode(values: torch.Tensor, fmt: str | FloatFormat) -> torch.Tensor:
    """Integer codes (uint8) of float values already on the grid of ``fmt`` (as returned by
    :func:`round_to_format`); ValueError when a value is not representable (not on the grid)."""
    f = get_format(fmt)
    if f.bits > 8:
        raise ValueError(f"encode: {f.name} has {f.bits} bits; codes are stored in uint8")
    table_values, table_codes = _code_lookup(f)
    v = values.float().reshape(-1)
    idx = torch.searchsorted(table_values, v).clamp(max=table_values.numel() - 1)
    found = table_values[idx] == v
    if not bool(found.all()):
        bad = v[~found][:4].tolist()
        raise ValueError(f"encode: values {bad} are not representable in {f.name}; round them with round_to_format first")
    codes = table_codes[idx]
    if f.signed:  # a negative zero keeps its sign bit
        neg_zero = (v == 0) & torch.signbit(v)
        codes = torch.where(neg_zero, torch.full_like(codes, 1 << (f.exp_bits + f.man_bits)), codes)
    return codes.to(torch.uint8).reshape(values.shape)


def decode(codes: torch.Tensor, fmt: str | FloatFormat) -> torch.Tensor:
    """float32 values of uint8 ``codes`` of ``fmt`` (table lookup of :func:`decode_table`)."""
    f = get_format(fmt)
    return decode_table(f).to(codes.device)[codes.long()]


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte along the last dimension (even length): element ``2i`` in the low
    nibble, ``2i + 1`` in the high nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_fp4: the last dimension ({codes.shape[-1]}) must be even")
    c = codes.to(torch.uint8)
    return (c[..., 0::2] & 0xF) | ((c[..., 1::2] & 0xF) << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_fp4`: uint8 codes, last dimension doubled."""
    lo = packed & 0xF
    hi = (packed >> 4) & 0xF
    return torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)
