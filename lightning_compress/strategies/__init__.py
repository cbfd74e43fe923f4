"""Strategies: DeepSpeed, FSDP1 and FSDP2 that also run on CPU, registered under ``deepspeed_compression*``,
``fsdp_compression*`` and ``model_parallel_compression``.

Importing this package does not import lightning: the strategy classes load on first access
and the names register when Lightning's strategy registry is imported (see
:mod:`lightning_compress.strategies.registration`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import importlib

from lightning_compress.strategies.registration import STRATEGY_NAMES, register, register_when_lightning_loads

if TYPE_CHECKING:
    from lightning_compress.strategies.deepspeed_compression import DeepSpeedCompressionStrategy
    from lightning_compress.strategies.fsdp_compression import FSDPCompressionStrategy
    from lightning_compress.strategies.model_parallel_compression import ModelParallelCompressionStrategy

__all__ = [
    "DeepSpeedCompressionStrategy", "FSDPCompressionStrategy", "ModelParallelCompressionStrategy",
    "STRATEGY_NAMES", "register", "register_when_lightning_loads",
]

_LAZY = {
    "DeepSpeedCompressionStrategy": "deepspeed_compression",
    "FSDPCompressionStrategy": "fsdp_compression",
    "ModelParallelCompressionStrategy": "model_parallel_compression",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
