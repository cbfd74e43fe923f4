"""Disjoint sets over integer ids (path halving; ``union(a, b)`` makes ``a``'s root the root): the
channel spaces merged by the fx graph walk (:mod:`~lightning_compress.core.graph`) and by the forward
recorder (:mod:`~lightning_compress.core.channel_trace`)."""

from __future__ import annotations


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def add(self, i: int) -> None:
        self.parent.setdefault(i, i)

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
