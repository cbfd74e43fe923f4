"""Structured units (rows, channels, heads): their masks in forward and their physical removal.

A :class:`UnitGroup` is one set of prunable units (the outputs of an FFN projection, the channels of
a residual stage, the heads of one attention) and every tensor slice that belongs to a unit:

* ``"out"`` members: the producer's weight rows (dim 0) and bias, a BatchNorm's weight / bias /
  running stats; masked to zero and, at removal, sliced away;
* ``"in"`` members: the consumer's weight columns (dim 1: Linear ``in_features``, Conv2d
  ``in_channels``); also masked (so the masked model equals the slim model whatever the activation
  does to a zero) and sliced at removal.

A unit spans ``width`` consecutive indices along the member's dim (1 for rows/channels, the head
size for heads, ``H*W`` for a Linear after a flatten), repeated ``tiles`` times (3 for
``nn.MultiheadAttention``'s packed ``in_proj``; the groups of a grouped conv, pruned periodically),
starting at ``offset`` (a slice of a concatenation: a densenet conv reads several groups' channels,
each at its offset; the entries outside every group's slice stay).

A member's ``dim`` is *logical*: 0 = output features, 1 = input features.  For a Hugging Face
``Conv1D`` (GPT-2; :mod:`lightning_compress.core.conv1d`), whose 2-D weight is stored ``[in, out]``,
the weight is masked and sliced along the other physical dim (:func:`physical_dim`); its bias and
every other module's tensors use ``dim`` as it is.

Masks are bool buffers (``persistent=False``): the group's unit mask ``_lc_<kind>_units`` on the
group's holder module, and per member module one expanded vector per dim ``_lc_<kind>_d<dim>``.
The forward transform (kind ``<kind>``, via :mod:`lightning_compress.core.masking`) multiplies each
involved parameter by the vectors of its dims.

:func:`remove_units` slices every member and updates the shape attributes (``in_features``,
``out_features``, ``in_channels``, ``out_channels``, ``num_features``); a head group's attention
(:class:`~lightning_compress.core.families.AttentionInfo`, from the model family that recognised it)
then has its family update the module / config (for Hugging Face BERT: ``num_attention_heads``,
``all_head_size``, ``config.pruned_heads``).

A group whose attention is not ``removable`` (``torch.nn.MultiheadAttention``: its projection width is
tied to ``embed_dim``) is only masked; at clean its zeros are baked into every member (the output
projection's columns too) and nothing is removed; :func:`remove_units` reports it with the family's
reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from lightning_compress.core import masking
from lightning_compress.core.conv1d import is_conv1d

#: per-module records (plain attributes, deleted by :func:`masking.strip`)
UNIT_DIMS = masking.private_name("unit_dims")  # {kind: {param: dims}} on each member module
UNIT_GROUPS = masking.private_name("unit_groups")  # {kind: UnitGroup} on the holder module

if TYPE_CHECKING:
    from lightning_compress.core.families.base import AttentionInfo

Role = Literal["out", "in"]


@dataclass
class Member:
    name: str
    module: nn.Module
    role: Role
    params: tuple[str, ...]
    dim: int
    width: int = 1
    tiles: int = 1
    masked: bool = True  # False: only baked/sliced at clean (nn.MultiheadAttention's out_proj)
    offset: int = 0  # first index of the member's slice along ``dim`` (a concatenation's segment)
    partial: bool = False  # True: the slice may be shorter than the dim (the rest is another group's)

    @property
    def span(self) -> int:
        """Entries along ``dim`` that the member's units cover (from ``offset``)."""
        return self.width * self.tiles


