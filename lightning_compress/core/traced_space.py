"""What a recording of the real forward found (:mod:`lightning_compress.core.channel_trace`): each
coupled set of channels as a :class:`TracedSpace` with the exact tensor slices (:class:`Slot`) that
belong to it, and how the recorder's per-op spaces are merged into them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lightning_compress.core.graph import ChannelSpace

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class Slot:
    """One tensor slice of a space: ``length`` entries of ``module.<params>`` along ``dim`` from ``offset``
    (``width`` consecutive entries per channel)."""

    name: str
    module: nn.Module
    role: str  # "out": weight rows / BatchNorm / depthwise filters; "in": consumer columns
    params: tuple[str, ...]
    dim: int
    offset: int
    length: int
    width: int = 1


@dataclass
class TracedSpace(ChannelSpace):
    """A :class:`~lightning_compress.core.graph.ChannelSpace` from the recording, with the exact slices
    (``slots``) and ``period``: the number of prunable units (channels modulo the period; ``channels``
    unless a grouped conv ties the groups)."""

    channels: int = 0
    period: int = 0
    slots: list[Slot] = field(default_factory=list)
    passthrough: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.channels


def merge_spaces(rec: Any) -> list[TracedSpace]:
    """The recorder's spaces merged per union-find root, with the checks that need every slot: one
    module slice in two spaces merges them (a module called twice); overlapping but unequal slices, a mix
    of Linear and Conv2d producers, or a slice that does not split into the space's units are refused."""
    by_key: dict[tuple, int] = {}
    for sid, sp in enumerate(rec.spaces):
        for s in sp["slots"]:
            key = (id(s.module), s.dim, s.offset, s.length)
            if key in by_key:
                rec.union(by_key[key], sid)
            else:
                by_key[key] = sid
    merged: dict[int, TracedSpace] = {}
    for sid, sp in enumerate(rec.spaces):
        root = rec.find(sid)
        ts = merged.setdefault(root, TracedSpace(channels=sp["channels"], period=sp["channels"]))
        if sp["channels"] != ts.channels:
            ts.problems.append(f"{rec.who(sid)} are merged with channels of another width ({sp['channels']} vs {ts.channels})")
        ts.producers.update(sp["producers"])
        ts.passthrough.update(sp["passthrough"])
        ts.problems.extend(sp["problems"])
        ts.period = math.gcd(ts.period, sp["period"])
        for s in sp["slots"]:
            if not any(o.module is s.module and (o.dim, o.offset, o.length) == (s.dim, s.offset, s.length) for o in ts.slots):
                ts.slots.append(s)
    # the same module slice range claimed by different spaces, overlapping but not equal: refuse
    ranges: dict[tuple, list[tuple[int, int, int]]] = {}
    for root, ts in merged.items():
        for s in ts.slots:
            ranges.setdefault((id(s.module), s.dim), []).append((s.offset, s.offset + s.length, root))
    for rs in ranges.values():
        rs.sort()
        for (a0, a1, ra), (b0, b1, rb) in zip(rs, rs[1:]):
            if b0 < a1 and ra != rb:
                for r in (ra, rb):
                    merged[r].problems.append("a layer's channel slices overlap between two coupled sets")
    out = []
    for ts in merged.values():
        kinds = {isinstance(m, nn.Linear) for m in ts.producers.values()}
        if len(kinds) > 1:
            ts.problems.append(f"{sorted(ts.producers)} mix Linear and Conv2d producers")
        for s in ts.slots:
            if s.role == "in":
                ts.consumers[s.name] = s.module
            elif isinstance(s.module, _BN):
                ts.norms[s.name] = s.module
            if s.length % (ts.period * s.width):
                ts.problems.append(f"{s.name!r}: {s.length} entries do not split into {ts.period} units")
        out.append(ts)
    return out


__all__ = ["Slot", "TracedSpace", "merge_spaces"]
