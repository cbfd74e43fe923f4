"""Lightning callbacks, one compression method each; they compose on one Trainer."""

from lightning_compress.callbacks.act_quant import ActQuant
from lightning_compress.callbacks.channel_pruning import ChannelPruning
from lightning_compress.callbacks.head_pruning import HeadPruning
from lightning_compress.callbacks.layer_reduction_kd import LayerReductionKD
from lightning_compress.callbacks.oneshot_compression import OneShotCompression
from lightning_compress.callbacks.progress_lines import ProgressLines
from lightning_compress.callbacks.redundancy_clean import RedundancyClean
from lightning_compress.callbacks.row_pruning import RowPruning
from lightning_compress.callbacks.sparse_pruning import SnipMomentumPruning, SparsePruning
from lightning_compress.callbacks.weight_quant import WeightQuant

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
    "ProgressLines",
]
