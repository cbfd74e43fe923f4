"""Tiny random-weight Hugging Face decoders for the one-shot tests, with LLM-like activation outliers:
a few channels of every normalization weight scaled up (real LLMs have such outlier features; with
uniform random norms every input column looks alike and Wanda / SmoothQuant have nothing to use)."""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 128


def _outliers(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            w = getattr(m, "weight", None)
            if isinstance(w, torch.Tensor) and w.dim() == 1 and ("norm" in name or name.split(".")[-1].startswith("ln")):
                w.copy_(0.5 + torch.rand(w.shape, generator=g))
                idx = torch.randperm(w.numel(), generator=g)[:3]
                w[idx] *= 12.0
    return model


def tiny(family: str, layers: int = 2, seed: int = 0) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    if family == "llama":
        m = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    elif family == "qwen2":
        m = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    elif family == "gpt2":
        m = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=layers, n_head=4, n_positions=64,
                                       bos_token_id=0, eos_token_id=0))
    else:
        raise ValueError(family)
    return _outliers(m.eval(), seed)


def calib(n: int = 4, batch: int = 2, seq: int = 32, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, seq), generator=g) for _ in range(n)]
