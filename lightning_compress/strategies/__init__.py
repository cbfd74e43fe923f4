"""Strategies: DeepSpeed that also runs on CPU, registered under ``deepspeed_compression*`` names.

Importing this package does not import lightning: ``DeepSpeedCompressionStrategy`` loads on first access
and the names register when Lightning's strategy registry is imported (see
:mod:`lightning_compress.strategies.registration`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_compress.strategies.registration import STRATEGY_NAMES, register, register_when_lightning_loads

if TYPE_CHECKING:
    from lightning_compress.strategies.deepspeed_compression import DeepSpeedCompressionStrategy

__all__ = ["DeepSpeedCompressionStrategy", "STRATEGY_NAMES", "register", "register_when_lightning_loads"]


def __getattr__(name: str) -> Any:
    if name == "DeepSpeedCompressionStrategy":
        from lightning_compress.strategies.deepspeed_compression import DeepSpeedCompressionStrategy

        return DeepSpeedCompressionStrategy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
