"""``FSDPCompressionStrategy``: Lightning's FSDP (FSDP1) strategy that also runs on CPU.

On CUDA it is exactly :class:`lightning.pytorch.strategies.FSDPStrategy`.  Lightning refuses
``FSDPStrategy`` on any accelerator but CUDA (``_check_strategy_and_fallback`` tests
``type(strategy) is FSDPStrategy`` and the names ``"fsdp"`` / ``"fsdp_cpu_offload"``); a subclass under
its own name passes that test.  On the CPU accelerator it communicates over gloo (Lightning's default
backend for a CPU root device) and builds a tuple ``device_mesh`` on ``"cpu"`` instead of ``"cuda"``;
``torch.distributed.fsdp.FullyShardedDataParallel`` runs on CPU when given ``device_id=torch.device("cpu")``
(Lightning passes ``root_device.index``, None on CPU, and FSDP1 then looks for an accelerator and
refuses), so on CPU the root wrap and ``model_sharded_context`` (``wrap()`` in ``configure_model``) pass
the CPU device.

lightning-compress needs ``use_orig_params=True`` (Lightning's default): the callbacks' masks and
quantizers sit on the user's modules and read ``module.weight``, which only exists under FSDP1 when the
original parameters are kept (as views of the flat parameter).  ``use_orig_params=False`` is refused
at construction with a clear error.

Registered names: ``fsdp_compression`` (FULL_SHARD) and ``fsdp_compression_shard_grad_op``
(SHARD_GRAD_OP), see :mod:`lightning_compress.strategies.registration`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Generator

import torch
from lightning.pytorch.accelerators.cuda import CUDAAccelerator
from lightning.pytorch.strategies import FSDPStrategy
from typing_extensions import override

from lightning_compress.strategies.registration import register_fsdp


class FSDPCompressionStrategy(FSDPStrategy):
    """FSDP1 for CUDA *and* CPU (gloo).  Takes every argument of ``FSDPStrategy``.

    Example::

        Trainer(accelerator="cpu", devices=2, strategy=FSDPCompressionStrategy())
        Trainer(accelerator="cpu", devices=2, strategy="fsdp_compression")

    Raises:
        ValueError: ``use_orig_params=False`` (the compression callbacks need the original parameters).
    """

    strategy_name = "fsdp_compression"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("use_orig_params") is False:
            raise ValueError(
                "FSDPCompressionStrategy: `use_orig_params`=False is not supported: lightning-compress masks and "
                "quantizes the original parameters (`module.weight`), which FSDP1 only keeps with "
                "use_orig_params=True (Lightning's default); drop the argument."
            )
        super().__init__(*args, **kwargs)

    @property
    def _on_cuda(self) -> bool:
        return isinstance(self.accelerator, CUDAAccelerator)

    @override
    def setup_environment(self) -> None:
        mesh = self.kwargs.get("device_mesh")
        if self._on_cuda or not isinstance(mesh, tuple):
            super().setup_environment()
            return
        # FSDPStrategy builds a tuple mesh with init_device_mesh("cuda", ...): build it on CPU first
        from torch.distributed.device_mesh import init_device_mesh

        self.kwargs.pop("device_mesh")
        try:
            super().setup_environment()
        finally:
            self.kwargs["device_mesh"] = mesh
        self.kwargs["device_mesh"] = init_device_mesh("cpu", mesh)

    @override
    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if self._on_cuda or any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            return super()._setup_model(model)
        # Lightning's wrap with device_id=torch.device("cpu"); then Lightning's own steps for a model
        # wrapped already (torchmetrics, activation checkpointing)
        kwargs = dict(self.kwargs)
        model = FullyShardedDataParallel(
            module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **kwargs,
        )
        policy = self.kwargs.pop("auto_wrap_policy", None)
        try:
            return super()._setup_model(model)
        finally:
            if policy is not None:
                self.kwargs["auto_wrap_policy"] = policy

    @contextmanager
    @override
    def model_sharded_context(self) -> Generator[None, None, None]:
        if self._on_cuda:
            with super().model_sharded_context():
                yield
            return
        from torch.distributed.fsdp.fully_sharded_data_parallel import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import enable_wrap

        with enable_wrap(
            wrapper_cls=FullyShardedDataParallel, cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config, sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"), **self.kwargs,
        ):
            yield

    @override
    def _get_process_group_backend(self) -> str:
        if self._on_cuda:
            return super()._get_process_group_backend()
        return self._process_group_backend or "gloo"

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        """Register ``cls`` under the ``fsdp_compression*`` names (``registration.FSDP_NAMES``)."""
        register_fsdp(strategy_registry, strategy=cls)
