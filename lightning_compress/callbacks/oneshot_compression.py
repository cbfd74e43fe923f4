"""``OneShotCompression``: one-shot SparseGPT / Wanda / GPTQ / SmoothQuant from the Trainer's own data."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import nn
from typing_extensions import override

from lightning_compress.callbacks._base import CompressionCallback
from lightning_compress.core import masking
from lightning_compress.core.args import check_bool, check_callable, check_choice, check_int, check_str
from lightning_compress.oneshot.api import check_methods, oneshot
from lightning_compress.oneshot.methods import OneShotMethod
from lightning_compress.oneshot.saved_state import calibration_state, restore_calibration
from lightning_compress.oneshot.sequential import OneShotReport

NAME = "OneShotCompression"


def default_forward(model: nn.Module, batch: Any) -> Any:
    """A dict batch as keyword arguments, a tensor as the argument, a tuple / list: its first element
    (the ``(inputs, targets)`` convention)."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)


class OneShotCompression(CompressionCallback):
    """Compress the model once, layer by layer, from the first ``calib_batches`` batches of the
    Trainer's own train (or validation) dataloader (see :func:`lightning_compress.oneshot.oneshot`).

    When:

    * ``trainer.fit``: in ``setup(stage="fit")``, the last hook before the strategy builds its engine /
      optimizer (DESIGN section 3), so the optimizer (and DeepSpeed's fp32 master copy) starts from the
      compressed weights and fine-tuning keeps the masks (they act in forward; pruned weights get zero
      gradient) and the GPTQ quantizers (straight-through).
    * ``trainer.validate`` (no fit before): in ``on_validation_start``, with the model already on its
      device and, under ZeRO-3, partitioned: each decoder layer's parameters are gathered for its own
      calibration step only (``deepspeed.zero.GatheredParameters``, rank 0's result broadcast).
    * Calibration runs once per model; later stages see the compressed model.
    * Resume (``fit(..., ckpt_path=...)``): the checkpoint's state (every mask and quantizer range of the
      calibration that made it, see :mod:`lightning_compress.oneshot.saved_state`) replaces this run's
      calibration when Lightning restores the callback (right after it restored the checkpoint's
      weights), so the resumed run equals the uninterrupted one.  Lightning makes the checkpoint known
      only after ``setup``, so the calibration at ``setup`` still runs (its time is paid again) and is
      then dropped.  A checkpoint without that state (written without this callback) is refused at
      ``on_fit_start``, before any training step: this run's masks and ranges come from other weights
      than the checkpoint's.  ``trainer.validate(..., ckpt_path=...)`` restores instead of calibrating.
      Under DeepSpeed a restore is refused (``RuntimeError``, not tested there yet).

    Under ``torch.distributed`` every rank calibrates on rank 0's batches (broadcast), and masks and
    ranges are broadcast from rank 0, so all ranks hold the same model, equal to a 1-process run on the
    same batches.

    Args:
        methods: one-shot method objects, e.g. ``[SparseGPT(0.5, "2:4"), GPTQ(4)]``.
        calib_batches: how many batches of the dataloader to calibrate on (>= 1).
        dataloader: ``"train"`` or ``"val"`` (in ``trainer.validate`` the validation loader is always used).
        forward: ``(pl_module, batch) -> anything``: how a batch is fed (default :func:`default_forward`).
        layers: qualified name of the decoder stack inside the LightningModule (None: found).

    Raises:
        ValueError: bad ``methods`` / ``calib_batches`` / ``dataloader`` (at construction); no dataloader of
            the asked kind, or a layer the methods cannot fit (at setup).

    Example (``model``, ``datamodule``: yours, with a decoder/encoder layer stack; ``x``: a batch of its input)::

        import torch
        from lightning.pytorch import Trainer
        from lightning_compress import OneShotCompression, RedundancyClean
        from lightning_compress.oneshot import Wanda

        callbacks = [OneShotCompression([Wanda(0.5)], calib_batches=4), RedundancyClean("slim")]
        Trainer(max_steps=1000, callbacks=callbacks).fit(model, datamodule)
        slim = torch.export.load("slim/model.pt2").module()  # runs without your model's code
        y = slim(x)  # exported in eval mode: call it as it is (it has no working .eval())
    """

    def __init__(
        self,
        methods: OneShotMethod | Sequence[OneShotMethod],
        calib_batches: int = 16,
        dataloader: Literal["train", "val"] = "train",
        forward: Callable[[nn.Module, Any], Any] | None = None,
        layers: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__()
        self.methods = check_methods(methods, NAME)
        self.calib_batches = check_int(calib_batches, "calib_batches", NAME, minimum=1,
                                       fix="pass how many batches to calibrate on (>= 1)")
        self.dataloader = check_choice(dataloader, "dataloader", NAME, ("train", "val"))
        self.forward = check_callable(forward, "forward", NAME, what="a function (pl_module, batch) -> output") or default_forward
        self.layers = check_str(layers, "layers", NAME, allow_none=True, what="the qualified name of the layer stack")
        self.verbose = check_bool(verbose, "verbose", NAME)
        #: the calibration report (None before calibration and after a resume, which does not calibrate)
        self.report: OneShotReport | None = None
        #: True once the model carries a calibration (this run's or a checkpoint's)
        self.calibrated = False
        #: True once a checkpoint's calibration was restored
        self.restored = False
        self._strategy = ""  # the DeepSpeed strategy's class name, "" for any other strategy

    @override
    def identity(self) -> dict[str, Any]:
        return {"methods": [m.describe() for m in self.methods], "layers": self.layers}

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "validate":
            self.attach(pl_module, trainer, "validate")

    def attach_model(self, trainer: Trainer | None, model: nn.Module, stage: str | None) -> None:
        if trainer is None:
            raise ValueError(f"{NAME}: needs a Trainer (use lightning_compress.oneshot.oneshot without one).")
        self._strategy = type(trainer.strategy).__name__ if isinstance(trainer.strategy, DeepSpeedStrategy) else ""
        if (self._pending_state or {}).get("done"):
            # a checkpoint's calibration arrived first (trainer.validate(ckpt_path=...)): apply_state restores it
            self.modules_touched = {}
            return
        kind = "val" if stage == "validate" else self.dataloader
        batches = self._batches(trainer, model, kind)
        self.report = oneshot(model, self.methods, batches, layers=self.layers, forward=self.forward,
                              owner=self.owner, verbose=self.verbose)
        self.calibrated = True
        self.modules_touched = {n: m for n, m in model.named_modules() if any(
            o == self.owner for p in masking.transformed_params(m) for o, _ in masking.owners(m, p))
            or any(o == self.owner for o, _ in masking.owners(m))}

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path is not None and not self.restored:
            raise RuntimeError(
                f"{NAME}: resuming from ckpt_path={str(trainer.ckpt_path)!r}, but that checkpoint holds no {NAME} "
                f"state with these arguments (it was written without {NAME}), so this run's calibration (of the "
                f"weights before the checkpoint was loaded) does not fit the checkpoint's weights. Load its weights "
                f"into the model and fit without `ckpt_path` to calibrate them, or resume from a checkpoint written "
                f"with {NAME}."
            )

    def _batches(self, trainer: Trainer, model: nn.Module, kind: str) -> list[Any]:
        loop = trainer.fit_loop if kind == "train" else (trainer.validate_loop if trainer.state.fn == "validate" else trainer.fit_loop.epoch_loop.val_loop)
        try:
            loader = loop._data_source.dataloader()  # what Lightning will iterate (the hook or the instance)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{NAME}: could not get the {kind} dataloader ({e}); pass one to the Trainer call.") from None
        if loader is None:
            raise ValueError(f"{NAME}: `dataloader`={kind!r} but the Trainer has no {kind} dataloader; pass one or use "
                             f"dataloader={'val' if kind == 'train' else 'train'!r}.")
        if isinstance(loader, (list, tuple)):
            loader = loader[0]
        batches = list(itertools.islice(iter(loader), self.calib_batches))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            holder = [batches]
            torch.distributed.broadcast_object_list(holder, src=0)
            batches = holder[0]
        device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
        return [_to(b, device) for b in batches]

    # ------------------------------------------------------------------ state
    @override
    def reset_state(self) -> None:
        self.report = None
        self.calibrated = False
        self.restored = False

    @override
    def arguments(self) -> dict[str, Any]:
        return {**self.identity(), "calib_batches": self.calib_batches, "dataloader": self.dataloader}

    @override
    def own_state(self) -> dict[str, Any]:
        model = self.attached_model
        if not self.calibrated or model is None:
            return {"done": False}
        return {"done": True, "calibration": calibration_state(model, self.owner)}

    @override
    def apply_state(self, state: dict[str, Any]) -> None:
        if not state.get("done"):
            return
        if "calibration" not in state:
            raise RuntimeError(_OLD_CHECKPOINT)
        if self._strategy:  # a DeepSpeed strategy
            raise RuntimeError(
                f"{NAME}: restoring a checkpoint's calibration under {self._strategy} is not supported yet (only "
                f"single-process and DDP-style strategies are tested; ZeRO partitions the weights the masks refer "
                f"to). Resume this checkpoint without DeepSpeed, or calibrate again from the dense model without "
                f"`ckpt_path`."
            )
        model = self.attached_model
        assert model is not None
        for module in self.modules_touched.values():  # this run's calibration, if any: replaced
            masking.remove_owner(module, self.owner)
        self.modules_touched = restore_calibration(model, state["calibration"], self.owner)
        self.report = None
        self.calibrated = self.restored = True


_OLD_CHECKPOINT = (
    f"{NAME}: the checkpoint comes from a run that already calibrated, but it was written before {NAME} stored "
    f"its masks and quantizer ranges, so resuming would pair a new calibration with the checkpoint's fine-tuned "
    f"weights. Resume without {NAME} from a `clean`-ed model, or calibrate again from the dense model without "
    f"`ckpt_path`."
)


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


__all__ = ["OneShotCompression", "default_forward"]
