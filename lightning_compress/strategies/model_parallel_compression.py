"""``ModelParallelCompressionStrategy``: Lightning's ``ModelParallelStrategy`` (FSDP2 ``fully_shard``)
set up for data-parallel sharding, on CUDA and CPU (gloo).

Lightning's ``ModelParallelStrategy`` defaults to ``tensor_parallel_size="auto"`` = every device of a
node (a pure tensor-parallel mesh).  This variant defaults to the FSDP2 layout instead:
``data_parallel_size`` = world size, ``tensor_parallel_size=1``; the user's ``configure_model`` applies
``fully_shard`` (to blocks, then the root) over ``self.device_mesh["data_parallel"]``.  Everything else
(checkpointing, ``save_distributed_checkpoint``) is Lightning's; on CUDA with explicit sizes it is
exactly ``ModelParallelStrategy``.  On CPU the mesh is built on ``"cpu"`` (Lightning passes the root
device's type) and the process group is gloo.

Between forwards an FSDP2 parameter is a ``DTensor`` (``Shard(0)`` over the data-parallel mesh, with
the full logical shape); inside the sharded module's forward it is the plain all-gathered tensor.
lightning-compress keeps every mask / range buffer a plain full tensor (replicated, identical on every
rank), reads full weights and reduced gradients with ``DTensor.full_tensor()``
(:mod:`lightning_compress.core.dist`), and applies its transforms inside forward, where both operands
are plain.

Registered name: ``model_parallel_compression``.
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.accelerators.cuda import CUDAAccelerator
from lightning.pytorch.strategies import ModelParallelStrategy
from typing_extensions import override

from lightning_compress.strategies.registration import register_model_parallel


class ModelParallelCompressionStrategy(ModelParallelStrategy):
    """FSDP2 data-parallel sharding for CUDA *and* CPU (gloo).  Arguments as ``ModelParallelStrategy``;
    ``data_parallel_size="auto"`` means the world size and ``tensor_parallel_size`` defaults to 1.

    Example::

        class Model(LightningModule):
            def configure_model(self):
                mesh = self.device_mesh["data_parallel"]
                for block in self.blocks:
                    fully_shard(block, mesh=mesh)
                fully_shard(self, mesh=mesh)

        Trainer(accelerator="cpu", devices=2, strategy="model_parallel_compression")
    """

    strategy_name = "model_parallel_compression"

    def __init__(
        self,
        data_parallel_size: Literal["auto"] | int = "auto",
        tensor_parallel_size: Literal["auto"] | int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_parallel_size=data_parallel_size, tensor_parallel_size=tensor_parallel_size, **kwargs)

    @override
    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto" and self._tensor_parallel_size != "auto":
            # resolved after the world is known: ModelParallelStrategy would set it to num_nodes
            self._data_parallel_size = max(1, (self.num_nodes * self.num_processes) // int(self._tensor_parallel_size))
        super().setup_environment()

    @override
    def _get_process_group_backend(self) -> str:
        if isinstance(self.accelerator, CUDAAccelerator):
            return super()._get_process_group_backend()
        return self._process_group_backend or "gloo"

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        """Register ``cls`` under ``model_parallel_compression``."""
        register_model_parallel(strategy_registry, strategy=cls)
