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
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_compress.core.masking import cached_subclass

__all__ = [
    "DistillRecorder",
    "attention_mse_loss",
    "build_student",
    "evenly_spaced_layers",
    "extract_logits",
    "find_layer_stack",
    "hidden_mse_loss",
    "hidden_width",
    "kd_logits_loss",
    "resolve_keep_layers",
    "shrink_layers_",
]


# ----------------------------------------------------------------------------------------- stack discovery
def _base_class(module: nn.Module) -> type:
    """The user's class of ``module`` under any class swap (masking or recording, in any order)."""
    cls = type(module)
    original = module.__dict__.get("_lc_original_class")
    for _ in range(4):
        if cls in _RECORDING_BASE:
            cls = _RECORDING_BASE[cls]
        elif original is not None and cls is not original and issubclass(cls, original):
            cls = original
        else:
            break
    return cls


def _is_stack(module: nn.Module) -> bool:
    if not isinstance(module, (nn.ModuleList, nn.Sequential)):
        return False
    children = list(module.children())
    if len(children) < 2:
        return False
    first = _base_class(children[0])
    if not all(_base_class(c) is first for c in children):
        return False
    # blocks, not loose activations: every block holds parameters
    return all(any(True for _ in c.parameters()) for c in children)


def _stack_candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if _is_stack(m)]


def find_layer_stack(
    model: nn.Module, layers: str | None = None, *, owner: str = "LayerReductionKD"
) -> tuple[str, nn.Module]:
    """Return ``(qualified name, container)`` of the model's layer stack.

    With ``layers`` given, that submodule is used (it must be an ``nn.ModuleList`` / ``nn.Sequential``).
    Otherwise: the ``nn.ModuleList`` / ``nn.Sequential`` whose children are 2+ blocks of one class (each
    holding parameters); for a Hugging Face model (``model.config.num_hidden_layers``) the stacks of that
    length are preferred; then the longest, then the shallowest.  Two equally good stacks (e.g. an
    encoder-decoder) are ambiguous and raise.

    Raises:
        ValueError: ``layers`` names no module or not a ModuleList/Sequential; no stack found; ambiguous.
    """
    if layers is not None:
        try:
            container = model.get_submodule(layers) if layers else model
        except AttributeError:
            cands = [n for n, _ in _stack_candidates(model)]
            raise ValueError(
                f"{owner}: `layers`={layers!r} names no submodule of {type(model).__name__}. "
                f"Layer stacks found automatically: {cands or 'none'}; pass one of them (or layers=None)."
            ) from None
        if not isinstance(container, (nn.ModuleList, nn.Sequential)) or len(container) < 1:
            raise ValueError(
                f"{owner}: `layers`={layers!r} is a {type(container).__name__}, not a non-empty nn.ModuleList or "
                f"nn.Sequential of blocks. Pass the qualified name of the container that holds the repeated "
                f"blocks (e.g. 'bert.encoder.layer', 'model.layers', 'transformer.h')."
            )
        return layers, container
    cands = _stack_candidates(model)
    if not cands:
        raise ValueError(
            f"{owner}: found no layer stack in {type(model).__name__} (an nn.ModuleList / nn.Sequential of 2 or "
            f"more blocks of one class). Pass `layers` = the qualified name of the container holding the "
            f"layers, e.g. layers='bert.encoder.layer' (Hugging Face BERT), 'model.layers' (Llama), "
            f"'transformer.h' (GPT-2), or put your blocks in an nn.ModuleList / nn.Sequential."
        )
    n_cfg = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if isinstance(n_cfg, int):
        matching = [(n, m) for n, m in cands if len(m) == n_cfg]
        if matching:
            cands = matching
    best = max(len(m) for _, m in cands)
    cands = [(n, m) for n, m in cands if len(m) == best]
    depth = min(n.count(".") if n else -1 for n, _ in cands)
    cands = [(n, m) for n, m in cands if (n.count(".") if n else -1) == depth]
    if len(cands) > 1:
        raise ValueError(
            f"{owner}: several layer stacks of {best} blocks in {type(model).__name__}: "
            f"{[n for n, _ in cands]}. Pass `layers` = the one to reduce."
        )
    return cands[0]


