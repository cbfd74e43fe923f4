"""``DeepSpeedCompressionStrategy``: Lightning's DeepSpeed strategy that also runs on CPU.

On CUDA (any accelerator but the CPU) it runs :class:`lightning.pytorch.strategies.DeepSpeedStrategy`'s
code.  On the CPU accelerator it skips the CUDA-only checks (``setup_environment``'s accelerator test and
the device index validation of ``setup_distributed``), reports ``root_device`` as ``cpu:<local_rank>`` (DeepSpeed
reads the index as its device rank) and communicates over gloo.  ZeRO stages 0-3 run this way with
any number of processes, which is what CI and CPU-only users need.

When the DeepSpeed config has a ``compression_training`` section, the matching lightning-compress
callbacks are built from it (see :func:`lightning_compress.from_deepspeed_config`) and appended to the
Trainer's callbacks at ``setup``, so an existing DeepSpeed user changes nothing but the strategy.

On CPU, DeepSpeed's JIT-built shared-memory allreduce kernel is skipped (gloo does the same work;
set ``LC_DEEPSPEED_SHM=1`` to build and use it).

From ``setup_environment`` to ``teardown`` a few known-harmless DeepSpeed messages are hidden, each by
its exact text (torch's deprecation of the collectives DeepSpeed calls, DeepSpeed's "untested
optimizer" line): see :mod:`lightning_compress.strategies.quiet`; ``LC_DEEPSPEED_WARNINGS=1`` shows them.

Checkpoints are atomic (:mod:`lightning_compress.strategies.checkpoint_files`): every part is written
into a temporary sibling folder, a manifest (step, size and SHA-256 of each part) is added, and the
folder replaces the target only when complete, so ``last.ckpt`` is always a complete earlier or later
checkpoint, whatever kills a save; on load a checkpoint whose parts do not match its manifest (parts
from different steps, truncated) is refused, naming the parts.

Registered names: ``deepspeed_compression`` (ZeRO 2, DeepSpeed's default) and
``deepspeed_compression_stage_1`` / ``_stage_2`` / ``_stage_3``, and Lightning's own DeepSpeed names
(``"deepspeed"``, ``"deepspeed_stage_3"``, ... with the same init params as Lightning's), so that
``Trainer(strategy="deepspeed")`` runs on a CPU-only machine too once ``lightning_compress`` is imported.
On CUDA this class runs Lightning's code plus the three additions above (``compression_training``
callbacks, hidden known-harmless messages, atomic checkpoints with a manifest), so those names train as
Lightning's do; only where Lightning's would raise (the CPU accelerator) does it run instead.  Any other
accelerator gets Lightning's own behaviour (its CUDA check).  ``import lightning_compress`` registers the
names (see :mod:`lightning_compress.strategies.registration`); pass ``DeepSpeedStrategy(...)`` as an
object to get the stock class.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.accelerators.cpu import CPUAccelerator
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.strategies.parallel import ParallelStrategy
from lightning.fabric.utilities.seed import reset_seed
from typing_extensions import override

from lightning_compress.strategies import checkpoint_files
from lightning_compress.strategies.quiet import QuietDeepSpeed
from lightning_compress.strategies.registration import register


class DeepSpeedCompressionStrategy(DeepSpeedStrategy):
    """DeepSpeed strategy for CUDA *and* CPU (gloo).  Takes every argument of ``DeepSpeedStrategy``.

    After ``import lightning_compress``, ``strategy="deepspeed"`` (and every other Lightning DeepSpeed
    name) builds this class too: Lightning's code on CUDA (plus the additions in the module docstring),
    running where Lightning's refuses (CPU).

    Example::

        Trainer(accelerator="cpu", devices=2, strategy=DeepSpeedCompressionStrategy(stage=3))
        Trainer(accelerator="cpu", devices=2, strategy="deepspeed_compression_stage_3")
        Trainer(strategy="deepspeed")  # this class, on CUDA or CPU
    """

    strategy_name = "deepspeed_compression"

    def __init__(self, *args: Any, compression_teacher: Any = None, compression_distill: Any = None, **kwargs: Any) -> None:
        """Every argument of ``DeepSpeedStrategy``, plus for ``compression_training.layer_reduction``:
        ``compression_teacher`` (a separate teacher network) and ``compression_distill`` (False: no
        distillation loss, as DeepSpeed; True or a weights dict: LayerReductionKD's), passed to
        :func:`lightning_compress.from_deepspeed_config` as ``teacher`` / ``distill``."""
        super().__init__(*args, **kwargs)
        # DeepSpeed 0.19 no longer knows `compression_training` (and rejects it): take it out of a
        # copy of the config (the user's dict stays whole) and build the callbacks now, so a bad
        # section fails at construction, not at fit.
        self.compression_config: dict[str, Any] | None = None
        self._compression_callbacks: list[Any] = []
        self._compression_callbacks_attached = False
        self._quiet = QuietDeepSpeed()
        if isinstance(self.config, dict) and "compression_training" in self.config:
            self.config = dict(self.config)
            self.compression_config = self.config.pop("compression_training")
            from lightning_compress.deepspeed import from_deepspeed_config

            self._compression_callbacks = from_deepspeed_config(
                {"compression_training": self.compression_config}, teacher=compression_teacher, distill=compression_distill
            )
        elif compression_teacher is not None or compression_distill:
            raise ValueError(
                "DeepSpeedCompressionStrategy: `compression_teacher` / `compression_distill` need a config with a "
                "`compression_training.layer_reduction` section."
            )

    @property
    def _stock_path(self) -> bool:
        """False only on the CPU accelerator: everything else (CUDA, or an accelerator Lightning's
        DeepSpeed refuses) takes Lightning's own code path unchanged."""
        return not isinstance(self.accelerator, CPUAccelerator)

    def _add_compression_callbacks(self) -> None:
        """Put the callbacks built from ``compression_training`` on the Trainer (once), before its
        checkpoint callbacks, as Lightning orders user callbacks."""
        if not self._compression_callbacks or self._compression_callbacks_attached:
            return
        from lightning.pytorch.callbacks import Checkpoint

        trainer = self.lightning_module.trainer if self.lightning_module is not None else None
        if trainer is None:
            return
        callbacks = trainer.callbacks
        idx = next((i for i, c in enumerate(callbacks) if isinstance(c, Checkpoint)), len(callbacks))
        callbacks[idx:idx] = self._compression_callbacks
        self._compression_callbacks_attached = True

    @override
    def setup_environment(self) -> None:
        self._quiet.enter()  # known-harmless DeepSpeed messages, until teardown (see strategies/quiet.py)
        self._add_compression_callbacks()
        if self._stock_path:
            super().setup_environment()
            return
        # DeepSpeedStrategy.setup_environment only adds the CUDA check; DDPStrategy's body is
        # ParallelStrategy.setup_environment + setup_distributed.
        ParallelStrategy.setup_environment(self)
        self.setup_distributed()

    @override
    def setup_distributed(self) -> None:
        if self._stock_path:
            super().setup_distributed()
            return
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @override
    def _init_deepspeed_distributed(self) -> None:
        if not self._stock_path and os.environ.get("LC_DEEPSPEED_SHM", "0") != "1":
            # DeepSpeed's CPU accelerator JIT-compiles a shared-memory allreduce kernel
            # (deepspeed_shm_comm) at every init_distributed: 35 s to minutes of C++ build on a
            # small machine, for a speed-up of intra-node CPU collectives only.  gloo does the same
            # work without it.  LC_DEEPSPEED_SHM=1 keeps DeepSpeed's default.
            import deepspeed.ops

            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        super()._init_deepspeed_distributed()

    @property
    @override
    def root_device(self) -> torch.device:
        if self._stock_path or self.parallel_devices is None:
            return super().root_device
        return torch.device("cpu", self.local_rank)

    @override
    def _get_process_group_backend(self) -> str:
        if self._stock_path:
            return super()._get_process_group_backend()
        return self._process_group_backend or "gloo"

    @override
    def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Any | None = None) -> None:
        """DeepSpeed's save, made atomic (module docstring): all ranks write into one temporary
        sibling folder; rank 0 adds the manifest and renames it onto ``filepath``.  On an error the
        temporary folder is deleted and ``filepath`` keeps the previous checkpoint."""
        filepath = self.broadcast(str(filepath))
        token = self.broadcast(uuid.uuid4().hex[:12])
        partial = checkpoint_files.partial_path(filepath, token)
        if self.is_global_zero:
            Path(partial).parent.mkdir(parents=True, exist_ok=True)
            checkpoint_files.discard_stale(filepath)  # left by a save that was killed
        self.barrier("lc_checkpoint_start")
        try:
            super().save_checkpoint(checkpoint, str(partial), storage_options)
        except BaseException:
            # no collective here (the other ranks may be dead); best effort: a rank still writing may
            # recreate it, and the next save removes it (discard_stale)
            if self.is_global_zero:
                checkpoint_files.discard(partial)
            raise
        self.barrier("lc_checkpoint_written")  # every rank's shards are on disk
        if self.is_global_zero:
            try:
                checkpoint_files.write_manifest(
                    partial, int(checkpoint.get("global_step", -1)),
                    {"epoch": checkpoint.get("epoch"), "world_size": self.world_size, "zero_stage": self.config.get("zero_optimization", {}).get("stage")},
                )
                checkpoint_files.swap_in(partial, filepath, token)
            except BaseException:
                checkpoint_files.discard(partial)
                raise
        self.barrier("lc_checkpoint_swapped")

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Refuse a checkpoint folder whose parts do not match its manifest (checked on rank 0, the
        verdict broadcast so every rank raises the same error), then DeepSpeed's load."""
        path = str(checkpoint_path)
        problem: str | None = None
        unchecked = False
        if self.is_global_zero and os.path.isdir(path):
            try:
                unchecked = checkpoint_files.verify(path) is None
            except ValueError as err:
                problem = str(err)
        problem, unchecked = self.broadcast((problem, unchecked))
        if problem is not None:
            raise ValueError(f"{type(self).__name__}: {problem}")
        if unchecked:
            from lightning.pytorch.utilities.rank_zero import rank_zero_warn

            rank_zero_warn(
                f"{type(self).__name__}: checkpoint {path!r} has no {checkpoint_files.MANIFEST} (not written by this "
                f"strategy): its parts cannot be checked to come from one step."
            )
        return super().load_checkpoint(checkpoint_path, weights_only)

    @override
    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            self._quiet.exit()

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        """Register ``cls`` under the ``deepspeed_compression*`` names (``registration.STRATEGY_NAMES``)."""
        register(strategy_registry, strategy=cls)
