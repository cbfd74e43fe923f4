"""Layer reduction and knowledge distillation, in plain PyTorch.

Pieces (each usable from a plain training loop; the ``LayerReductionKD`` callback drives them):

* :func:`find_layer_stack` finds the repeated block stack of a model (``bert.encoder.layer``,
  ``model.layers``, ``transformer.h``, an ``nn.Sequential`` of same-class blocks, ...).
* :func:`evenly_spaced_layers` / :func:`resolve_keep_layers` turn ``keep_layers`` (an int or a list)
  into checked layer indices.
* :func:`shrink_layers_` keeps only the listed layers of a model's stack, in place (the kept layer
  objects are reused, so their weights are the teacher's), and updates a Hugging Face config
  (``num_hidden_layers``, ``layer_types``) and the ``layer_idx`` attributes of the kept layers.
  :func:`build_student` does the same on a deep copy.
* :func:`kd_logits_loss`, :func:`hidden_mse_loss`, :func:`attention_mse_loss`: the loss terms.
* :class:`DistillRecorder` captures, for the same call, the student's and the teacher's outputs (logits,
  mapped block outputs and, for Hugging Face models, attention probabilities) and computes the terms.

How outputs are captured (no forward hooks: Lightning removes them and ZeRO-3 owns them).  Like the
masking contract (:mod:`lightning_compress.core.masking`), the recorder swaps ``__class__`` of the
student's top model for a cached subclass whose ``forward`` calls the original ``forward`` and, while
recording, runs the teacher on the *same* arguments under ``torch.no_grad()`` and stores both outputs.
Hidden states are captured the same way on the mapped blocks (student block ``i`` and teacher block
``teacher_layers[i]``): a class-swapped block stores its output (the first tensor when it returns a
tuple).  This is used for every model, Hugging Face ones included, instead of ``output_hidden_states``:
the user's outputs stay unchanged and only the mapped layers are held in memory.  Attention scores are
only exposed by Hugging Face models (``output_attentions=True``, which needs
``attn_implementation="eager"``); when asked for, that keyword is added to both calls.  The attention
term compares attention *probabilities* (after softmax), which is what Hugging Face returns.

Which recorder a swapped module reports to is looked up in a weak registry keyed by the module, so no
attribute is added to the module itself: a deep copy or a pickle of the student carries no reference
to the teacher, and a copy's forward simply runs without recording.

Files (this module re-exports their public names):

* :mod:`~lightning_compress.core.distill_stack`: stack discovery, ``keep_layers``, the student, what a
  Hugging Face model exposes (config, ``layer_idx``, attention maps);
* :mod:`~lightning_compress.core.distill_teacher`: matching a given teacher to the student (layer map,
  size checks, weight copy);
* :mod:`~lightning_compress.core.distill_losses`: the loss terms and reading logits / hidden states;
* :mod:`~lightning_compress.core.distill_swap`: the class swap the recorder records with;
* this file: :class:`DistillRecorder`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_compress.core.distill_losses import (
    first_tensor,
    attention_mse_loss,
    extract_logits,
    hidden_mse_loss,
    kd_logits_loss,
)
from lightning_compress.core.distill_stack import (
    build_student,
    evenly_spaced_layers,
    find_layer_stack,
    hidden_width,
    resolve_keep_layers,
    shrink_layers_,
    supports_attentions,
)
from lightning_compress.core.distill_swap import REGISTRY, swap_in, swap_out
from lightning_compress.core.distill_teacher import check_teacher, copy_from_teacher, teacher_mapping

__all__ = [
    "DistillRecorder",
    "attention_mse_loss",
    "build_student",
    "check_teacher",
    "copy_from_teacher",
    "evenly_spaced_layers",
    "extract_logits",
    "find_layer_stack",
    "hidden_mse_loss",
    "hidden_width",
    "kd_logits_loss",
    "resolve_keep_layers",
    "shrink_layers_",
    "supports_attentions",
    "teacher_mapping",
]


@dataclass
class _Call:
    student_out: Any = None
    teacher_out: Any = None
    student_hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    teacher_hidden: dict[int, torch.Tensor] = field(default_factory=dict)


class DistillRecorder:
    """Runs the teacher next to the student and keeps both outputs for the loss.

    Args:
        student: the (reduced) student model; its ``forward`` is what the training code calls.
        teacher: the frozen teacher (called with the student's arguments under ``torch.no_grad()``).
        student_blocks: the student's stack blocks whose outputs are distilled (block ``i``).
        teacher_blocks: the teacher's blocks mapped to them, same length.
        attentions: add ``output_attentions=True`` to both calls and keep the attention maps
            (Hugging Face models built with ``attn_implementation="eager"``).
        teacher_layers: indices of ``teacher_blocks`` in the teacher's stack (used to pick the mapped
            attention maps); defaults to ``range(len(teacher_blocks))``.

    Example::

        rec = DistillRecorder(student, teacher, list(student_stack), [teacher_stack[i] for i in keep],
                              teacher_layers=keep)
        with rec.recording():
            loss = criterion(student(x), y)
        terms = rec.losses(rec.pop_calls(), temperature=2.0)
        (loss + terms["logits"] + terms["hidden"]).backward()
        rec.detach()
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        student_blocks: Sequence[nn.Module] = (),
        teacher_blocks: Sequence[nn.Module] = (),
        *,
        attentions: bool = False,
        teacher_layers: Sequence[int] | None = None,
    ) -> None:
        if len(student_blocks) != len(teacher_blocks):
            raise ValueError("student_blocks and teacher_blocks must map one to one")
        if attentions:
            for who, m in (("student", student), ("teacher", teacher)):
                if not supports_attentions(m):
                    raise ValueError(
                        f"attentions=True but the {who} ({type(m).__name__}) does not return attention maps: only "
                        f"Hugging Face models built with attn_implementation='eager' do."
                    )
        self.student = student
        self.teacher = teacher
        self.student_blocks = list(student_blocks)
        self.teacher_blocks = list(teacher_blocks)
        self.teacher_layers = list(teacher_layers) if teacher_layers is not None else list(range(len(teacher_blocks)))
        self.attentions = attentions
        self.active = False
        self._calls: list[_Call] = []
        self._current: _Call | None = None
        self._teacher_running = False
        self._attached: list[nn.Module] = []
        self.attach()

    # -- install / remove
    def attach(self) -> None:
        """Class-swap the student model and the mapped blocks (idempotent)."""
        if self._attached:
            return
        items: list[tuple[nn.Module, str, int]] = [(self.student, "model", -1)]
        items += [(b, "student", i) for i, b in enumerate(self.student_blocks)]
        items += [(b, "teacher", i) for i, b in enumerate(self.teacher_blocks)]
        for module, role, index in items:
            if module in REGISTRY and REGISTRY[module][0] is not self:
                raise ValueError(f"{type(module).__name__} is already recorded by another DistillRecorder")
            swap_in(module)
            REGISTRY[module] = (self, role, index)
            self._attached.append(module)

    def detach(self) -> None:
        """Restore the original classes."""
        for module in self._attached:
            if REGISTRY.get(module, (None,))[0] is self:
                del REGISTRY[module]
            swap_out(module)
        self._attached = []

    @contextlib.contextmanager
    def recording(self) -> Iterator["DistillRecorder"]:
        """Inside this block every student call also runs the teacher and is recorded."""
        self.active = True
        try:
            yield self
        finally:
            self.active = False
            self._current = None

    def pop_calls(self) -> list[_Call]:
        calls, self._calls = self._calls, []
        return calls

    # -- called from the swapped forwards
    def _model_forward(self, module: nn.Module, base: type, args: tuple, kwargs: dict) -> Any:
        if self._current is not None:  # a nested call of the student (e.g. inside its own forward)
            return base.forward(module, *args, **kwargs)
        if self.attentions:
            kwargs = {**kwargs, "output_attentions": True}
        call = _Call()
        self._current = call
        try:
            call.student_out = base.forward(module, *args, **kwargs)
            self._teacher_running = True
            with torch.no_grad():
                call.teacher_out = self.teacher(*args, **kwargs)
        finally:
            self._teacher_running = False
            self._current = None
        self._calls.append(call)
        return call.student_out

    def _store_block(self, role: str, index: int, out: Any) -> None:
        call = self._current
        if call is None:
            return
        if role == "teacher" and self._teacher_running:
            call.teacher_hidden[index] = first_tensor(out).detach()
        elif role == "student" and not self._teacher_running:
            call.student_hidden[index] = first_tensor(out)

    # -- losses
    def losses(
        self, calls: Sequence[_Call], *, temperature: float = 1.0, logits: bool = True, hidden: bool = True
    ) -> dict[str, torch.Tensor]:
        """Loss terms averaged over the recorded calls: ``logits``, ``hidden`` (if blocks are mapped and
        ``hidden``), ``attention`` (if ``attentions``)."""
        if not calls:
            raise ValueError("no student forward was recorded")
        out: dict[str, list[torch.Tensor]] = {}
        for c in calls:
            if logits:
                out.setdefault("logits", []).append(
                    kd_logits_loss(extract_logits(c.student_out), extract_logits(c.teacher_out).detach(), temperature)
                )
            if hidden and self.student_blocks:
                missing = [i for i in range(len(self.student_blocks)) if i not in c.student_hidden or i not in c.teacher_hidden]
                if missing:
                    raise ValueError(
                        f"layers {missing} of the stack did not run during the student's/teacher's forward; "
                        f"cannot distill their hidden states (set weights['hidden']=0)."
                    )
                n = len(self.student_blocks)
                out.setdefault("hidden", []).append(
                    hidden_mse_loss([c.student_hidden[i] for i in range(n)], [c.teacher_hidden[i] for i in range(n)])
                )
            if self.attentions:
                s_att = getattr(c.student_out, "attentions", None)
                t_att = getattr(c.teacher_out, "attentions", None)
                if not s_att or not t_att:
                    raise ValueError(
                        "the model returned no attention maps for output_attentions=True: build it with "
                        "attn_implementation='eager' and return a ModelOutput, or set weights['attention']=0."
                    )
                t_sel = [t_att[j].detach() for j in self.teacher_layers]
                out.setdefault("attention", []).append(attention_mse_loss(list(s_att), t_sel))
        return {k: torch.stack(v).mean() for k, v in out.items()}
