"""torchvision ConvNeXt (convnext_tiny's block structure, fewer blocks and channels): each CNBlock is a
depthwise 7x7 Conv2d, a channels-last permute, LayerNorm, Linear -> GELU -> Linear, a permute back and a
per-channel ``layer_scale``; downsampling goes through ``LayerNorm2d``.

RowPruning (the MLP's Linear rows, traced by fx through the permutes), SparsePruning 2:4 (the depthwise
convs' 49 inputs per filter do not split in fours: a clear error, then fine with them excluded),
WeightQuant 8 and ActQuant 8: the compressed model computes what a plain copy with the effective
weights computes (train and eval), the slim model what the compressed one computes, never silently
otherwise.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("torchvision")

from lightning_compress.callbacks import ActQuant, RowPruning, SparsePruning, WeightQuant  # noqa: E402
from lightning_compress.core import masking  # noqa: E402
from lightning_compress.export import clean  # noqa: E402


def _convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(0)
    m = ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], stochastic_depth_prob=0.0, num_classes=4)
    for mod in m.modules():  # torchvision starts layer_scale at 1e-6: the blocks would barely matter
        if hasattr(mod, "layer_scale"):
            nn.init.normal_(mod.layer_scale, 1.0, 0.1)
    nn.init.normal_(m.classifier[2].weight, std=0.3)
    return m


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


METHODS = {
    "row": lambda: RowPruning(sparsity=0.5),
    "sparse_2:4": lambda: SparsePruning(pattern="2:4", exclude=[r"block\.0$"]),
    "weight_quant_8": lambda: WeightQuant(bits=8),
    "act_quant_8": lambda: ActQuant(bits=8),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_convnext_method_then_clean(method):
    model = _convnext()
    dense = copy.deepcopy(model).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cb = METHODS[method]()
    cb.attach(model)
    if hasattr(cb, "pruner"):
        for g in cb.pruner.groups:
            cb.prune_group(g, g.sparsity)
    if method != "act_quant_8":  # a baked copy has no activation quantizer
        baked = copy.deepcopy(model)
        masking.bake(baked)
        masking.strip(baked)
        for train in (True, False):
            model.train(train)
            baked.train(train)
            with torch.no_grad():
                assert _rel(model(x), baked(x)) <= 1e-6, f"train={train}"
    model.eval()
    with torch.no_grad():
        masked = model(x)
        assert _rel(masked, dense(x)) > 1e-4, "nothing was compressed: the test would prove nothing"
        before = sum(p.numel() for p in model.parameters())
        reported = int(sum(t.pruned() for t in cb.pruner.targets)) if method == "row" else 0
        slim = clean(model)
        assert _rel(slim(x), masked) <= 1e-5
    after = sum(p.numel() for p in slim.parameters())
    if method == "row":
        assert after == before - reported and after < before
        assert slim.features[1][0].block[3].out_features == 32  # 64 rows of the first stage's MLP, half removed
    else:
        assert after == before


def test_convnext_sparse_2_4_on_depthwise_convs_is_a_clear_error():
    with pytest.raises(ValueError, match=r"SparsePruning.*'features\.1\.0\.block\.0' with weight shape \(16, 1, 7, 7\): "
                                         r"M=4 must divide the input dimension 49.*exclude"):
        SparsePruning(pattern="2:4").attach(_convnext())