# ------------------------------------------------------------------------------------------ keep_layers
def evenly_spaced_layers(k: int, n: int) -> list[int]:
    """``k`` of ``n`` layer indices, evenly spaced and ending at the last layer.

    Student layer ``i`` takes teacher layer ``(i + 1) * n // k - 1`` (TinyBERT's uniform map): 6 of 12
    gives ``[1, 3, 5, 7, 9, 11]``, 4 of 12 gives ``[2, 5, 8, 11]``.
    """
    if not 1 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} layers")
    return [(i + 1) * n // k - 1 for i in range(k)]


def resolve_keep_layers(
    keep_layers: int | Sequence[int], num_layers: int, *, owner: str = "LayerReductionKD", stack: str = ""
) -> list[int]:
    """Checked list of kept layer indices (an int keeps that many, evenly spaced).

    Raises:
        ValueError: out of range, duplicated, empty, not increasing-sortable integers, or an int outside
            ``[1, num_layers]``.
    """
    where = f"the layer stack {stack!r} ({num_layers} layers)" if stack else f"the layer stack ({num_layers} layers)"
    if isinstance(keep_layers, bool):
        raise ValueError(f"{owner}: `keep_layers` must be an int or a list of ints, got {keep_layers!r}.")
    if isinstance(keep_layers, int):
        if not 1 <= keep_layers <= num_layers:
            raise ValueError(
                f"{owner}: `keep_layers`={keep_layers} is out of range for {where}: keep between 1 and {num_layers}."
            )
        return evenly_spaced_layers(keep_layers, num_layers)
    keep = list(keep_layers)
    if not keep:
        raise ValueError(f"{owner}: `keep_layers` is empty; list at least one layer index of {where}.")
    for i in keep:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"{owner}: `keep_layers` entries must be ints, got {i!r}.")
    bad = [i for i in keep if not 0 <= i < num_layers]
    if bad:
        raise ValueError(
            f"{owner}: `keep_layers` {bad} out of range for {where}: indices must be in 0..{num_layers - 1}."
        )
    dup = sorted({i for i in keep if keep.count(i) > 1})
    if dup:
        raise ValueError(f"{owner}: `keep_layers` lists layer(s) {dup} more than once; each layer can be kept once.")
    if keep != sorted(keep):
        raise ValueError(
            f"{owner}: `keep_layers` {keep} is not in increasing order; the student keeps the teacher's layer "
            f"order, pass {sorted(keep)}."
        )
    return keep


# ------------------------------------------------------------------------------------------ student
def _set_stack(container: nn.Module, kept: list[nn.Module]) -> None:
    container._modules.clear()
    container._modules.update(OrderedDict((str(i), m) for i, m in enumerate(kept)))


def shrink_layers_(model: nn.Module, stack_name: str, keep: Sequence[int]) -> nn.Module:
    """Keep only layers ``keep`` of ``model``'s stack ``stack_name``, in place; returns ``model``.

    The container object stays (its children are replaced by the kept layer objects, renumbered
    ``0..len(keep)-1``), so kept weights are untouched.  A Hugging Face config gets
    ``num_hidden_layers = len(keep)`` (and ``layer_types`` sliced); each kept layer's submodules with an
    int ``layer_idx`` get their new index (KV caches index by it).
    """
    container = model.get_submodule(stack_name) if stack_name else model
    layers = list(container.children())
    kept = [layers[i] for i in keep]
    _set_stack(container, kept)
    for new_idx, layer in enumerate(kept):
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int) and not isinstance(m.layer_idx, bool):
                m.layer_idx = new_idx
    config = getattr(model, "config", None)
    if config is not None and isinstance(getattr(config, "num_hidden_layers", None), int):
        if config.num_hidden_layers == len(layers):
            config.num_hidden_layers = len(keep)
            types = getattr(config, "layer_types", None)
            if isinstance(types, (list, tuple)) and len(types) == len(layers):
                config.layer_types = [types[i] for i in keep]
    return model


