"""Distillation loss terms (logits KL, hidden-state MSE, attention MSE) and how to read logits / hidden
states from a model's or a block's output.  Pure PyTorch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def kd_logits_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T**2 * KL(softmax(teacher/T) || softmax(student/T))`` over the last dim, averaged over all other
    positions (batch, and tokens for per-token logits; every position counts, padding included).
    Computed in float32."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"logits shapes differ: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}; the teacher "
            f"must predict the same classes/vocabulary as the student (or set weights['logits']=0)."
        )
    n = student.shape[-1]
    s = F.log_softmax(student.float().reshape(-1, n) / temperature, dim=-1)
    t = F.log_softmax(teacher.float().reshape(-1, n) / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def hidden_mse_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over mapped layers of ``MSE(student_i, teacher_i)`` (float32; every position counts)."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"need the same non-zero number of hidden states, got {len(student)} and {len(teacher)}")
    losses = []
    for i, (s, t) in enumerate(zip(student, teacher)):
        if s.shape != t.shape:
            raise ValueError(
                f"hidden state of student layer {i} has shape {tuple(s.shape)} but its teacher layer gives "
                f"{tuple(t.shape)}: hidden sizes do not match. Use a teacher of the student's hidden size or set "
                f"weights['hidden']=0."
            )
        losses.append(F.mse_loss(s.float(), t.float()))
    return torch.stack(losses).mean()


def attention_mse_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over mapped layers of the MSE between attention maps (``[batch, heads, q, k]``)."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"need the same non-zero number of attention maps, got {len(student)} and {len(teacher)}")
    losses = []
    for i, (s, t) in enumerate(zip(student, teacher)):
        if s.shape != t.shape:
            raise ValueError(
                f"attention of student layer {i} has shape {tuple(s.shape)} but its teacher layer gives "
                f"{tuple(t.shape)}: head counts or lengths differ. Set weights['attention']=0."
            )
        losses.append(F.mse_loss(s.float(), t.float()))
    return torch.stack(losses).mean()


def extract_logits(output: Any) -> torch.Tensor:
    """Logits from a model output: a tensor, ``.logits`` / ``["logits"]``, or the first floating tensor of
    rank >= 2 in a tuple (Hugging Face ``return_dict=False`` puts the scalar loss first)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)):
        for o in output:
            if isinstance(o, torch.Tensor) and o.is_floating_point() and o.dim() >= 2:
                return o
    raise ValueError(
        f"cannot find logits in a model output of type {type(output).__name__}: the model must return a tensor, "
        f"an object with `.logits` or a dict with 'logits' (or set weights['logits']=0)."
    )


def first_tensor(output: Any) -> torch.Tensor:
    """A block's hidden state: the tensor it returns, the first element of a tuple, or ``.last_hidden_state``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hs = getattr(output, "last_hidden_state", None)
    if isinstance(hs, torch.Tensor):
        return hs
    raise ValueError(f"a layer returned {type(output).__name__}; cannot find its hidden state tensor")
