"""lightning-compress: model compression for PyTorch Lightning.

Importing the package registers the ``deepspeed_compression*`` strategy names with Lightning.
"""

from lightning_compress.callbacks import *  # noqa: F401,F403
from lightning_compress.callbacks import __all__ as _callbacks_all
from lightning_compress.deepspeed_config import from_deepspeed_config
from lightning_compress.export import clean, export_float, export_int8, export_qdq, fold_batchnorm, load_slim_state
from lightning_compress.ptq import quantize, zeroquant
from lightning_compress.strategies import DeepSpeedCompressionStrategy, register as _register_strategies

_register_strategies()

__version__ = "0.1.0"
__all__ = [
    *_callbacks_all,
    "DeepSpeedCompressionStrategy",
    "clean",
    "from_deepspeed_config",
    "fold_batchnorm",
    "load_slim_state",
    "quantize",
    "zeroquant",
    "export_qdq",
    "export_int8",
    "export_float",
]
