"""``RedundancyClean``: at the end of fit, produce, save and report the slim model."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from typing_extensions import override

from lightning_compress.callbacks._sharding import sharding
from lightning_compress.core import args
from lightning_compress.core.dist import gathered
from lightning_compress.core.sharded_copy import full_model_copy
from lightning_compress.export import FORMATS, clean_for_storage, fold_batchnorm, plain_copy, save_slim, write_json
from lightning_compress.export.folder import check_output_dir, staged_dir
from lightning_compress.export.input_quant import attach_input_quant, collect_input_quant
from lightning_compress.export.save import cast_floats, model_dtype
from lightning_compress.report import compression_report, format_table, log_report, schedule_status, unfinished_warning

Format = Literal["torch_export", "safetensors", "onnx"]

_HOOK_DICTS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)


def input_from_batch(batch: Any) -> Any:
    """The forward input of a training batch: ``batch[0]`` of a tuple/list, a dict without labels."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict):
        return {k: v for k, v in batch.items() if k not in ("labels", "label", "y")}
    return batch


def _detach_cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().clone()
    if isinstance(x, dict):
        return {k: _detach_cpu(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_detach_cpu(v) for v in x)
    return x


@torch.no_grad()
def full_copy(model: nn.Module) -> nn.Module:
    """A CPU deep copy of ``model`` with full parameters (gathers ZeRO-3 partitions; collective)
    and no hooks (DeepSpeed's module hooks stay with the original)."""
    params = list(model.parameters())
    with gathered(params):
        memo: dict[int, Any] = {}
        for p in params:
            memo[id(p)] = nn.Parameter(p.data.detach().cpu().clone(), requires_grad=p.requires_grad)
        for m in model.modules():
            for attr in _HOOK_DICTS:
                d = m.__dict__.get(attr)
                if d is not None:
                    memo[id(d)] = type(d)()
        out = copy.deepcopy(model, memo)
    return out.cpu()


def check_distinct_output_dirs(trainer: Trainer) -> None:
    """Raise ValueError when two RedundancyClean callbacks of ``trainer`` write to one folder (with
    ``save=True``): the second would overwrite the first's files."""
    seen: dict[Path, int] = {}
    for i, cb in enumerate(trainer.callbacks):
        if isinstance(cb, RedundancyClean) and cb.save:
            folder = cb.output_dir.expanduser().resolve()
            if folder in seen:
                args.fail(
                    "RedundancyClean", "output_dir", str(cb.output_dir),
                    f"is shared: two RedundancyClean callbacks write this folder (callbacks[{seen[folder]}] and "
                    f"callbacks[{i}]), and one would replace the other's export", "give each RedundancyClean its own folder",
                )
            seen[folder] = i


class RedundancyClean(Callback):
    """At the end of ``fit``: bake masks, remove pruned rows/heads/channels, save and report.

    The slim model is a plain ``nn.Module`` of your own classes (no wrappers, no mask buffers) with
    every shape attribute updated (see :func:`lightning_compress.clean`).  Saved in ``output_dir``:

    * ``model.pt2``: ``torch.export`` program; ``torch.export.load(p).module()(x)`` runs it in a
      process without your model's code;
    * ``model.safetensors``: the slim weights;
    * ``model.onnx`` when ``"onnx"`` is in ``formats``;
    * ``report.json``: per-layer shapes before/after, parameters, zeros, file sizes, CPU latency
      before/after (median of interleaved runs on the example input), and under ``"schedules"`` /
      ``"complete"`` whether every compression callback on the Trainer finished its schedule
      (:func:`lightning_compress.report.schedule_status`: pruning ran its last event, WeightQuant
      reached its final bits, ActQuant is on with learned ranges).  The table is printed and the
      totals logged to the Trainer's logger.  An unfinished schedule (e.g. a fit stopped early) is
      exported as trained, with a ``UserWarning`` and an ``INCOMPLETE`` note in the report.

    Every saved form computes what the trained model computes in ``eval()``: activation
    quantization is kept as a plain input quantize-dequantize
    (:mod:`lightning_compress.export.input_quant`), a WeightQuant that never switched on is saved
    in float everywhere, and a bf16-trained model is saved (and its program / ONNX file take
    inputs) in bf16.

    The folder never holds a mix of runs: ``output_dir`` is checked at ``setup`` (not a file,
    writable, not an earlier export unless ``overwrite=True``, no foreign files), every file is
    written into a temporary sibling folder, and that folder replaces ``output_dir`` whole only once
    all files (the report included) are written (:func:`lightning_compress.export.staged_dir`).
    On a failure ``output_dir`` is left as it was.

    Under DeepSpeed ZeRO-3 the parameters are gathered on every rank in ``on_train_end`` (before
    teardown); only rank 0 writes.  The slim model is kept as ``self.slim_model`` (every rank).
    Under FSDP1 / FSDP2 the full model is gathered on rank 0 only, as one CPU copy built from the full
    state dict (see :mod:`lightning_compress.core.sharded_copy`); ``self.slim_model`` is None on the
    other ranks.

    Args:
        output_dir: folder for the files (created).
        formats: any of ``"torch_export"``, ``"safetensors"``, ``"onnx"``.
        example_input: forward input used for export and latency; default: the input of the first
            training batch (``batch[0]`` of a tuple, a dict without ``labels``).
        latency_runs: interleaved timed forwards per model for the report (0 = do not time).
        save: write files (False: only build ``slim_model`` and the report).
        fold_batchnorm: fold every ``Conv2d -> BatchNorm2d`` pair into the conv (running statistics,
            eval-mode semantics; BatchNorms become ``nn.Identity``, see
            :func:`lightning_compress.export.fold_batchnorm`).  Off by default so the saved model
            keeps the trained structure and can be fine-tuned; turn it on for inference-only
            deployment.  The report's "before" model is folded too, so its latency comparison stays
            fair; pairs left alone are listed in the report's notes.
        overwrite: replace an earlier export in ``output_dir`` (whole: no file of it is kept).
            False: such a folder is refused at ``setup``.

    Raises:
        TypeError: at ``__init__`` for an argument of the wrong type (``save="no"``, ``latency_runs=2.5``,
            ``output_dir=None``, ``overwrite=1``).
        ValueError: at ``__init__`` for an unknown format, ``formats=[]`` or a negative ``latency_runs``; at
            ``setup`` (fit) for an ``output_dir`` that is a file, holds files no export writes, holds
            an earlier export without ``overwrite=True``, or is shared with another RedundancyClean.
        PermissionError: at ``setup`` (fit) when ``output_dir`` cannot be written.

    Example (``model``, ``datamodule``: yours; ``x``: a batch of its input)::

        import torch
        from lightning.pytorch import Trainer
        from lightning_compress import ChannelPruning, RedundancyClean

        callbacks = [ChannelPruning(sparsity=0.5), RedundancyClean("slim")]
        Trainer(max_steps=1000, callbacks=callbacks).fit(model, datamodule)
        slim = torch.export.load("slim/model.pt2").module()  # runs without your model's code
        y = slim(x)  # exported in eval mode: call it as it is (it has no working .eval())
    """

    def __init__(
        self,
        output_dir: str | Path,
        formats: Sequence[Format] = ("torch_export", "safetensors"),
        example_input: Any = None,
        latency_runs: int = 10,
        save: bool = True,
        fold_batchnorm: bool = False,
        overwrite: bool = False,
    ) -> None:
        super().__init__()
        owner = "RedundancyClean"
        if not isinstance(output_dir, (str, os.PathLike)):
            args.fail(owner, "output_dir", output_dir, f"is not a path", "pass the folder to write the slim model to", TypeError)
        args.check_str(str(output_dir), "output_dir", owner, what="a folder path")
        if isinstance(formats, str):
            formats = (formats,)
        if not isinstance(formats, (list, tuple)):
            args.fail(owner, "formats", formats, "is not a list of formats", f"pass a list of {list(FORMATS)}", TypeError)
        if not formats:
            args.fail(owner, "formats", formats, "is empty, so nothing would be saved",
                      f"name at least one of {list(FORMATS)}, or pass save=False to only build the slim model and report")
        for i, f in enumerate(formats):
            args.check_choice(f, f"formats[{i}]", owner, FORMATS)
        self.output_dir = Path(output_dir)
        self.formats = tuple(formats)
        if example_input is not None and not (
            torch.is_tensor(example_input) or (isinstance(example_input, (tuple, list, dict)) and example_input)
        ):
            args.fail(owner, "example_input", example_input, "is not a forward input",
                      "pass a tensor, a non-empty tuple/list of model arguments or a dict of keyword arguments, "
                      "or None to use the first training batch", TypeError)
        self.example_input = example_input
        self.latency_runs = args.check_int(latency_runs, "latency_runs", owner, minimum=0)
        self.save = args.check_bool(save, "save", owner)
        self.fold_batchnorm = args.check_bool(fold_batchnorm, "fold_batchnorm", owner)
        self.overwrite = args.check_bool(overwrite, "overwrite", owner)
        self.schedules: list[dict[str, Any]] = []
        self._stashed: Any = None
        self.slim_model: nn.Module | None = None
        self.report: dict[str, Any] | None = None
        self.files: dict[str, str] = {}

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or not self.save:
            return
        check_distinct_output_dirs(trainer)
        check_output_dir(self.output_dir, self.overwrite)
        precision = str(getattr(trainer, "precision", ""))
        deepspeed = "deepspeed" in type(trainer.strategy).__name__.lower()
        if "onnx" in self.formats and "16" in precision and (precision.endswith("true") or deepspeed):
            raise ValueError(
                f"RedundancyClean: `formats` has 'onnx' but the model trains in precision={precision!r} (half-precision "
                f"weights); ONNX Runtime's CPU kernels do not run them, so the file could not compute what the model "
                f"does. Drop 'onnx' from `formats`, or train in float32 / '-mixed' precision."
            )

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._stashed is None and self.example_input is None:
            self._stashed = _detach_cpu(input_from_batch(batch))

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        example = self.example_input if self.example_input is not None else self._stashed
        self.schedules = schedule_status(list(trainer.callbacks))
        warning = unfinished_warning(self.schedules)
        if warning and trainer.is_global_zero:
            import warnings

            warnings.warn(f"RedundancyClean: {warning}", UserWarning, stacklevel=2)
        if sharding(trainer) != "none":
            # FSDP1 / FSDP2: one full CPU copy, on rank 0 only (collective: every rank gathers its shards)
            model = full_model_copy(trainer.strategy.model, pl_module)
            if model is None:
                self.slim_model = None
                return
        else:
            model = full_copy(pl_module)  # collective under ZeRO-3: every rank
        before = plain_copy(model)  # masks and quantizers baked, full shapes
        attach_input_quant(before, collect_input_quant(model))  # computes what the trained model does
        if self.fold_batchnorm:
            fold_batchnorm(before)  # fair latency comparison: both folded
        slim, packed, stored = clean_for_storage(model, fold_batchnorm=self.fold_batchnorm)
        slim.eval()
        before.eval()
        self.slim_model = slim
        if not trainer.is_global_zero:
            return
        notes = list(getattr(slim, "lc_clean_notes", []))
        example = cast_floats(example, model_dtype(slim))  # the precision the model was trained in
        runs = self.latency_runs if example is not None else 0
        if self.save:
            final = Path(self.output_dir)
            with staged_dir(final, self.overwrite) as tmp:
                files = save_slim(slim, tmp, example, self.formats, packed=packed, stored=stored)
                self.report = compression_report(before, slim, example, files, runs, notes, self.schedules)
                self.report["dtype"] = str(model_dtype(slim) or "mixed")  # the saved forms compute (and take inputs) in it
                self.files = {k: str(final / Path(v).name) for k, v in files.items()}
                for k, f in self.report["files"].items():
                    f["path"] = self.files[k]
                write_json(self.report, tmp / "report.json")
            self.files["report"] = str(final / "report.json")
        else:
            self.report = compression_report(before, slim, example, self.files, runs, notes, self.schedules)
            self.report["dtype"] = str(model_dtype(slim) or "mixed")
        print(format_table(self.report))
        log_report(trainer.logger, self.report, step=trainer.global_step)
