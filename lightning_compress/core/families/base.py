"""The :class:`Family` interface and the records a family returns (pure PyTorch).

A *family* is one body of knowledge about how a kind of model is built: which modules are attentions
and how their heads are laid out, which layers form a feed-forward block when ``torch.fx`` cannot
trace the model, which config fields and attributes change when heads or layers are removed.  Every
method has a do-nothing default, so a family implements only what it knows.

Records:

* :class:`Projection`: one module whose parameters are sliced per head along one dimension.
* :class:`AttentionInfo`: one attention: its head count and head size, the projections whose output
  rows are head-major (q / k / v, or one packed ``in_proj``), the output projection whose input
  columns are head-major, whether the heads can be physically removed, and the family that updates
  the module / config after removal.  :func:`lightning_compress.core.surgery.attention_group` turns
  it into the :class:`~lightning_compress.core.surgery.UnitGroup` that head pruning masks and
  ``clean`` removes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from torch import nn

if TYPE_CHECKING:
    from lightning_compress.core.graph import ChannelSpace


@dataclass
class Projection:
    """A module whose tensors ``params`` hold one slice per head along one dimension.

    Attributes:
        name: qualified module name (``model.named_modules()``), used in messages and by masking.
        module: the module.
        params: names of the sliced tensors (``("weight", "bias")``; ``("in_proj_weight", "in_proj_bias")``
            for a packed projection).  For an output projection only the weight (its bias is per feature).
        tiles: how many head-major blocks the dimension holds one after the other (3 for a packed
            q/k/v ``in_proj``: rows ``[q heads | k heads | v heads]``), 1 otherwise.
        width: entries per unit along the dimension in this projection; ``None``: the attention's
            ``head_size``.  Grouped-query attention prunes whole key/value groups: a unit is one
            key/value head (``head_dim`` rows of ``k_proj`` / ``v_proj``) with its query heads
            (``group * head_dim`` rows of ``q_proj``, the same columns of ``o_proj``).
    """

    name: str
    module: nn.Module = field(repr=False)
    params: tuple[str, ...]
    tiles: int = 1
    width: int | None = None

    @classmethod
    def linear(cls, name: str, module: nn.Linear, *, with_bias: bool = True, width: int | None = None) -> Projection:
        """A Linear layer's ``weight`` (and ``bias`` when it has one and ``with_bias``)."""
        params = ("weight", "bias") if with_bias and module.bias is not None else ("weight",)
        return cls(name, module, params, width=width)


@dataclass
class AttentionInfo:
    """One multi-head attention as a family sees it.

    Head ``h`` owns rows ``[h * head_size, (h + 1) * head_size)`` of every tile of each input
    projection (dim 0 of its ``params``) and the same range of input columns (dim 1) of the output
    projection's weight.

    Attributes:
        family: the :class:`Family` that recognised it (called back by :meth:`Family.update_after_head_removal`).
        name: qualified name of the attention module.
        module: the attention module; it holds the head mask and its attributes change at removal.
        num_heads: heads before pruning.
        head_size: features per head in the projections.
        inputs: the projections whose output rows are head-major (q, k, v; or one packed in_proj).
        output: the output projection, whose input columns are head-major.
        mask_output: whether the output projection's columns are masked in forward too (False when a
            zero value row already makes the head's output zero and the forward reads the output
            weight directly, as ``nn.MultiheadAttention`` does); its columns are zeroed at clean anyway.
        removable: whether ``clean`` may physically remove heads; False keeps the module's width and
            bakes the zeros in.
        kept_reason: why heads are kept when not ``removable`` (goes into ``clean``'s notes).
        layer_index: the attention's layer index where the model knows it (config keys use it).
    """

    family: Family
    name: str
    module: nn.Module = field(repr=False)
    num_heads: int
    head_size: int
    inputs: list[Projection]
    output: Projection
    mask_output: bool = True
    removable: bool = True
    kept_reason: str = ""
    layer_index: int | None = None


class Family:
    """Knowledge about one family of models; subclass, set :attr:`name`, override what you know, and
    decorate with :func:`lightning_compress.core.families.register_family`.

    Every method is asked by the registry for every model; return ``None`` / ``[]`` / ``False`` for a
    model or module that is not yours.  A family holds no state: the registry keeps one instance, and
    copying a model (``copy.deepcopy``) shares it.
    """

    #: short unique name (``"hf_bert"``); registering another family with the same name replaces it
    name: ClassVar[str] = ""
    #: what it recognises, one phrase for error messages
    description: ClassVar[str] = ""
    #: tag that :func:`~lightning_compress.core.families.channel_spaces` reports for spaces from this
    #: family (default ``"<name>_heuristic"``)
    heuristic: ClassVar[str] = ""

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    def __copy__(self) -> Family:
        return self

    def __deepcopy__(self, memo: dict) -> Family:
        return self

    # ------------------------------------------------------------------ attention heads
    def attention(self, name: str, module: nn.Module, named: Mapping[str, nn.Module]) -> AttentionInfo | None:
        """An :class:`AttentionInfo` when ``module`` (qualified ``name``) is an attention of this
        family, else ``None``.  ``named`` is ``dict(model.named_modules())`` (to reach a parent or a
        sibling, e.g. an output projection that lives outside the attention module)."""
        return None

    def update_after_head_removal(self, info: AttentionInfo, keep: Sequence[bool]) -> None:
        """Fix the module's attributes and the model config after ``clean`` sliced the heads.

        Called once per attention with ``keep[h]`` = whether original head ``h`` (of ``info.num_heads``)
        stayed, after every tensor has its new shape (also when nothing was removed)."""

    # ------------------------------------------------------------------ coupled layers
    def channel_spaces(self, model: nn.Module, named: Mapping[str, nn.Module]) -> list[ChannelSpace]:
        """Coupled layers this family knows without tracing, used when ``torch.fx`` cannot trace
        ``model`` (each a :class:`~lightning_compress.core.graph.ChannelSpace`: producers whose output
        features are read only by the consumers, through elementwise ops)."""
        return []

    def after_unit_removal(self, model: nn.Module) -> None:
        """Fix config fields from the slim shapes after ``clean`` removed rows / channels / heads of
        ``model`` (called once per ``clean``, after every :meth:`update_after_head_removal`): e.g.
        ``config.intermediate_size`` from the FFN widths.  Must be idempotent."""

    # ------------------------------------------------------------------ layer stacks (distillation)
    def layer_count(self, model: nn.Module) -> int | None:
        """The number of layers ``model`` declares (e.g. a config field), or ``None``; used to prefer
        the layer stack of that length."""
        return None

    def after_layer_reduction(self, model: nn.Module, kept_layers: Sequence[nn.Module], num_before: int,
                              keep: Sequence[int]) -> None:
        """Fix attributes / config after ``model``'s layer stack went from ``num_before`` layers to the
        ``kept_layers`` (original indices ``keep``, now numbered ``0..len(keep)-1``)."""

    def returns_attentions(self, model: nn.Module) -> bool:
        """Whether ``model`` returns attention probabilities for ``output_attentions=True``."""
        return False

    # ------------------------------------------------------------------ calling the model (export)
    def takes_keyword_inputs(self, model: nn.Module) -> bool:
        """Whether ``model`` is called with named inputs (``model(input_ids=..., attention_mask=...)``),
        so an exporter given positional example inputs and their names passes them by keyword."""
        return False
