"""Strategies: DeepSpeed that also runs on CPU, registered under ``deepspeed_compression*`` names."""

from lightning_compress.strategies.deepspeed_compression import DeepSpeedCompressionStrategy, register

__all__ = ["DeepSpeedCompressionStrategy", "register"]
