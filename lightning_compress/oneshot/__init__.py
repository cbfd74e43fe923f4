"""One-shot (post-training) compression of transformers, layer by layer: SparseGPT, Wanda, GPTQ,
SmoothQuant (+ W8A8), with magnitude / round-to-nearest baselines.  Pure PyTorch.

    from lightning_compress.oneshot import oneshot, SparseGPT, GPTQ
    report = oneshot(model, [SparseGPT(0.5, "2:4"), GPTQ(4, group_size=128)], calib_batches)
    print(report.table())
    slim = lightning_compress.clean(model)          # masks and on-grid weights baked

Files (one concept each): :mod:`~.linear_view` (``[out, in]`` views, GPT-2 ``Conv1D``),
:mod:`~.stats` (calibration statistics from one pass), :mod:`~.select_mask` (exact keep-masks),
:mod:`~.magnitude`, :mod:`~.wanda`, :mod:`~.sparsegpt`, :mod:`~.gptq` (GPTQ and RTN),
:mod:`~.smoothquant`, :mod:`~.hessian_inverse`, :mod:`~.methods` (the method objects),
:mod:`~.sequential` (capture + layer loop + report), :mod:`~.api` (:func:`oneshot`),
:mod:`~.compressed_tensors` (export in the compressed-tensors format).

Statistics are collected with forward hooks that live only during a calibration pass this package
runs itself (removed in ``finally``); the first block's inputs are captured by temporarily replacing
the block with a :class:`~.sequential.Catcher`.
"""

from lightning_compress.oneshot.api import check_methods, oneshot, whole_model_bytes
from lightning_compress.oneshot.methods import GPTQ, RTN, Magnitude, OneShotMethod, SmoothQuant, SparseGPT, Wanda
from lightning_compress.oneshot.sequential import LayerRecord, OneShotReport

__all__ = ["GPTQ", "RTN", "LayerRecord", "Magnitude", "OneShotMethod", "OneShotReport", "SmoothQuant", "SparseGPT",
           "Wanda", "check_methods", "oneshot", "whole_model_bytes"]
