"""``NarrowMultiheadAttention``: an ``nn.MultiheadAttention`` whose heads were removed (pure PyTorch).

``nn.MultiheadAttention`` ties its projection width to ``embed_dim`` (``head_dim = embed_dim //
num_heads``), so removing heads leaves a module it cannot describe.  ``clean`` turns a head-pruned
``nn.MultiheadAttention`` into this subclass in place (:func:`narrow_in_place`): ``in_proj_weight``
``[3 * P, E]`` and ``out_proj`` ``Linear(P, E)`` with ``P = num_heads * head_dim`` for the kept heads,
``head_dim`` unchanged, the same ``embed_dim`` / ``batch_first`` / ``dropout``; it stays an
``nn.MultiheadAttention`` (``isinstance`` holds, ``nn.TransformerEncoderLayer`` calls it as before).

Its forward has ``nn.MultiheadAttention.forward``'s signature and semantics on what the pruned model
computed (the removed heads had zero q/k/v rows and biases, so zero output):

* ``query`` / ``key`` / ``value`` batched (``batch_first`` either way) or unbatched;
* ``key_padding_mask`` ``(N, S)`` and ``attn_mask`` ``(L, S)`` or ``(N * orig_num_heads, L, S)`` (the
  kept heads' slices are used), bool (True = not allowed) or float (added); ``is_causal`` is a hint
  about ``attn_mask``, as in torch (the mask is required and used);
* ``need_weights``: the weights of all ``orig_num_heads`` heads, a removed head's being what it was
  in the pruned model (zero scores: ``softmax`` of the masks alone), averaged over them with
  ``average_attn_weights``;
* dropout on the attention weights in training.

The eval fast paths (``torch._native_multi_head_attention``, ``torch._transformer_encoder_layer_fwd``,
nested tensors in ``nn.TransformerEncoder``) assume ``P == embed_dim``; this module sets
``_qkv_same_embed_dim = False``, which makes torch take the regular path, the same function up to
float rounding.  One difference: with a ``src_key_padding_mask`` the nested-tensor path of an eval
``nn.TransformerEncoder`` returns 0 at padded positions, the regular path (and training) other values
there; outputs at the positions that are not padded are the same.  Not supported (refused by
:func:`narrowable`): ``add_bias_kv``, ``add_zero_attn`` and separate ``kdim`` / ``vdim`` projections.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_compress.core import masking


def narrowable(mha: nn.MultiheadAttention) -> str:
    """``""`` when :func:`narrow_in_place` can narrow ``mha``, else why not."""
    if mha.in_proj_weight is None:
        return "separate q/k/v projections (kdim / vdim differ from embed_dim)"
    if mha.bias_k is not None or mha.add_zero_attn:
        return "add_bias_kv / add_zero_attn"
    return ""


class NarrowMultiheadAttention(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` with ``num_heads`` of its ``orig_num_heads`` heads left (see the
    module docstring); built by :func:`narrow_in_place`, never by its constructor."""

    orig_num_heads: int
    kept_heads: tuple[int, ...]

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:
            raise RuntimeError("NarrowMultiheadAttention: is_causal needs attn_mask (as nn.MultiheadAttention).")
        if query.is_nested:  # nn.TransformerEncoder's eval fast path: padded batch in, nested out
            return self._nested(query, key, value, need_weights, attn_mask, average_attn_weights)
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, tgt, _ = query.shape
        src = key.shape[1]
        h, d, p = self.num_heads, self.head_dim, self.num_heads * self.head_dim
        w = self.in_proj_weight
        b = self.in_proj_bias
        q, k, v = (F.linear(x, w[i * p:(i + 1) * p], None if b is None else b[i * p:(i + 1) * p])
                   for i, x in enumerate((query, key, value)))
        q, k, v = (t.reshape(n, -1, h, d).transpose(1, 2) for t in (q, k, v))  # (N, h, L|S, d)
        mask = self._mask(attn_mask, key_padding_mask, n, tgt, src, q.dtype)  # (N|1, H_orig|1, L, S) additive
        kept = mask if mask is None or mask.shape[1] == 1 else mask[:, list(self.kept_heads)]
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d)
        if kept is not None:
            scores = scores + kept
        attn = torch.softmax(scores, dim=-1)
        weights = attn
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, p=self.dropout)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(n, tgt, p)
        out = self.out_proj(out)
        if not unbatched and not self.batch_first:
            out = out.transpose(0, 1)
        elif unbatched:
            out = out.squeeze(0)
        if not need_weights:
            return out, None
        full = self._all_heads(weights, mask, n, tgt, src)
        if average_attn_weights:
            full = full.mean(dim=1)
        return out, (full.squeeze(0) if unbatched else full)

    def _nested(self, query, key, value, need_weights, attn_mask, average_attn_weights):
        """Nested (strided) ``query`` / ``key`` / ``value`` of one set of lengths, batch first: run padded,
        with the padding as key padding mask, and return nested again (what the fast path returns)."""
        if not (key is query and value is query):
            raise RuntimeError("NarrowMultiheadAttention: nested tensors only for self-attention (query is key is value).")
        lengths = query._nested_tensor_size()[:, 0]
        x = query.to_padded_tensor(0.0)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
        first = self.batch_first
        self.batch_first = True
        try:
            out, w = self.forward(x, x, x, key_padding_mask=~valid, need_weights=need_weights, attn_mask=attn_mask,
                                  average_attn_weights=average_attn_weights)
        finally:
            self.batch_first = first
        return torch._nested_tensor_from_mask(out, valid, mask_check=False), w

    def _mask(self, attn_mask, key_padding_mask, n, tgt, src, dtype) -> torch.Tensor | None:
        def additive(m: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(dtype)

        out = None
        if attn_mask is not None:
            m = additive(attn_mask)
            m = m.view(1, 1, tgt, src) if m.dim() == 2 else m.view(n, self.orig_num_heads, tgt, src)
            out = m
        if key_padding_mask is not None:
            kp = additive(key_padding_mask).view(n, 1, 1, src)
            out = kp if out is None else out + kp
        return out

    def _all_heads(self, weights, mask, n, tgt, src) -> torch.Tensor:
        """``(N, orig_num_heads, L, S)``: the kept heads' weights, a removed head's ``softmax(mask)``."""
        base = torch.zeros(n, self.orig_num_heads, tgt, src, dtype=weights.dtype, device=weights.device)
        removed = torch.softmax(base + (mask if mask is not None else 0), dim=-1)
        idx = torch.tensor(self.kept_heads, device=weights.device)
        return removed.index_copy(1, idx, weights)


def narrow_in_place(mha: nn.MultiheadAttention, keep: Sequence[bool]) -> None:
    """Turn ``mha``, whose tensors ``clean`` already sliced to the kept heads (``keep[h]``: original
    head ``h`` stayed), into a :class:`NarrowMultiheadAttention` (its class changes in place; a module
    still wrapped by lightning-compress keeps its wrapper around the new class)."""
    kept = tuple(i for i, k in enumerate(keep) if k)
    prev = getattr(mha, "kept_heads", None)
    orig = getattr(mha, "orig_num_heads", len(keep))
    if prev is not None:  # narrowed before: keep indices of the original heads
        kept = tuple(prev[i] for i in kept)
    mha.orig_num_heads = orig
    mha.kept_heads = kept
    mha.num_heads = len(kept)
    mha._qkv_same_embed_dim = False  # the fast paths assume 3 * embed_dim rows
    if masking.is_wrapped(mha):
        mha.__dict__["_lc_original_class"] = NarrowMultiheadAttention
        mha.__class__ = masking._compressed_class(NarrowMultiheadAttention)
    else:
        mha.__class__ = NarrowMultiheadAttention


__all__ = ["NarrowMultiheadAttention", "narrow_in_place", "narrowable"]
