"""The masking contract: class swap, priorities, ownership, unwrap, no hooks, keys unchanged."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from lightning_compress.core import masking


def test_mask_then_quant_order_and_unwrap():
    lin = nn.Linear(4, 4)
    lin.register_buffer("m", torch.tensor([[1, 0, 1, 0]] * 4, dtype=torch.bool), persistent=False)
    calls = []

    def quant(mod, w):
        calls.append(w.clone())
        return torch.round(w * 10) / 10

    masking.add_param_transform(lin, "weight", "q", quant, kind="weight_quant", priority=masking.QUANT_PRIORITY)
    masking.add_param_transform(lin, "weight", "p", masking.mask_transform("m"), kind="mask", priority=masking.MASK_PRIORITY)
    assert type(lin).__name__.startswith("CompressedLinear") and isinstance(lin, nn.Linear)
    x = torch.randn(2, 4)
    y = lin(x)
    # the quantizer saw the masked weight: mask first, then quantize
    assert bool((calls[0][:, 1] == 0).all())
    expected = nn.functional.linear(x, torch.round(lin.weight * lin.m * 10) / 10, lin.bias)
    assert torch.allclose(y, expected)
    assert list(lin.state_dict()) == ["weight", "bias"]
    assert not lin._forward_hooks and not lin._forward_pre_hooks
    assert isinstance(lin.weight, nn.Parameter)  # restored after forward
    masking.remove_owner(lin, "q")
    masking.remove_owner(lin, "p")
    assert type(lin) is nn.Linear
    assert torch.allclose(lin(x), nn.functional.linear(x, lin.weight, lin.bias))


def test_same_kind_two_owners_is_an_error_and_same_owner_replaces():
    lin = nn.Linear(2, 2)
    masking.add_param_transform(lin, "weight", "A", lambda m, w: w, kind="mask", priority=0, module_name="enc.fc")
    masking.add_param_transform(lin, "weight", "A", lambda m, w: 2 * w, kind="mask", priority=0)
    assert masking.owners(lin, "weight") == [("A", "mask")]
    with pytest.raises(ValueError, match=r"enc.fc.weight already has a 'mask' transform from 'A'; 'B' cannot add"):
        masking.add_param_transform(lin, "weight", "B", lambda m, w: w, kind="mask", priority=0, module_name="enc.fc")


def test_missing_parameter_is_named():
    with pytest.raises(ValueError, match=r"module 'relu' has no parameter 'weight'"):
        masking.add_param_transform(nn.ReLU(), "weight", "A", lambda m, w: w, kind="mask", priority=0, module_name="relu")


def test_input_transform_conv_and_gradients():
    conv = nn.Conv2d(2, 3, 3)
    masking.add_input_transform(conv, "act", lambda m, x: x.clamp(-0.5, 0.5), kind="act_quant", priority=10)
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    conv(x).sum().backward()
    ref = nn.functional.conv2d(x.detach().clamp(-0.5, 0.5), conv.weight, conv.bias)
    assert torch.allclose(conv(x), ref)
    assert conv.weight.grad is not None and x.grad is not None


def test_deepcopy_and_pickle_of_wrapped_module():
    lin = nn.Linear(3, 3)
    lin.register_buffer("m", torch.ones(3, 3, dtype=torch.bool), persistent=False)
    masking.add_param_transform(lin, "weight", "p", masking.mask_transform("m"), kind="mask", priority=0)
    twin = copy.deepcopy(lin)
    x = torch.randn(2, 3)
    assert torch.allclose(twin(x), lin(x))
    assert type(pickle.loads(pickle.dumps(type(lin)))) is type(type(lin))


def test_effective_param():
    lin = nn.Linear(2, 2, bias=False)
    lin.register_buffer("m", torch.tensor([[True, False], [False, True]]), persistent=False)
    masking.add_param_transform(lin, "weight", "p", masking.mask_transform("m"), kind="mask", priority=0)
    assert torch.equal(masking.effective_param(lin, "weight"), lin.weight * lin.m)
