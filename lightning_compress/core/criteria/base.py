"""``Criterion``: how a pruning method scores weights (higher score = more important = kept longer),
its per-weight state, and the name table that maps ``method`` strings to criteria.

A criterion is one object with

* ``needs_grad``: :meth:`Criterion.update` reads the full weight and its full reduced gradient once per
  optimizer step (at the gradient-accumulation boundary, never per micro-batch);
* ``hooks_forward``: the criterion gets its per-step signal from a forward transform it puts on the
  weight (:meth:`Criterion.forward_transform`; ``topk``'s straight-through accumulator) instead of from
  the gradient;
* :meth:`Criterion.per_weight_state`: a :class:`ScoreState` (fp32 score of the weight's shape, steps
  scored, extra tensors) that :meth:`Criterion.update` folds one optimizer step into;
* :meth:`Criterion.score`: the full score tensor at a prune event;
* :meth:`Criterion.signal` / :meth:`Criterion.accumulate`: one step's per-weight signal and how it is
  folded into the score; structured pruning reduces the signal to units (rows, heads, channels) with
  :func:`lightning_compress.core.units.unit_reduce` before folding, so both share the criteria;
* state: :meth:`ScoreState.state_dict` / :meth:`ScoreState.load_state_dict` (extra tensors through the
  criterion's :meth:`Criterion.state_dict` / :meth:`Criterion.load_state_dict`).

Adding a criterion is one class in one file::

    @register_criterion("grad_abs")
    class GradAbs(Criterion):
        needs_grad = True
        def signal(self, weight, grad):
            return grad.abs()

after which every ``method`` argument accepts ``"grad_abs"`` (or ``GradAbs()``).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, TypeVar

import torch


from lightning_compress.core.masking import TransformFn, mask_transform

#: name -> criterion class (aliases point at the same class)
CRITERIA: dict[str, type["Criterion"]] = {}

C = TypeVar("C", bound=type["Criterion"])


def register_criterion(*names: str) -> Callable[[C], C]:
    """Class decorator: make ``method=<name>`` build this criterion (the first name is canonical)."""

    def deco(cls: C) -> C:
        if not names:
            raise ValueError(f"register_criterion: give at least one name for {cls.__name__}.")
        cls.name = names[0]
        for n in names:
            CRITERIA[n] = cls
        return cls

    return deco


def resolve_criterion(method: "str | Criterion | type[Criterion]", owner: str = "") -> "Criterion":
    """A criterion object from a registered name, a :class:`Criterion` instance or a subclass.

    Raises:
        ValueError: an unknown name; TypeError: another type (both name ``owner`` and the registered names).
    """
    prefix = f"{owner}: " if owner else ""
    if isinstance(method, Criterion):
        return method
    if isinstance(method, type) and issubclass(method, Criterion):
        return method()
    if isinstance(method, str) and method in CRITERIA:
        return CRITERIA[method]()
    raise (ValueError if isinstance(method, str) else TypeError)(
        f"{prefix}`method`={method!r} is unknown; choose one of {tuple(CRITERIA)} or pass a "
        f"lightning_compress.core.criteria.Criterion (register a new one with @register_criterion)."
    )


class ScoreState:
    """Per-weight (or per-unit) score state of one target under one criterion.

    Attributes:
        criterion: the :class:`Criterion` that updates and reads this state.
        shape: shape of the score (the weight's full shape; ``(num_units,)`` for unit groups).
        score: accumulated score (``None`` until a step was scored).
        steps: optimizer steps scored so far.
        extra: criterion-owned tensors (``topk``: ``"acc"``, the movement of the current step).
    """

    def __init__(self, criterion: "Criterion", shape: torch.Size | tuple[int, ...], device: torch.device | str = "cpu") -> None:
        self.criterion = criterion
        self.shape = torch.Size(shape)
        self.device = torch.device(device)
        self.score: torch.Tensor | None = None
        self.steps = 0
        self.extra: dict[str, torch.Tensor] = {}

    @property
    def method(self) -> str:
        return self.criterion.name

    @property
    def needs_grad(self) -> bool:
        return self.criterion.needs_grad

    @property
    def acc(self) -> torch.Tensor | None:  # topk's accumulator (kept as an attribute for readers)
        return self.extra.get("acc")

    def update(self, weight: torch.Tensor | None, grad: torch.Tensor | None) -> None:
        self.criterion.update(self, weight, grad)

    def value(self, effective_weight: torch.Tensor) -> torch.Tensor:
        return self.criterion.score(self, lambda: effective_weight)

    def ready(self) -> bool:
        return self.criterion.ready(self)

    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "score": None if self.score is None else self.score.cpu(),
            "steps": self.steps,
            **self.criterion.state_dict(self),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.score = None if state.get("score") is None else state["score"].clone()
        self.steps = int(state.get("steps", 0))
        self.criterion.load_state_dict(self, state)


class Criterion:
    """Base of every pruning criterion (see the module docstring).  The base is magnitude-like: no
    per-step state, score ``|W * mask|``; subclasses override what differs."""

    #: canonical name (set by :func:`register_criterion`)
    name: ClassVar[str] = ""
    #: :meth:`update` reads the full weight and full reduced gradient every optimizer step
    needs_grad: ClassVar[bool] = False
    #: the per-step signal comes from :meth:`forward_transform` (not from the gradient)
    hooks_forward: ClassVar[bool] = False
    #: keep updating after the last prune event (a forward accumulator must keep being drained)
    always_update: ClassVar[bool] = False
    #: structured pruning (rows / heads / channels) may use it
    structured: ClassVar[bool] = False

    @property
    def learns(self) -> bool:
        """The score changes from optimizer steps (gradient or forward signal)."""
        return self.needs_grad or self.hooks_forward

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------------ state
    def per_weight_state(self, shape: torch.Size | tuple[int, ...], device: torch.device | str = "cpu") -> ScoreState:
        """Fresh state for a score of ``shape`` (a weight's full shape, or ``(num_units,)``)."""
        return ScoreState(self, shape, device)

    def state_dict(self, state: ScoreState) -> dict[str, Any]:
        """Extra entries of ``state.state_dict()`` (besides score and steps)."""
        return {}

    def load_state_dict(self, state: ScoreState, saved: dict[str, Any]) -> None:
        """Restore the extra entries written by :meth:`state_dict`."""

    # ------------------------------------------------------------------ forward
    def forward_transform(self, state: ScoreState, mask_buffer: str) -> TransformFn:
        """The transform that applies the bool buffer ``mask_buffer`` in forward (default:
        ``weight * mask`` via the uint8 view)."""
        return mask_transform(mask_buffer)

    # ------------------------------------------------------------------ one optimizer step
    def signal(self, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor | None:
        """One optimizer step's per-weight signal from the full fp32 weight and reduced gradient
        (None: the criterion learns nothing from steps)."""
        return None

    def accumulate(self, state: ScoreState, signal: torch.Tensor) -> None:
        """Fold one step's signal (per weight, or reduced to units) into ``state.score``
        (default: replace)."""
        state.score = signal
        state.steps += 1

    def update(self, state: ScoreState, weight: torch.Tensor | None, grad: torch.Tensor | None) -> None:
        """Once per optimizer step.  ``weight``/``grad``: full fp32 tensors when :attr:`needs_grad`
        (None otherwise).  Non-finite signals (overflowed fp16 steps) are skipped, as the optimizer
        skips the step."""
        if weight is None or grad is None:
            return
        signal = self.signal(weight, grad)
        if signal is None or not torch.isfinite(signal.sum()):
            return
        self.accumulate(state, signal)

    # ------------------------------------------------------------------ prune event
    def weight_score(self, weight: torch.Tensor) -> torch.Tensor:
        """Score from the weight alone (magnitude; also the fallback before any scored step)."""
        return weight.abs()

    def has_score(self, state: ScoreState) -> bool:
        """``state.score`` is the score to rank by (else :meth:`weight_score` is used)."""
        return self.learns and state.score is not None

    def score(self, state: ScoreState, weight: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Full score at a prune event.  ``weight()`` gives the full fp32 effective weight
        ``W * mask`` (called only when needed: under ZeRO-3 it gathers)."""
        if self.has_score(state):
            assert state.score is not None
            return state.score
        return self.weight_score(weight())

    def ready(self, state: ScoreState) -> bool:
        """Gradient criteria need one scored optimizer step before they can rank."""
        return not self.needs_grad or state.steps > 0




__all__ = ["CRITERIA", "Criterion", "ScoreState", "register_criterion", "resolve_criterion"]
