"""The ``deepspeed_compression*`` strategy names, and their registration with Lightning.

Lightning 2.6 has no entry-point group for strategies (``lightning/pytorch/strategies/__init__.py``
fills ``StrategyRegistry`` from its own classes only; entry points exist for callbacks, and those load
after the strategy flag is checked).  So ``import lightning_compress`` calls
:func:`register_when_lightning_loads`: if ``lightning.pytorch.strategies`` is imported already the names
are added now, otherwise a one-shot import hook (:mod:`lightning_compress._import_hook`) adds them right
after that module is first imported, i.e. before any ``Trainer`` can read the registry, and without
importing lightning at ``import lightning_compress`` time.  What is registered is a small factory that
imports :class:`~lightning_compress.strategies.DeepSpeedCompressionStrategy` when a Trainer asks for the
name, so the hook runs no import of ours in the middle of Lightning's own.

Names: ``deepspeed_compression`` (ZeRO 2, DeepSpeed's default) and ``deepspeed_compression_stage_1`` /
``_stage_2`` / ``_stage_3``; ``fsdp_compression`` / ``fsdp_compression_shard_grad_op`` (FSDP1, see
:mod:`lightning_compress.strategies.fsdp_compression`) and ``model_parallel_compression`` (FSDP2, see
:mod:`lightning_compress.strategies.model_parallel_compression`); and Lightning's own DeepSpeed names
(``deepspeed``, ``deepspeed_stage_1``, ..., ``deepspeed_stage_3_offload_nvme``: whatever ``DeepSpeedStrategy.register_strategies`` registers, read from
it, with the same init params) now also name ``DeepSpeedCompressionStrategy``.  On CUDA that class runs
Lightning's ``DeepSpeedStrategy`` code (a subclass whose overrides defer to it there; the additions: a
``compression_training`` config section becomes callbacks, where DeepSpeed 0.19 would reject it,
:mod:`~lightning_compress.strategies.quiet` hides known-harmless messages, and checkpoints are saved
atomically with a manifest), so those names train as before; on the CPU accelerator, where Lightning's raises ``RuntimeError: The DeepSpeed
strategy is only supported on CUDA GPUs``, they run (gloo).  This is what makes README's first snippet,
``Trainer(..., strategy="deepspeed")``, run as written on a CPU-only machine.  A program that wants the
stock class passes it as an object: ``Trainer(strategy=DeepSpeedStrategy(...))``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from lightning_compress._import_hook import call_after_import

#: the Lightning module that owns ``StrategyRegistry``
LIGHTNING_STRATEGIES = "lightning.pytorch.strategies"

#: ``{name: (init params, description)}``
STRATEGY_NAMES: dict[str, tuple[dict[str, Any], str]] = {
    "deepspeed_compression": ({}, "DeepSpeed (CUDA or CPU/gloo) for lightning-compress"),
    **{
        f"deepspeed_compression_stage_{stage}": (
            {"stage": stage},
            f"DeepSpeed ZeRO stage {stage} (CUDA or CPU/gloo) for lightning-compress",
        )
        for stage in (1, 2, 3)
    },
}


def lightning_deepspeed_names(strategies_module: ModuleType) -> dict[str, tuple[dict[str, Any], str]]:
    """``{name: (init params, description)}`` of the names Lightning registers for ``DeepSpeedStrategy``
    (read from ``DeepSpeedStrategy.register_strategies`` into a scratch registry, so a Lightning release
    that adds or changes names is followed as it is)."""
    scratch = type(strategies_module.StrategyRegistry)()
    strategies_module.DeepSpeedStrategy.register_strategies(scratch)
    return {name: (dict(data["init_params"]), data["description"]) for name, data in scratch.items()}


#: FSDP1 names (``FSDPCompressionStrategy``)
FSDP_NAMES: dict[str, tuple[dict[str, Any], str]] = {
    "fsdp_compression": ({}, "FSDP1 FULL_SHARD (CUDA or CPU/gloo) for lightning-compress"),
    "fsdp_compression_shard_grad_op": (
        {"sharding_strategy": "SHARD_GRAD_OP"},
        "FSDP1 SHARD_GRAD_OP (CUDA or CPU/gloo) for lightning-compress",
    ),
}

#: FSDP2 names (``ModelParallelCompressionStrategy``)
MODEL_PARALLEL_NAMES: dict[str, tuple[dict[str, Any], str]] = {
    "model_parallel_compression": ({}, "FSDP2 fully_shard data parallel (CUDA or CPU/gloo) for lightning-compress"),
}


def fsdp_compression_strategy(**kwargs: Any) -> Any:
    """``FSDPCompressionStrategy(**kwargs)``, imported on first use."""
    from lightning_compress.strategies.fsdp_compression import FSDPCompressionStrategy

    return FSDPCompressionStrategy(**kwargs)


def model_parallel_compression_strategy(**kwargs: Any) -> Any:
    """``ModelParallelCompressionStrategy(**kwargs)``, imported on first use."""
    from lightning_compress.strategies.model_parallel_compression import ModelParallelCompressionStrategy

    return ModelParallelCompressionStrategy(**kwargs)


def deepspeed_compression_strategy(**kwargs: Any) -> Any:
    """``DeepSpeedCompressionStrategy(**kwargs)``, imported on first use (what the registry calls)."""
    from lightning_compress.strategies.deepspeed_compression import DeepSpeedCompressionStrategy

    return DeepSpeedCompressionStrategy(**kwargs)


def register(registry: Any = None, strategy: Callable[..., Any] = deepspeed_compression_strategy) -> None:
    """Add the names to ``registry`` (default: Lightning's ``StrategyRegistry``, which this imports):
    :data:`STRATEGY_NAMES` and Lightning's own DeepSpeed names (:func:`lightning_deepspeed_names`).
    Idempotent; ``strategy`` is what the registry calls with the init params (a class or a factory)."""
    strategies_module = importlib.import_module(LIGHTNING_STRATEGIES)  # the one in sys.modules when imported
    if registry is None:
        registry = strategies_module.StrategyRegistry
    names = {**lightning_deepspeed_names(strategies_module), **STRATEGY_NAMES}
    for name, (params, description) in names.items():
        registry.register(name, strategy, description=description, override=True, **params)


def _register_names(registry: Any, names: dict[str, tuple[dict[str, Any], str]], strategy: Callable[..., Any]) -> None:
    if registry is None:
        from lightning.pytorch.strategies import StrategyRegistry as registry
    for name, (params, description) in names.items():
        registry.register(name, strategy, description=description, override=True, **params)


def register_fsdp(registry: Any = None, strategy: Callable[..., Any] = fsdp_compression_strategy) -> None:
    """Add the ``fsdp_compression*`` names (as :func:`register`)."""
    _register_names(registry, FSDP_NAMES, strategy)


def register_model_parallel(registry: Any = None, strategy: Callable[..., Any] = model_parallel_compression_strategy) -> None:
    """Add ``model_parallel_compression`` (as :func:`register`)."""
    _register_names(registry, MODEL_PARALLEL_NAMES, strategy)


def register_all(registry: Any = None) -> None:
    """Every name of this module: DeepSpeed, FSDP1 and FSDP2 variants."""
    register(registry)
    register_fsdp(registry)
    register_model_parallel(registry)


def _register_in(module: ModuleType) -> None:
    register_all(module.StrategyRegistry)


def register_when_lightning_loads() -> None:
    """Register the names now if Lightning's strategies module is imported, else right after its import."""
    call_after_import(LIGHTNING_STRATEGIES, _register_in)
