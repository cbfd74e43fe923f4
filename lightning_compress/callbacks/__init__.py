"""Lightning callbacks, one compression method each; they compose on one Trainer."""

from lightning_compress.callbacks.layer_reduction_kd import LayerReductionKD
from lightning_compress.callbacks.sparse_pruning import SnipMomentumPruning, SparsePruning

__all__ = ["SparsePruning", "SnipMomentumPruning", "LayerReductionKD"]
