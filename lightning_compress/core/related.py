"""``related_modules`` (producers and their consumers named by hand) -> channel spaces, per layer.

:func:`lightning_compress.core.graph.related_spaces` reads ``{producer regex: [consumer regexes]}``
under one pairing rule; :func:`paired_spaces` adds the rule RowPruning uses by default and makes the
result one mask per coupled set:

* ``pairing="auto"`` (default): a key matching several producers (one per layer, e.g. every
  ``mlp.gate_proj``) is paired as DeepSpeed did: the j-th producer with the j-th module each consumer
  regex matches (``"index"``; the counts must agree); a key matching one producer gives it every
  module its consumer regexes match (``"all"``).  ``"index"`` / ``"all"`` force one rule.
* Every pairing is checked at setup: a consumer whose input width differs from its producer's output
  width is refused (naming both), as are counts that differ under ``"index"``.
* Spaces that share a layer are merged into one space, so that layer gets one mask: a SwiGLU named as
  ``{"gate_proj": ["down_proj"], "up_proj": ["down_proj"]}`` gives, per layer, ``gate_proj`` and
  ``up_proj`` as producers of one row mask and ``down_proj`` as the consumer (exact: a row removed
  from every producer is the column removed from every consumer).  Producers merged this way must
  have the same output width (refused otherwise).
* A producer that a model family knows to be combined elementwise with others (a SwiGLU ``up_proj``
  with its ``gate_proj``) must be named together with them: removing rows of one alone would leave
  the product with mismatched widths, so such a pairing is refused at setup, naming the others.

Pure PyTorch.
"""

from __future__ import annotations

import re

from torch import nn

from lightning_compress.core.graph import ChannelSpace, related_spaces

PAIRINGS = ("auto", "index", "all")


def _producers(model: nn.Module, regex: str) -> int:
    return sum(1 for n, m in model.named_modules() if n and re.search(regex, n) and isinstance(m, nn.Linear | nn.Conv2d))


def _width(m: nn.Module) -> int:
    return int(m.out_features if isinstance(m, nn.Linear) else m.out_channels)


def merge_spaces(spaces: list[ChannelSpace], owner: str) -> list[ChannelSpace]:
    """Spaces that share a producer or a consumer module, merged (one mask per merged space).

    Raises:
        ValueError: merged producers of different output widths (they cannot share one mask).
    """
    parent = list(range(len(spaces)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    seen: dict[tuple[str, int], int] = {}
    for i, sp in enumerate(spaces):
        for role, mods in (("p", sp.producers), ("c", sp.consumers)):
            for m in mods.values():
                j = seen.setdefault((role, id(m)), i)
                parent[find(i)] = find(j)
    merged: dict[int, ChannelSpace] = {}
    for i, sp in enumerate(spaces):
        tgt = merged.setdefault(find(i), ChannelSpace())
        tgt.producers.update(sp.producers)
        tgt.consumers.update(sp.consumers)
        tgt.norms.update(sp.norms)
        tgt.problems.extend(sp.problems)
    out = list(merged.values())
    for sp in out:
        widths = {n: _width(m) for n, m in sp.producers.items()}
        if len(set(widths.values())) > 1:
            raise ValueError(
                f"{owner}: `related_modules` gives producers {widths} (output widths) common consumers "
                f"{sorted(sp.consumers)}, so they would share one row mask, but their widths differ. Fix the regexes "
                f"so each consumer is named only for the producers it reads."
            )
    return out


def paired_spaces(model: nn.Module, related: dict[str, list[str]], owner: str, pairing: str = "auto") -> list[ChannelSpace]:
    """The channel spaces ``related`` names (see the module docstring), merged per shared layer.

    Raises:
        ValueError: an unknown ``pairing``; as :func:`~lightning_compress.core.graph.related_spaces`
            (a regex matching nothing, counts that differ under per-layer pairing, widths that do not
            fit); merged producers of different widths.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"{owner}: `related_pairing`={pairing!r} must be one of {list(PAIRINGS)}.")
    spaces: list[ChannelSpace] = []
    for prx, crxs in related.items():
        rule = pairing
        if rule == "auto":
            try:
                many = _producers(model, prx) > 1
            except re.error:
                many = False  # related_spaces names the bad regex
            rule = "index" if many else "all"
        spaces.extend(related_spaces(model, {prx: crxs}, owner, rule))
    merged = merge_spaces(spaces, owner)
    _check_partners(model, merged, owner)
    return merged


def _check_partners(model: nn.Module, spaces: list[ChannelSpace], owner: str) -> None:
    from lightning_compress.core.families import family_channel_spaces

    known, _ = family_channel_spaces(model)
    for sp in spaces:
        named = {id(m) for m in sp.producers.values()}
        for fam in known:
            if len(fam.producers) < 2 or not named & {id(m) for m in fam.producers.values()}:
                continue
            missing = sorted(n for n, m in fam.producers.items() if id(m) not in named)
            if missing:
                raise ValueError(
                    f"{owner}: `related_modules` names {sorted(sp.producers)} but not {missing}, whose outputs are "
                    f"combined elementwise with them (e.g. a SwiGLU gate and up projection), so they share one row "
                    f"mask; name them too, with the same consumers (e.g. {{'gate_proj': ['down_proj'], 'up_proj': "
                    f"['down_proj']}})."
                )


__all__ = ["PAIRINGS", "merge_spaces", "paired_spaces"]