def build_student(
    model: nn.Module, keep_layers: int | Sequence[int], layers: str | None = None
) -> tuple[nn.Module, str, list[int]]:
    """A deep copy of ``model`` keeping ``keep_layers`` of its stack: ``(student, stack name, keep)``."""
    name, container = find_layer_stack(model, layers)
    keep = resolve_keep_layers(keep_layers, len(container), stack=name)
    student = copy.deepcopy(model)
    shrink_layers_(student, name, keep)
    return student, name, keep


def hidden_width(block: nn.Module) -> int | None:
    """Best guess of a block's output width: the last Linear ``out_features`` / LayerNorm size / Conv
    ``out_channels`` registered in it (``None`` if it has none of those)."""
    width = None
    for m in block.modules():
        if isinstance(m, nn.Linear):
            width = m.out_features
        elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and m.normalized_shape:
            width = int(m.normalized_shape[-1])
        elif isinstance(m, nn.modules.conv._ConvNd):
            width = m.out_channels
        elif type(m).__name__.endswith(("LayerNorm", "RMSNorm")) and getattr(m, "weight", None) is not None:
            width = int(m.weight.shape[-1])
    return width


# ------------------------------------------------------------------------------------------ losses
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


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hs = getattr(output, "last_hidden_state", None)
    if isinstance(hs, torch.Tensor):
        return hs
    raise ValueError(f"a layer returned {type(output).__name__}; cannot find its hidden state tensor")


# ------------------------------------------------------------------------------------------ recording
class _RecordingMixin:
    """Placed in front of a module's class: forwards to the original and reports to its recorder."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        base = _RECORDING_BASE[type(self)]
        entry = _REGISTRY.get(self)  # type: ignore[arg-type]
        if entry is None or not entry[0].active:
            return base.forward(self, *args, **kwargs)
        recorder, role, index = entry
        if role == "model":
            return recorder._model_forward(self, base, args, kwargs)
        out = base.forward(self, *args, **kwargs)
        recorder._store_block(role, index, out)
        return out


_RECORDING_CLASSES: dict[type, type] = {}
_RECORDING_BASE: dict[type, type] = {}
#: module -> (recorder, role: "model" | "student" | "teacher", block index)
_REGISTRY: "weakref.WeakKeyDictionary[nn.Module, tuple[DistillRecorder, str, int]]" = weakref.WeakKeyDictionary()


def _recording_class(cls: type) -> type:
    new_cls = cached_subclass(_RecordingMixin, cls, "Recording", __name__, _RECORDING_CLASSES)
    _RECORDING_BASE[new_cls] = cls
    return new_cls


def _swap_in(module: nn.Module) -> None:
    if not isinstance(module, _RecordingMixin):
        module.__class__ = _recording_class(type(module))


def _swap_out(module: nn.Module) -> None:
    if isinstance(module, _RecordingMixin) and type(module) in _RECORDING_BASE:
        module.__class__ = _RECORDING_BASE[type(module)]


def _accepts_kwarg(module: nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


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
            if module in _REGISTRY and _REGISTRY[module][0] is not self:
                raise ValueError(f"{type(module).__name__} is already recorded by another DistillRecorder")
            _swap_in(module)
            _REGISTRY[module] = (self, role, index)
            self._attached.append(module)

    def detach(self) -> None:
        """Restore the original classes."""
        for module in self._attached:
            if _REGISTRY.get(module, (None,))[0] is self:
                del _REGISTRY[module]
            _swap_out(module)
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
            call.teacher_hidden[index] = _first_tensor(out).detach()
        elif role == "student" and not self._teacher_running:
            call.student_hidden[index] = _first_tensor(out)

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


def supports_attentions(model: nn.Module) -> bool:
    """Whether ``model`` returns attention maps for ``output_attentions=True`` (a Hugging Face model with
    eager attention)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "output_attentions"):
        return False
    impl = getattr(config, "_attn_implementation", None) or "eager"
    return impl == "eager" and _accepts_kwarg(model, "output_attentions")

