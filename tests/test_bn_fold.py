"""BatchNorm folding: ``fold_batchnorm`` and ``clean(..., fold_batchnorm=True)``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_compress.callbacks.channel_pruning import ChannelPruning
from lightning_compress.callbacks.redundancy_clean import RedundancyClean
from lightning_compress.export import clean, clean_for_storage, fold_batchnorm
from tests.models import cpu_trainer, image_loader
from tests.structured_models import TinyResNet, randomize_bn

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def outputs(model: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def pruned_resnet() -> TinyResNet:
    torch.manual_seed(0)
    model = TinyResNet()
    randomize_bn(model)
    cb = ChannelPruning(sparsity=0.5)
    cb.setup(None, model, "fit")  # type: ignore[arg-type]
    for g in cb.groups:
        cb.prune_group(g, g.sparsity)
    return model


def test_fold_resnet_same_outputs_in_eval():
    torch.manual_seed(0)
    model = TinyResNet()
    randomize_bn(model)
    ref = outputs(model)
    notes = fold_batchnorm(model)
    assert notes == ["fold_batchnorm: folded 6 BatchNorm2d into the preceding Conv2d (eval semantics)."]
    assert bn_count(model) == 0
    assert isinstance(model.bn, nn.Identity) and isinstance(model.layer2.down[1], nn.Identity)
    assert model.stem.bias is not None  # bias=False convs gain the folded shift
    torch.testing.assert_close(outputs(model), ref, atol=1e-5, rtol=0)


def test_clean_fold_equals_masked_model_and_default_keeps_bn():
    masked = pruned_resnet()
    ref = outputs(masked)
    plain = clean(copy.deepcopy(masked))
    assert bn_count(plain) == 6
    assert not any(n.startswith("fold_batchnorm") for n in plain.lc_clean_notes)
    folded = clean(masked, fold_batchnorm=True)
    assert bn_count(folded) == 0
    assert folded.stem.out_channels == 4  # pruned AND folded
    assert "fold_batchnorm: folded 6" in folded.lc_clean_notes[0]
    torch.testing.assert_close(outputs(folded), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs(plain), ref, atol=1e-5, rtol=0)


def test_conv_bias_groups_and_non_affine_bn():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6, affine=False), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=3, padding_mode="reflect"), nn.BatchNorm2d(6),
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.3, 2.0)
            if m.affine:
                m.weight.data.uniform_(-1.5, 1.5)  # negative gammas too
    ref = outputs(model)
    notes = fold_batchnorm(model)
    assert "folded 2" in notes[0]
    assert isinstance(model[1], nn.Identity) and isinstance(model[4], nn.Identity)
    torch.testing.assert_close(outputs(model), ref, atol=1e-5, rtol=0)


def test_model_without_batchnorm_is_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    outputs(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    notes = fold_batchnorm(model)
    assert notes == ["fold_batchnorm: no Conv2d -> BatchNorm2d pair found; nothing folded."]
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


class NotFoldable(nn.Module):
    """Every BatchNorm here must stay: conv output also read elsewhere, BN after ReLU, BN without
    running statistics, a conv called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_shared_input = nn.BatchNorm2d(4)
        self.bn_after_relu = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_no_stats = nn.BatchNorm2d(4, track_running_stats=False)
        self.c3 = nn.Conv2d(4, 4, 1)
        self.bn_twice_conv = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.c1(x)
        z = self.bn_shared_input(y) + y  # the conv output has a second reader
        z = self.bn_after_relu(torch.relu(z))
        z = self.bn_no_stats(self.c2(z))
        return self.bn_twice_conv(self.c3(z)) + self.c3(z)


def test_non_foldable_patterns_are_left_alone_with_reasons():
    torch.manual_seed(0)
    model = NotFoldable()
    ref = outputs(model)
    notes = fold_batchnorm(model)
    text = "\n".join(notes)
    assert bn_count(model) == 4
    assert "'bn_shared_input' not folded: the output of Conv2d 'c1' is also read by" in text
    assert "'bn_after_relu' not folded: its input is not a Conv2d output" in text
    assert "'bn_no_stats' not folded: it has no running statistics" in text
    assert "'bn_twice_conv' not folded" in text and "called more than once" in text
    assert not any("folded 1" in n or "folded 2" in n for n in notes)
    torch.testing.assert_close(outputs(model), ref, atol=0, rtol=0)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.bn(self.conv(x))
        return self.bn(self.conv(-x))


def test_untraceable_model_unchanged_and_says_so():
    model = Untraceable()
    notes = fold_batchnorm(model)
    assert len(notes) == 1 and "torch.fx could not trace Untraceable" in notes[0]
    assert isinstance(model.bn, nn.BatchNorm2d)
    slim = clean(Untraceable(), fold_batchnorm=True)
    assert any("could not trace" in n for n in slim.lc_clean_notes)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_quantized_conv_is_not_folded_and_stored_twin_agrees(granularity):
    from lightning_compress.ptq import quantize

    masked = pruned_resnet()
    # the stem loses output channels: fixed per-channel PTQ ranges are sliced with them
    q = quantize(masked, weight_bits=8, act_bits=None, granularity=granularity, modules=[r"^stem$"])
    slim, packed, stored = clean_for_storage(copy.deepcopy(q), fold_batchnorm=True)
    assert packed and stored is not None
    assert isinstance(slim.bn, nn.BatchNorm2d)  # after the quantized stem: kept
    assert any("'bn' not folded: Conv2d 'stem' is weight-quantized" in n for n in slim.lc_clean_notes)
    assert bn_count(slim) == 1 and bn_count(stored) == 1
    ref = outputs(q)
    torch.testing.assert_close(outputs(slim), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs(stored), ref, atol=1e-5, rtol=0)


def test_redundancy_clean_fold_batchnorm(tmp_path):
    torch.manual_seed(0)
    model = TinyResNet()
    randomize_bn(model)
    rc = RedundancyClean(tmp_path, latency_runs=2, save=False, fold_batchnorm=True)
    trainer = cpu_trainer(max_steps=3, callbacks=[ChannelPruning(sparsity=0.5, end_step=1), rc])
    trainer.fit(model, image_loader())
    ref = outputs(model)
    assert rc.slim_model is not None and bn_count(rc.slim_model) == 0
    torch.testing.assert_close(outputs(rc.slim_model), ref, atol=1e-5, rtol=0)
    assert rc.report is not None and any("fold_batchnorm: folded 6" in n for n in rc.report["notes"])
