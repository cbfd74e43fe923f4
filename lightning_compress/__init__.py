"""lightning-compress: model compression for PyTorch Lightning, on a pure-PyTorch core.

``import lightning_compress`` imports neither lightning nor torch: every public name below is resolved
on first access (PEP 562 module ``__getattr__``), so a plain-PyTorch program uses
:mod:`lightning_compress.core`, :mod:`lightning_compress.export` and :func:`quantize` with the
``lightning`` package absent.  Names that need Lightning (the callbacks, the strategy,
:func:`from_deepspeed_config`) import it when first used.

Strategy names: ``import lightning_compress`` makes ``Trainer(strategy="deepspeed_compression")`` (and
``deepspeed_compression_stage_1/2/3``) work.  Lightning has no entry-point group for strategies, so the
names are added to ``StrategyRegistry`` now if Lightning's ``lightning.pytorch.strategies`` is imported
already, else by a one-shot import hook right after it is first imported (before any Trainer reads the
registry); see :mod:`lightning_compress.strategies.registration`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_compress.strategies.registration import register_when_lightning_loads

__version__ = "0.1.0"

#: public name -> module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "SparsePruning", "SnipMomentumPruning", "RowPruning", "HeadPruning", "ChannelPruning",
            "WeightQuant", "ActQuant", "LayerReductionKD", "RedundancyClean", "OneShotCompression",
        ),
        "lightning_compress.callbacks",
    ),
    "DeepSpeedCompressionStrategy": "lightning_compress.strategies.deepspeed_compression",
    "FSDPCompressionStrategy": "lightning_compress.strategies.fsdp_compression",
    "ModelParallelCompressionStrategy": "lightning_compress.strategies.model_parallel_compression",
    "from_deepspeed_config": "lightning_compress.deepspeed",
    "clean": "lightning_compress.export",
    "fold_batchnorm": "lightning_compress.export",
    "load_slim_state": "lightning_compress.export",
    "load_slim": "lightning_compress.export",
    "export_qdq": "lightning_compress.export",
    "export_int8": "lightning_compress.export",
    "export_float": "lightning_compress.export",
    "quantize": "lightning_compress.ptq",
    "zeroquant": "lightning_compress.ptq",
}
#: subpackages reachable as attributes without an explicit import (as when __init__ imported them all)
_SUBMODULES = ("callbacks", "core", "deepspeed", "export", "oneshot", "ptq", "report", "strategies")

__all__ = [
    "SparsePruning",
    "SnipMomentumPruning",
    "RowPruning",
    "HeadPruning",
    "ChannelPruning",
    "WeightQuant",
    "ActQuant",
    "LayerReductionKD",
    "RedundancyClean",
    "OneShotCompression",
    "DeepSpeedCompressionStrategy",
    "FSDPCompressionStrategy",
    "ModelParallelCompressionStrategy",
    "clean",
    "from_deepspeed_config",
    "fold_batchnorm",
    "load_slim_state",
    "load_slim",
    "quantize",
    "zeroquant",
    "export_qdq",
    "export_int8",
    "export_float",
]

if TYPE_CHECKING:
    from lightning_compress.callbacks import (
        ActQuant,
        ChannelPruning,
        HeadPruning,
        LayerReductionKD,
        OneShotCompression,
        RedundancyClean,
        RowPruning,
        SnipMomentumPruning,
        SparsePruning,
        WeightQuant,
    )
    from lightning_compress.deepspeed import from_deepspeed_config
    from lightning_compress.export import clean, export_float, export_int8, export_qdq, fold_batchnorm, load_slim, load_slim_state
    from lightning_compress.ptq import quantize, zeroquant
    from lightning_compress.strategies.deepspeed_compression import DeepSpeedCompressionStrategy
    from lightning_compress.strategies.fsdp_compression import FSDPCompressionStrategy
    from lightning_compress.strategies.model_parallel_compression import ModelParallelCompressionStrategy


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        if name in _SUBMODULES:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        if (err.name or "").split(".")[0] != "lightning":
            raise
        raise ImportError(
            f"lightning_compress.{name} needs the `lightning` package, which is not importable ({err}). "
            "Install it (pip install lightning), or use the pure-PyTorch objects of lightning_compress.core "
            "and lightning_compress.export, which do not need it."
        ) from err
    value = getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})


register_when_lightning_loads()
