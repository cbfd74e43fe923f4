"""Layer stacks: find a model's repeated block stack, choose the layers to keep, build the shallower
student (in place or on a copy), and what a Hugging Face model exposes (config, ``layer_idx``,
attention maps).  Pure PyTorch; the ``LayerReductionKD`` callback and :mod:`lightning_compress.core.distill`
use it.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from lightning_compress.core import families, masking
from lightning_compress.core.families import supports_attentions  # noqa: F401  (re-exported)
from lightning_compress.core.distill_swap import recorded_base


# ----------------------------------------------------------------------------------------- stack discovery
def _base_class(module: nn.Module) -> type:
    """The user's class of ``module`` under any class swap (masking or recording, in any order)."""
    cls = type(module)
    original = masking.original_class(module)
    for _ in range(4):
        base = recorded_base(cls)
        if base is not None:
            cls = base
        elif cls is not original and issubclass(cls, original):
            cls = original
        else:
            break
    return cls


def _is_stack(module: nn.Module) -> bool:
    if not isinstance(module, (nn.ModuleList, nn.Sequential)):
        return False
    children = list(module.children())
    if len(children) < 2:
        return False
    first = _base_class(children[0])
    if not all(_base_class(c) is first for c in children):
        return False
    # blocks, not loose activations: every block holds parameters
    return all(any(True for _ in c.parameters()) for c in children)


def _stack_candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if _is_stack(m)]


def find_layer_stack(
    model: nn.Module, layers: str | None = None, *, owner: str = "LayerReductionKD"
) -> tuple[str, nn.Module]:
    """Return ``(qualified name, container)`` of the model's layer stack.

    With ``layers`` given, that submodule is used (it must be an ``nn.ModuleList`` / ``nn.Sequential``).
    Otherwise: the ``nn.ModuleList`` / ``nn.Sequential`` whose children are 2+ blocks of one class (each
    holding parameters); for a Hugging Face model (``model.config.num_hidden_layers``) the stacks of that
    length are preferred; then the longest, then the shallowest.  Two equally good stacks (e.g. an
    encoder-decoder) are ambiguous and raise.

    Raises:
        ValueError: ``layers`` names no module or not a ModuleList/Sequential; no stack found; ambiguous.
    """
    if layers is not None:
        try:
            container = model.get_submodule(layers) if layers else model
        except AttributeError:
            cands = [n for n, _ in _stack_candidates(model)]
            raise ValueError(
                f"{owner}: `layers`={layers!r} names no submodule of {type(model).__name__}. "
                f"Layer stacks found automatically: {cands or 'none'}; pass one of them (or layers=None)."
            ) from None
        if not isinstance(container, (nn.ModuleList, nn.Sequential)) or len(container) < 1:
            raise ValueError(
                f"{owner}: `layers`={layers!r} is a {type(container).__name__}, not a non-empty nn.ModuleList or "
                f"nn.Sequential of blocks. Pass the qualified name of the container that holds the repeated "
                f"blocks (e.g. 'bert.encoder.layer', 'model.layers', 'transformer.h')."
            )
        return layers, container
    cands = _stack_candidates(model)
    if not cands:
        raise ValueError(
            f"{owner}: found no layer stack in {type(model).__name__} (an nn.ModuleList / nn.Sequential of 2 or "
            f"more blocks of one class). Pass `layers` = the qualified name of the container holding the "
            f"layers, e.g. layers='bert.encoder.layer' (Hugging Face BERT), 'model.layers' (Llama), "
            f"'transformer.h' (GPT-2), or put your blocks in an nn.ModuleList / nn.Sequential."
        )
    n_cfg = families.layer_count(model)  # e.g. a Hugging Face config.num_hidden_layers
    if n_cfg is not None:
        matching = [(n, m) for n, m in cands if len(m) == n_cfg]
        if matching:
            cands = matching
    best = max(len(m) for _, m in cands)
    cands = [(n, m) for n, m in cands if len(m) == best]
    depth = min(n.count(".") if n else -1 for n, _ in cands)
    cands = [(n, m) for n, m in cands if (n.count(".") if n else -1) == depth]
    if len(cands) > 1:
        raise ValueError(
            f"{owner}: several layer stacks of {best} blocks in {type(model).__name__}: "
            f"{[n for n, _ in cands]}. Pass `layers` = the one to reduce."
        )
    return cands[0]


