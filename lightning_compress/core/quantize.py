"""Fake quantizers (straight-through estimator), range observers and real low-bit storage.

Pure PyTorch: never imports lightning (or deepspeed).

Weight quantization
-------------------
A weight is viewed as rows, one scale (and zero-point) per row:

* ``"tensor"``: the whole weight is one row;
* ``"channel"``: one row per output channel (``weight[i]``; for ``nn.Embedding`` that is one
  token, i.e. *per row*);
* ``"group"``: each output channel is cut into groups of ``group_size`` consecutive values along the
  input dimension (for Conv2d the weight is viewed as ``[out, in*kh*kw]``).

Bit widths (:data:`SUPPORTED_WEIGHT_BITS`):

* 8, 4, 3: affine.  Symmetric: ``scale = max|w| / (2**(b-1)-1)``, zero-point 0, integer range
  ``[-2**(b-1), 2**(b-1)-1]`` (8 bits: scale = max|w|/127, range (-128, 127), the range ONNX export
  accepts).  Asymmetric: the row's range is widened to contain 0, ``scale = (hi-lo)/(2**b-1)``,
  ``zero_point = round(-lo/scale)``, integer range ``[0, 2**b-1]``.  The fake quantizer is
  ``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine`` over an 8-bit range after a
  clamp to the ``b``-bit range, so it exports to ONNX ``QuantizeLinear``/``DequantizeLinear`` at every
  width and the values are exactly those of the ``b``-bit grid.
* 2: ternary (TWN, Li & Liu 2016, as in XTC / TernaryBERT): ``delta = 0.7 * mean|w|``,
  ``alpha = mean(|w| where |w| > delta)``, value ``alpha * sign(w)`` where ``|w| > delta`` else 0.
* 1: binary (XTC / BinaryBERT): ``alpha = mean|w|`` per row, value ``alpha * sign(w)`` (0 -> +alpha).

Every quantizer passes the gradient straight through (STE; the affine one zeroes it outside the
clipping range, like ``torch.fake_quantize_*``).

Activation quantization: :func:`fake_quant_dynamic` (ranges per token / per image at each call) and
:func:`fake_quant_static` (fixed per-tensor range, from :class:`RangeObserver`).

Low-bit storage: :func:`pack_state` / :func:`unpack_state` (key layout in :func:`pack_state`).

This module is the front door: it re-exports the public names of the files that hold them, one
concept each:

* :mod:`~lightning_compress.core.quant_grid`: widths, :class:`QuantSpec`, rows view, scale / zero-point;
* :mod:`~lightning_compress.core.quant_observers`: :func:`row_range`, :class:`RangeObserver`;
* :mod:`~lightning_compress.core.fake_quant`: the fake quantizers and :class:`WeightFakeQuant`;
* :mod:`~lightning_compress.core.bit_packing`: :func:`pack_bits` / :func:`unpack_bits`;
* :mod:`~lightning_compress.core.quant_pack`: low-bit storage of a weight or a whole model;
* :mod:`~lightning_compress.core.act_quant`: the activation transform :class:`ActFakeQuant`;
* :mod:`~lightning_compress.core.weight_quantizer` / :mod:`~lightning_compress.core.act_quantizer`: the
  drivers that put quantizers on a model from a plain training loop.
"""

from __future__ import annotations

from lightning_compress.core.bit_packing import container_bits, pack_bits, unpack_bits
from lightning_compress.core.fake_quant import (
    WeightFakeQuant,
    binary_rows,
    fake_quant_dynamic,
    fake_quant_static,
    fake_quant_weight,
    pre_quant_weight,
    quantize_weight_int,
    ternary_rows,
    weight_quantizer,
)
from lightning_compress.core.quant_grid import (
    ACT_QUANT_KIND,
    GRANULARITIES,
    OBSERVERS,
    SUPPORTED_ACT_BITS,
    SUPPORTED_WEIGHT_BITS,
    WEIGHT_QUANT_KIND,
    Granularity,
    Observer,
    QuantSpec,
    affine_params,
    as_rows,
    bit_levels,
    check_bits,
    check_group_size,
    fake_quant_rows,
    qrange,
    ste,
)
from lightning_compress.core.quant_observers import RangeObserver, row_range
from lightning_compress.core.quant_pack import (
    PACK_FORMAT_VERSION,
    pack_model,
    pack_state,
    pack_weight,
    packed_nbytes,
    unpack_model,
    unpack_state,
)

__all__ = [
    "ACT_QUANT_KIND",
    "GRANULARITIES",
    "OBSERVERS",
    "PACK_FORMAT_VERSION",
    "SUPPORTED_ACT_BITS",
    "SUPPORTED_WEIGHT_BITS",
    "WEIGHT_QUANT_KIND",
    "Granularity",
    "Observer",
    "QuantSpec",
    "RangeObserver",
    "WeightFakeQuant",
    "affine_params",
    "as_rows",
    "binary_rows",
    "bit_levels",
    "check_bits",
    "check_group_size",
    "container_bits",
    "fake_quant_dynamic",
    "fake_quant_rows",
    "fake_quant_static",
    "fake_quant_weight",
    "pack_bits",
    "pack_model",
    "pack_state",
    "pack_weight",
    "packed_nbytes",
    "pre_quant_weight",
    "qrange",
    "quantize_weight_int",
    "row_range",
    "ste",
    "ternary_rows",
    "unpack_bits",
    "unpack_model",
    "unpack_state",
    "weight_quantizer",
]
