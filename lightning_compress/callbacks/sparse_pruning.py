"""``SparsePruning`` and ``SnipMomentumPruning``: unstructured, NxM-block and N:M weight sparsity."""

from __future__ import annotations

from typing import Any

from lightning_compress.callbacks._pruning import BasePruning
from lightning_compress.core.criteria import Criterion
from lightning_compress.core.patterns import Pattern
from lightning_compress.core.types import MethodName, ScheduleName, Scope


class SparsePruning(BasePruning):
    """Prune weights of Linear / Conv2d layers to a target sparsity over a schedule.

    The mask multiplies the weight inside ``forward`` (effective weight = ``weight * mask``), so it
    holds under ZeRO 2/3 and mixed precision and the model's ``state_dict`` keys do not change.
    ``RedundancyClean`` bakes the zeros into the weights at the end.

    Args:
        sparsity: fraction of the targeted weights zeroed once the schedule ends, in [0, 1).
            ``None``: ``(M-N)/M`` for an ``"N:M"`` pattern, else 0.5.
        method: ``"l1"`` / ``"magnitude"`` (|W|), ``"topk"`` (learned movement scores), ``"snip"``
            (|W*grad| of the last step), ``"snip_momentum"`` (0.9-momentum sum of |W*grad|, per
            optimizer step).
        pattern: ``"unstructured"`` (= ``"1x1"``); ``"NxM"`` blocks of N output rows x M input columns
            (``"4x1"``); ``"N:M"`` keeps N of every M consecutive weights along the input dimension
            (``"2:4"``).  Conv2d weights are seen as ``[out, in*kh*kw]``.
        schedule: ``"exp"`` | ``"cos"`` | ``"linear"`` | ``"cubic"``: sparsity after each prune event.
        start_step: optimizer step (``trainer.global_step``; counted across fits of the model, see
            *Lifecycle*) of the first prune event.
        end_step: optimizer step of the last prune event; ``None`` (= ``1.0``) = last step of the
            (first) fit.
        frequency: optimizer steps between prune events.

            For these three, an ``int`` counts optimizer steps and a ``float`` in ``(0, 1]`` is a
            fraction of this fit's ``T = trainer.estimated_stepping_batches`` optimizer steps, resolved
            at ``on_train_start``: ``end_step=0.6`` is step ``floor(0.6 * T)``, ``1.0`` the last step
            ``T - 1``; ``1`` is step 1 (the type decides); ``frequency`` is at least 1 step.
        scope: ``"global"`` ranks all targeted layers together (one threshold); ``"local"`` per layer.
        max_sparsity_per_layer: under global ranking no layer goes above this sparsity.
        modules: regexes (``re.search``) of qualified module names to prune; default: every Linear
            and Conv2d except the last one (the classifier).
        exclude: regexes of modules to leave out.
        groups: per-group settings ``{name: {"modules": [...], "sparsity": 0.8, "pattern": "2:4"}}``.

    Lifecycle: a second ``fit`` of the same model continues the schedule (a finished one stays
    finished: the masks stay, nothing is un-pruned); reused on another model the callback re-targets
    it (masks off the old model, masks / scores / events / history / position forgotten); resuming
    with ``ckpt_path`` needs the saving run's arguments; ``validate`` / ``test`` / ``predict`` with
    ``ckpt_path`` run the checkpoint's masks (see :class:`~lightning_compress.callbacks._pruning.BasePruning`).

    Raises:
        TypeError: at ``__init__`` for an argument of the wrong type (``sparsity="0.5"``,
            ``frequency=True``, ``start_step=1.7``: a float step is a fraction in (0, 1]).
        ValueError: on resume (``ckpt_path``) when an argument differs from the saving run's (the message
            names it, with both values); at ``__init__`` for an unknown method/schedule/pattern, sparsity
            outside [0, 1), ``end_step < start_step``, ``N > M`` or ``N = 0``, ``modules=[]``, a regex
            that does not compile; at ``setup`` for a regex that matches no module, a selection that
            leaves no layer, a pattern whose block does not divide a targeted weight, or a weight already
            masked by another sparsity callback; at ``on_train_start`` for an ``end_step`` after the
            fit's last optimizer step.

    Example (``model``, ``datamodule``: yours; ``x``: a batch of its input)::

        import torch
        from lightning.pytorch import Trainer
        from lightning_compress import RedundancyClean, SparsePruning

        pruning = SparsePruning(method="snip_momentum", pattern="4x1", sparsity=0.9)
        Trainer(max_steps=1000, callbacks=[pruning, RedundancyClean("slim")]).fit(model, datamodule)
        slim = torch.export.load("slim/model.pt2").module()  # runs without your model's code
        y = slim(x)  # exported in eval mode: call it as it is (it has no working .eval())
    """

    mask_kind = "sparse_mask"

    def __init__(
        self,
        sparsity: float | None = 0.5,
        method: MethodName | Criterion = "l1",
        pattern: str | Pattern = "unstructured",
        schedule: ScheduleName = "exp",
        start_step: int | float = 0,
        end_step: int | float | None = None,
        frequency: int | float = 1,
        scope: Scope = "global",
        max_sparsity_per_layer: float = 0.98,
        modules: list[str] | None = None,
        exclude: list[str] | None = None,
        groups: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(
            sparsity=sparsity,
            method=method,
            pattern=pattern,
            schedule=schedule,
            start_step=start_step,
            end_step=end_step,
            frequency=frequency,
            scope=scope,
            max_sparsity_per_layer=max_sparsity_per_layer,
            modules=modules,
            exclude=exclude,
            groups=groups,
        )


class SnipMomentumPruning(SparsePruning):
    """``SparsePruning(method="snip_momentum")``: score ``S <- 0.9 S + |W * dL/dW|`` each optimizer step.

    Args: as :class:`SparsePruning`, without ``method``.

    Example (``model``, ``datamodule``: yours; ``x``: a batch of its input)::

        import torch
        from lightning.pytorch import Trainer
        from lightning_compress import RedundancyClean, SnipMomentumPruning

        callbacks = [SnipMomentumPruning(pattern="4x1", sparsity=0.9), RedundancyClean("slim")]
        Trainer(max_steps=1000, callbacks=callbacks, strategy="deepspeed").fit(model, datamodule)  # CUDA or CPU
        slim = torch.export.load("slim/model.pt2").module()  # runs without your model's code
        y = slim(x)  # exported in eval mode: call it as it is (it has no working .eval())
    """

    def __init__(
        self,
        sparsity: float | None = 0.5,
        pattern: str | Pattern = "4x1",
        schedule: ScheduleName = "exp",
        start_step: int | float = 0,
        end_step: int | float | None = None,
        frequency: int | float = 1,
        scope: Scope = "global",
        max_sparsity_per_layer: float = 0.98,
        modules: list[str] | None = None,
        exclude: list[str] | None = None,
        groups: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(
            sparsity=sparsity,
            method="snip_momentum",
            pattern=pattern,
            schedule=schedule,
            start_step=start_step,
            end_step=end_step,
            frequency=frequency,
            scope=scope,
            max_sparsity_per_layer=max_sparsity_per_layer,
            modules=modules,
            exclude=exclude,
            groups=groups,
        )
