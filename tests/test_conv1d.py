"""Hugging Face ``Conv1D`` (GPT-2, weight ``[in, out]``) as a first-class layer: patterns, quantizer channels
and row blocks see it as the Linear ``[out, in]``, with no conversion by the user."""

from __future__ import annotations

import torch
from torch import nn

from lightning_compress import clean
from lightning_compress.core import masking
from lightning_compress.core.act_quantizer import ActQuantizer
from lightning_compress.core.conv1d import is_conv1d
from lightning_compress.core.pruner import Pruner
from lightning_compress.core.weight_quantizer import WeightQuantizer


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=8, n_embd=16, n_layer=1, n_head=2))


def as_linear(conv1d: nn.Module) -> nn.Linear:
    lin = nn.Linear(conv1d.weight.shape[0], conv1d.nf)
    with torch.no_grad():
        lin.weight.copy_(conv1d.weight.t())
        lin.bias.copy_(conv1d.bias)
    return lin


def test_conv1d_is_recognised() -> None:
    model = gpt2()
    c_fc = model.transformer.h[0].mlp.c_fc
    assert is_conv1d(c_fc) and not is_conv1d(nn.Linear(2, 2))


def test_sparse_4x1_blocks_are_output_rows_of_the_transpose() -> None:
    model = gpt2()
    pruner = Pruner(model, sparsity=0.5, pattern="4x1", modules=[r"mlp\.c_fc"], start_step=0, end_step=0, scope="local")
    pruner.step(0)
    c_fc = model.transformer.h[0].mlp.c_fc
    w = masking.effective_param(c_fc, "weight").detach().t()  # [out, in]
    blocks = (w != 0).reshape(w.shape[0] // 4, 4, w.shape[1])  # 4 output rows x 1 input column
    assert (blocks.all(1) | ~blocks.any(1)).all()  # every block all kept or all zero
    assert (w == 0).float().mean().item() == 0.5


def test_weight_quant_channels_and_row_blocks_are_those_of_the_linear() -> None:
    model = gpt2()
    c_attn = model.transformer.h[0].attn.c_attn
    lin = as_linear(c_attn)
    for kwargs in ({"granularity": "channel"}, {"granularity": "row_block", "groups": 8, "scheme": "deepspeed"}):
        wq = WeightQuantizer(model, bits=4, modules=[r"attn\.c_attn"], **kwargs)
        ref = WeightQuantizer(nn.Sequential(lin), bits=4, modules=["0"], **kwargs)
        torch.testing.assert_close(
            masking.effective_param(c_attn, "weight").t(), masking.effective_param(lin, "weight")
        )
        wq.remove()
        ref.remove()


def test_act_quant_on_conv1d_is_per_token_and_clean_keeps_it() -> None:
    model = gpt2().eval()
    ids = torch.randint(0, 32, (2, 8))
    aq = ActQuantizer(model, bits=4, modules=[r"mlp\.c_proj"])
    c_proj = model.transformer.h[0].mlp.c_proj
    (t,) = masking.input_transforms(c_proj)
    x = torch.randn(2, 3, c_proj.weight.shape[0])
    assert max(len(torch.unique(tok)) for tok in t.fn(c_proj, x).reshape(-1, x.shape[-1])) <= 16
    with torch.no_grad():
        masked = model(input_ids=ids).logits
        slim = clean(model, inplace=False)
        torch.testing.assert_close(slim(input_ids=ids).logits, masked)
        aq.remove()
        assert not torch.allclose(model(input_ids=ids).logits, masked)  # the quantization did change it