@dataclass
class UnitGroup:
    """One set of prunable units and every tensor slice that belongs to them."""

    name: str
    kind: str
    num_units: int
    members: list[Member]
    holder: nn.Module
    unit: Literal["row", "channel", "head"] = "row"
    #: head groups: the attention as its model family described it (who updates it after removal)
    attention: AttentionInfo | None = None

    @property
    def removable(self) -> bool:
        """Whether :func:`remove_units` may slice the units away (False: zeros are baked in, shapes stay)."""
        return self.attention is None or self.attention.removable

    @property
    def unit_buffer(self) -> str:
        return masking.private_name(f"{self.kind}_units")

    @property
    def mask(self) -> torch.Tensor:
        return getattr(self.holder, self.unit_buffer)

    def __deepcopy__(self, memo: dict) -> UnitGroup:
        """A copy whose members are the copies of the modules (as the default would make).  Groups link
        modules across the whole network (a densenet's concatenations), so copying one group walks to the
        next: the recursion limit is raised for the copy instead of failing deep inside it."""
        import copy
        import sys

        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 50_000))
        try:
            new = copy.copy(self)
            memo[id(self)] = new
            new.__dict__.update(copy.deepcopy(self.__dict__, memo))
            return new
        finally:
            sys.setrecursionlimit(limit)

    def params_per_unit(self) -> int:
        total = 0
        for m in self.members:
            for p in m.params:
                t = _param_or_buffer(m.module, p)
                shape = tuple(getattr(t, "ds_shape", t.shape))
                pd = physical_dim(m.module, t, m.dim)
                other = 1
                for i, s in enumerate(shape):
                    if i != pd:
                        other *= s
                if isinstance(t, nn.Parameter):
                    total += other * m.width * m.tiles
        return total


def attention_group(info: AttentionInfo, kind: str) -> UnitGroup:
    """The head :class:`UnitGroup` of one attention (mask buffers named after ``kind``, held by the
    attention module): its input projections' rows (dim 0, ``head_size`` per head, per tile) are
    ``"out"`` members, the output projection's columns (dim 1) the ``"in"`` member."""
    d = info.head_size
    members = [Member(p.name, p.module, "out", p.params, 0, width=p.width or d, tiles=p.tiles) for p in info.inputs]
    o = info.output
    members.append(Member(o.name, o.module, "in", o.params, 1, width=o.width or d, tiles=o.tiles, masked=info.mask_output))
    return UnitGroup(
        name=info.name, kind=kind, num_units=info.num_heads, members=members, holder=info.module,
        unit="head", attention=info,
    )


def _param_or_buffer(module: nn.Module, name: str) -> torch.Tensor:
    t = module._parameters.get(name)
    if t is None:
        t = module._buffers.get(name)
    assert t is not None, f"{type(module).__name__} has no tensor {name!r}"
    return t


def _full_len(t: torch.Tensor, dim: int) -> int:
    return int(tuple(getattr(t, "ds_shape", t.shape))[dim])


def physical_dim(module: nn.Module, tensor: torch.Tensor, dim: int, transposed: bool | None = None) -> int:
    """The stored dim of ``tensor`` (a tensor of ``module``) that holds logical ``dim`` (0 = output
    features, 1 = input features): swapped for a ``Conv1D``'s 2-D weight (stored ``[in, out]``),
    ``dim`` itself otherwise.  ``transposed`` overrides the ``Conv1D`` test (while shapes change)."""
    t = is_conv1d(module) if transposed is None else transposed
    return 1 - dim if t and len(tuple(getattr(tensor, "ds_shape", tensor.shape))) == 2 and dim in (0, 1) else dim


def dim_buffer(kind: str, dim: int) -> str:
    return masking.private_name(f"{kind}_d{dim}")


def expand(units: torch.Tensor, width: int, tiles: int) -> torch.Tensor:
    out = units.repeat_interleave(width) if width > 1 else units
    return out.repeat(tiles) if tiles > 1 else out


