"""Matching a given teacher to a reduced student: which teacher layer each student layer learns from
(:func:`teacher_mapping`), whether their sizes allow the hidden / attention terms (:func:`check_teacher`),
and loading named modules' weights from the teacher (:func:`copy_from_teacher`).  Pure PyTorch."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lightning_compress.core.distill_stack import evenly_spaced_layers, hidden_width


def teacher_mapping(
    keep: Sequence[int], n_student: int, n_teacher: int, *, stack: str = "", owner: str = "LayerReductionKD"
) -> list[int]:
    """Teacher layer index for each kept student layer: the kept indices themselves when the teacher has
    the student's original depth ``n_student``, else the uniform map ``(i + 1) * n_teacher // len(keep) - 1``.

    Raises:
        ValueError: the teacher has fewer layers than the student keeps.
    """
    if n_teacher == n_student:
        return list(keep)
    if len(keep) > n_teacher:
        raise ValueError(
            f"{owner}: the `teacher` has {n_teacher} layers in {stack!r}, fewer than the {len(keep)} the student "
            f"keeps; give a deeper teacher or keep fewer layers."
        )
    return evenly_spaced_layers(len(keep), n_teacher)


def check_teacher(
    student: nn.Module,
    teacher: nn.Module,
    student_blocks: Sequence[nn.Module],
    teacher_blocks: Sequence[nn.Module],
    *,
    hidden: bool,
    attention: bool,
    owner: str = "LayerReductionKD",
) -> None:
    """Raise ValueError when the hidden-state term (``hidden``) or the attention term (``attention``) cannot
    compare ``student`` and ``teacher``: different hidden sizes (a Hugging Face ``config.hidden_size``, else
    each mapped block pair's output width, :func:`hidden_width`) or head counts (``config.num_attention_heads``)."""
    s_cfg, t_cfg = getattr(student, "config", None), getattr(teacher, "config", None)
    if hidden:
        s_h, t_h = getattr(s_cfg, "hidden_size", None), getattr(t_cfg, "hidden_size", None)
        pairs = [(s_h, t_h, "config.hidden_size")] if s_h is not None and t_h is not None else [
            (hidden_width(s), hidden_width(t), f"the output width of layer {i}")
            for i, (s, t) in enumerate(zip(student_blocks, teacher_blocks))
        ]
        for s_w, t_w, what in pairs:
            if s_w is not None and t_w is not None and s_w != t_w:
                raise ValueError(
                    f"{owner}: `teacher` ({type(teacher).__name__}) has hidden size {t_w} but the student has "
                    f"{s_w} ({what}): the hidden-state MSE needs equal sizes. Set weights['hidden']=0 (logits-only "
                    f"distillation) or give a teacher of hidden size {s_w}; no projection is learned."
                )
    if attention:
        s_a, t_a = getattr(s_cfg, "num_attention_heads", None), getattr(t_cfg, "num_attention_heads", None)
        if s_a is not None and t_a is not None and s_a != t_a:
            raise ValueError(
                f"{owner}: `teacher` has {t_a} attention heads, the student {s_a}: the attention MSE needs equal "
                f"head counts. Set weights['attention']=0."
            )


def copy_from_teacher(
    student: nn.Module,
    teacher: nn.Module,
    names: Sequence[str],
    stack: str,
    mapping: Sequence[int],
    *,
    owner: str = "LayerReductionKD",
) -> None:
    """Load the weights of each module named in ``names`` (relative to both models) from ``teacher`` into
    ``student``; naming the layer stack ``stack`` copies teacher layer ``mapping[i]`` into student layer ``i``.

    Raises:
        ValueError: a name is not a submodule of both models, or the shapes differ.
    """
    for name in names:
        try:
            dst = student.get_submodule(name) if name else student
            src = teacher.get_submodule(name) if name else teacher
        except AttributeError:
            raise ValueError(
                f"{owner}: `copy_modules` entry {name!r} is not a submodule of both the student "
                f"({type(student).__name__}) and the teacher ({type(teacher).__name__}); name modules relative to "
                f"the network, e.g. 'bert.embeddings'."
            ) from None
        pairs = (
            [(f"{name}.{i}", d, src[j]) for i, (d, j) in enumerate(zip(dst, mapping))]
            if name == stack
            else [(name, dst, src)]
        )
        for qual, d, s in pairs:
            try:
                d.load_state_dict(s.state_dict())
            except RuntimeError as err:
                raise ValueError(
                    f"{owner}: `copy_modules` cannot copy {qual!r} from the teacher: shapes differ ({err}). "
                    f"Remove it from copy_modules."
                ) from None