# ------------------------------------------------------------------------------------------ keep_layers
def evenly_spaced_layers(k: int, n: int) -> list[int]:
    """``k`` of ``n`` layer indices, evenly spaced and ending at the last layer.

    Student layer ``i`` takes teacher layer ``(i + 1) * n // k - 1`` (TinyBERT's uniform map): 6 of 12
    gives ``[1, 3, 5, 7, 9, 11]``, 4 of 12 gives ``[2, 5, 8, 11]``.
    """
    if not 1 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} layers")
    return [(i + 1) * n // k - 1 for i in range(k)]


def resolve_keep_layers(
    keep_layers: int | Sequence[int], num_layers: int, *, owner: str = "LayerReductionKD", stack: str = ""
) -> list[int]:
    """Checked list of kept layer indices (an int keeps that many, evenly spaced).

    Raises:
        ValueError: out of range, duplicated, empty, not increasing-sortable integers, or an int outside
            ``[1, num_layers]``.
    """
    where = f"the layer stack {stack!r} ({num_layers} layers)" if stack else f"the layer stack ({num_layers} layers)"
    if isinstance(keep_layers, bool):
        raise ValueError(f"{owner}: `keep_layers` must be an int or a list of ints, got {keep_layers!r}.")
    if isinstance(keep_layers, int):
        if not 1 <= keep_layers <= num_layers:
            raise ValueError(
                f"{owner}: `keep_layers`={keep_layers} is out of range for {where}: keep between 1 and {num_layers}."
            )
        return evenly_spaced_layers(keep_layers, num_layers)
    keep = list(keep_layers)
    if not keep:
        raise ValueError(f"{owner}: `keep_layers` is empty; list at least one layer index of {where}.")
    for i in keep:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"{owner}: `keep_layers` entries must be ints, got {i!r}.")
    bad = [i for i in keep if not 0 <= i < num_layers]
    if bad:
        raise ValueError(
            f"{owner}: `keep_layers` {bad} out of range for {where}: indices must be in 0..{num_layers - 1}."
        )
    dup = sorted({i for i in keep if keep.count(i) > 1})
    if dup:
        raise ValueError(f"{owner}: `keep_layers` lists layer(s) {dup} more than once; each layer can be kept once.")
    if keep != sorted(keep):
        raise ValueError(
            f"{owner}: `keep_layers` {keep} is not in increasing order; the student keeps the teacher's layer "
            f"order, pass {sorted(keep)}."
        )
    return keep


# ------------------------------------------------------------------------------------------ student
def _set_stack(container: nn.Module, kept: list[nn.Module]) -> None:
    container._modules.clear()
    container._modules.update(OrderedDict((str(i), m) for i, m in enumerate(kept)))


def shrink_layers_(model: nn.Module, stack_name: str, keep: Sequence[int]) -> nn.Module:
    """Keep only layers ``keep`` of ``model``'s stack ``stack_name``, in place; returns ``model``.

    The container object stays (its children are replaced by the kept layer objects, renumbered
    ``0..len(keep)-1``), so kept weights are untouched.  A Hugging Face config gets
    ``num_hidden_layers = len(keep)`` (and ``layer_types`` sliced); each kept layer's submodules with an
    int ``layer_idx`` get their new index (KV caches index by it).
    """
    container = model.get_submodule(stack_name) if stack_name else model
    layers = list(container.children())
    kept = [layers[i] for i in keep]
    _set_stack(container, kept)
    families.after_layer_reduction(model, kept, len(layers), keep)  # config / layer_idx (Hugging Face)
    return model


def build_student(
    model: nn.Module, keep_layers: int | Sequence[int], layers: str | None = None
) -> tuple[nn.Module, str, list[int]]:
    """A deep copy of ``model`` keeping ``keep_layers`` of its stack: ``(student, stack name, keep)``."""
    name, container = find_layer_stack(model, layers)
    keep = resolve_keep_layers(keep_layers, len(container), stack=name)
    student = copy.deepcopy(model)
    shrink_layers_(student, name, keep)
    return student, name, keep


def hidden_width(block: nn.Module) -> int | None:
    """Best guess of a block's output width: the last Linear ``out_features`` / LayerNorm size / Conv
    ``out_channels`` registered in it (``None`` if it has none of those)."""
    width = None
    for m in block.modules():
        if isinstance(m, nn.Linear):
            width = m.out_features
        elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and m.normalized_shape:
            width = int(m.normalized_shape[-1])
        elif isinstance(m, nn.modules.conv._ConvNd):
            width = m.out_channels
        elif type(m).__name__.endswith(("LayerNorm", "RMSNorm")) and getattr(m, "weight", None) is not None:
            width = int(m.weight.shape[-1])
    return width