def _dim_transform(kind: str, param: str) -> masking.TransformFn:
    def fn(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
        for dim in module.__dict__[UNIT_DIMS][kind].get(param, ()):  # type: ignore[attr-defined]
            vec = getattr(module, dim_buffer(kind, dim))
            shape = [1] * tensor.dim()
            shape[physical_dim(module, tensor, dim)] = -1
            tensor = tensor * vec.view(shape).to(tensor.dtype)
        return tensor

    fn.__qualname__ = f"unit_mask[{kind}.{param}]"
    return fn


def attach_group(group: UnitGroup, owner: str) -> None:
    """Register the unit mask (all ones) and the forward transforms of every member."""
    device = next((p.device for m in group.members for p in m.module.parameters()), torch.device("cpu"))
    if group.unit_buffer not in group.holder._buffers:
        group.holder.register_buffer(group.unit_buffer, torch.ones(group.num_units, dtype=torch.bool, device=device), persistent=False)
    groups = group.holder.__dict__.setdefault(UNIT_GROUPS, {})
    groups[group.kind] = group
    for m in group.members:
        if not m.masked:
            continue
        t = _param_or_buffer(m.module, m.params[0])
        length = _full_len(t, physical_dim(m.module, t, m.dim))
        need = group.num_units * m.width * m.tiles
        if (m.offset + need > length) if (m.offset or m.partial) else (length != need):
            raise ValueError(
                f"module {m.name!r}: dim {m.dim} of {m.params[0]!r} has {length} entries, expected "
                f"{group.num_units} units x {m.width} x {m.tiles} from offset {m.offset} for {group.name!r}"
            )
        buf = dim_buffer(group.kind, m.dim)
        if buf not in m.module._buffers:
            m.module.register_buffer(buf, torch.ones(length, dtype=torch.bool, device=device), persistent=False)
        dims = m.module.__dict__.setdefault(UNIT_DIMS, {}).setdefault(group.kind, {})
        for p in m.params:
            if not isinstance(m.module._parameters.get(p), nn.Parameter):
                continue  # buffers (running stats) are not masked
            if m.dim not in dims.setdefault(p, []):
                dims[p].append(m.dim)
            masking.add_param_transform(
                m.module, p, owner, _dim_transform(group.kind, p), kind=group.kind,
                priority=masking.MASK_PRIORITY, module_name=m.name,
            )


@torch.no_grad()
def sync_group(group: UnitGroup) -> None:
    """Copy the group's unit mask into every member's expanded dim vector."""
    units = group.mask
    for m in group.members:
        if not m.masked:
            continue
        vec = getattr(m.module, dim_buffer(group.kind, m.dim))
        # one vector per (kind, dim); each group of the kind writes its own slice of it (a module is
        # an "out" / "in" member of several groups only at disjoint offsets: a concatenation)
        part = expand(units.to(vec.device), m.width, m.tiles)
        vec[m.offset:m.offset + part.numel()].copy_(part)


# ---------------------------------------------------------------------------- removal



def detach_group(group: UnitGroup, owner: str) -> None:
    """Undo :func:`attach_group`: ``owner``'s transforms come off every member, and the group's unit
    mask, its per-dim masks and its records on the modules go (the weights keep their values)."""
    for m in group.members:
        masking.remove_owner(m.module, owner)
        dims = m.module.__dict__.get(UNIT_DIMS, {})
        if dims.pop(group.kind, None) is not None and not dims:
            m.module.__dict__.pop(UNIT_DIMS, None)
        m.module._buffers.pop(dim_buffer(group.kind, m.dim), None)
    groups = group.holder.__dict__.get(UNIT_GROUPS, {})
    if groups.pop(group.kind, None) is not None and not groups:
        group.holder.__dict__.pop(UNIT_GROUPS, None)
    group.holder._buffers.pop(group.unit_buffer, None)

def _full_keep(m: Member, part: torch.Tensor) -> torch.Tensor:
    """The keep vector of ``m``'s whole dim: ``part`` at ``m.offset``, True elsewhere."""
    t = _param_or_buffer(m.module, m.params[0])
    length = _full_len(t, physical_dim(m.module, t, m.dim))  # a Conv1D's logical dim is stored swapped
    if m.offset == 0 and part.numel() == length:
        return part
    full = torch.ones(length, dtype=torch.bool)
    full[m.offset:m.offset + part.numel()] = part
    return full


def _keep_index(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask.bool().cpu(), as_tuple=False).flatten()


def unit_groups(model: nn.Module) -> list[UnitGroup]:
    """Every :class:`UnitGroup` attached in ``model``."""
    out = []
    for module in model.modules():
        groups = module.__dict__.get(UNIT_GROUPS)
        if groups:
            out.extend(groups.values())
    return out


@torch.no_grad()
def remove_units(model: nn.Module, groups: list[UnitGroup] | None = None) -> list[str]:
    """Physically remove the pruned units of ``groups`` (default: all attached). Returns notes.

    Parameters must hold their final values (masks baked); the modules may still be wrapped.
    """
    groups = unit_groups(model) if groups is None else groups
    notes: list[str] = []
    # keep vectors per (module, dim), AND-ed over groups
    keep: dict[int, tuple[nn.Module, dict[int, torch.Tensor], set[str]]] = {}
    for g in groups:
        units = g.mask.detach().bool().cpu()
        if not g.removable:
            why = g.attention.kept_reason if g.attention is not None else ""
            notes.append(
                f"{g.name}: {int((~units).sum())} of {g.num_units} {g.unit}s zeroed but kept"
                + (f": {why}." if why else ".")
            )
            for m in g.members:  # bake zeros of the pruned units everywhere, incl. unmasked members
                vec = expand(units, m.width, m.tiles)
                for p in m.params:
                    t = _param_or_buffer(m.module, p)
                    if isinstance(t, nn.Parameter) and t.dim() > m.dim:
                        shape = [1] * t.dim()
                        shape[physical_dim(m.module, t, m.dim)] = -1
                        t.data.mul_(vec.view(shape).to(t.dtype))
            continue
        if units.all():
            continue
        for m in g.members:
            vec = _full_keep(m, expand(units, m.width, m.tiles))
            entry = keep.setdefault(id(m.module), (m.module, {}, set()))
            prev = entry[1].get(m.dim)
            entry[1][m.dim] = vec if prev is None else (prev & vec)
            entry[2].update(m.params)
    for module, dims, params in keep.values():
        transposed = is_conv1d(module)  # before its weight changes shape
        names = set(params)
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            names |= {"weight", "bias", "running_mean", "running_var"}
        if isinstance(module, nn.Linear | nn.Conv2d) or transposed:
            names |= {"weight"} | ({"bias"} if module.bias is not None else set())
        for name in sorted(names):
            t = module._parameters.get(name) if name in module._parameters else module._buffers.get(name)
            if t is None:
                continue
            new = t.data
            for dim, vec in dims.items():
                if dim == 1 and new.dim() < 2:
                    continue  # bias / BN vectors have no input dim
                pd = physical_dim(module, new, dim, transposed)
                if new.shape[pd] != vec.numel():
                    raise ValueError(f"surgery: {type(module).__name__}.{name} dim {pd} has {new.shape[pd]} entries, mask has {vec.numel()}")
                new = new.index_select(pd, _keep_index(vec).to(new.device))
            new = new.contiguous().clone()
            if name in module._parameters:
                module._parameters[name] = nn.Parameter(new, requires_grad=t.requires_grad)
            else:
                module._buffers[name] = new
        _slice_quant_ranges(module, dims, transposed)
        w = module._parameters.get("weight")
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = int(w.shape[0]), int(w.shape[1])
        elif transposed:  # Conv1D: weight [nx, nf]
            module.nx, module.nf = int(w.shape[0]), int(w.shape[1])
        elif isinstance(module, nn.Conv2d):
            if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
                module.groups = int(w.shape[0])  # depthwise: one filter per channel, still
            module.out_channels = int(w.shape[0])
            module.in_channels = int(w.shape[1]) * module.groups
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.num_features = int((w if w is not None else module.running_mean).shape[0])
    for g in groups:
        if g.attention is not None and g.removable:  # the family fixes head counts / config
            g.attention.family.update_after_head_removal(g.attention, g.mask.detach().bool().cpu().tolist())
    if keep:
        from lightning_compress.core.families.registry import after_unit_removal  # families import surgery's records

        after_unit_removal(model)
    return notes


def _slice_quant_ranges(module: nn.Module, dims: dict[int, torch.Tensor], transposed: bool = False) -> None:
    """Keep a weight quantizer's fixed per-row ranges (post-training calibration) in step with removed
    output rows.  Per-tensor ranges and ranges recomputed from the weight need nothing.

    Raises:
        ValueError: input columns removed under fixed group-wise ranges (the groups would shift).
    """
    from lightning_compress.core.quantize import weight_quantizer

    q = weight_quantizer(module)
    if q is None or q.ranges is None or q.current_spec.granularity == "tensor":
        return
    lo, hi = q.ranges
    out = module._parameters["weight"].shape[1 if transposed else 0] if 0 not in dims else dims[0].numel()
    if 1 in dims and q.current_spec.granularity == "group":
        raise ValueError(
            f"surgery: {type(module).__name__} has fixed group-wise quantization ranges and input columns to "
            f"remove; the groups would shift. Quantize after clean(), or use per-channel / per-tensor ranges."
        )
    if 0 in dims:
        keep = _keep_index(dims[0]).to(lo.device)
        per_row = lo.numel() // out
        lo = lo.reshape(out, per_row, *lo.shape[1:]).index_select(0, keep).reshape(-1, *lo.shape[1:])
        hi = hi.reshape(out, per_row, *hi.shape[1:]).index_select(0, keep).reshape(-1, *hi.shape[1:])
        q.ranges = (lo, hi)

