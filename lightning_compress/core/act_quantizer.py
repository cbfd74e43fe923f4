"""``ActQuantizer``: quantization-aware training of layer inputs from any training loop (pure PyTorch).

The driver behind the ``ActQuant`` callback, usable without Lightning::

    aq = ActQuantizer(model, bits=8, range="static")   # attaches now
    for x, y in loader:
        loss_fn(model(x), y).backward()                 # train mode: the static ranges learn (EMA)
        opt.step(); opt.zero_grad()
        aq.sync_ranges()                                # under torch.distributed: same ranges on every rank
    model.eval()                                        # eval mode: ranges frozen
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

from torch import nn

from lightning_compress.core import act_quant as aq
from lightning_compress.core import args, masking
from lightning_compress.core.conv1d import conv1d_types
from lightning_compress.core.direct_reads import guard_direct_reads
from lightning_compress.core.quant_grid import SUPPORTED_ACT_BITS, check_bits
from lightning_compress.core.select import select_modules

_COUNTER = itertools.count()
RANGES = ("dynamic", "static")


def attach_act_quantizers(
    targets: dict[str, nn.Module], bits: int, symmetric: bool, range: str, momentum: float, owner: str
) -> dict[str, aq.ActFakeQuant]:
    """Put one :class:`~lightning_compress.core.act_quant.ActFakeQuant` on the first input of every
    module of ``targets`` under ``owner``; returns them by module name."""
    quantizers: dict[str, aq.ActFakeQuant] = {}
    try:
        for mod_name, module in targets.items():
            q = aq.ActFakeQuant(bits, symmetric, range, momentum)
            aq.attach(module, q, owner, mod_name)
            quantizers[mod_name] = q
    except Exception:  # all or nothing
        for mod_name in quantizers:
            masking.remove_owner(targets[mod_name], owner)
        raise
    return quantizers


class ActQuantizer:
    """Fake-quantizes the input of every targeted Linear / Conv2d / Hugging Face ``Conv1D``
    (straight-through in backward; a Conv1D is quantized per token, like a Linear).

    * ``range="dynamic"``: scale (and zero-point) computed at every call, per token for Linear (over
      the last dimension) and per image for Conv2d (over C, H, W).
    * ``range="static"``: one per-tensor range per layer, learned in train mode as an exponential
      moving average (``momentum``) of each batch's min / max, used as is in eval mode.  The ranges
      live in non-persistent module buffers (the model's ``state_dict`` keys do not change) and in
      :meth:`state_dict`.  Under ``torch.distributed`` call :meth:`sync_ranges` after every training
      batch so all ranks quantize alike.

    Args:
        model: the model to attach to now (None: call :meth:`attach` later).
        bits: activation width in bits (8 or 4).
        range: ``"dynamic"`` or ``"static"`` (see above).
        symmetric: symmetric (zero-point 0) or asymmetric (zero-point from the range).
        modules: regexes of module names (Linear, Conv2d); None: all except the last one.
        exclude: regexes of module names to leave alone.
        momentum: EMA factor of the static range (0 <= momentum < 1).
        start_step: inputs pass unquantized until this many optimizer steps are done (:meth:`step`;
            DeepSpeed's ``schedule_offset``); default 0 = quantized from the start.
        owner: the id the quantizers are registered under (default ``"ActQuantizer#<n>"``).
        name: the name error messages start with (default ``"ActQuantizer"``).

    Raises:
        TypeError: an argument of the wrong type (:mod:`lightning_compress.core.args`: ``bits="8"``,
            ``symmetric="no"``, ``momentum="0.9"``, ``modules=5``).
        ValueError: unsupported ``bits``, ``range`` or ``momentum``, ``modules=[]``, a regex that does
            not compile (at construction); a regex
            matching nothing or no Linear / Conv2d to quantize (:meth:`attach`); a state with a range
            for a module not targeted (:meth:`load_state_dict`).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        bits: int = 8,
        range: Literal["dynamic", "static"] = "dynamic",
        symmetric: bool = True,
        modules: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        momentum: float = 0.95,
        *,
        start_step: int = 0,
        owner: str | None = None,
        name: str | None = None,
    ) -> None:
        name = name or type(self).__name__
        args.check_step(start_step, "start_step", name, allow_fraction=False)
        check_bits(bits, SUPPORTED_ACT_BITS, "bits", name)
        args.check_choice(range, "range", name, RANGES)
        self.name = name
        self.owner = owner or f"{type(self).__name__}#{next(_COUNTER)}"
        self.bits = bits
        self.range = range
        self.symmetric = args.check_bool(symmetric, "symmetric", name)
        self.modules = args.check_regexes(modules, "modules", name)
        self.exclude = args.check_regexes(exclude, "exclude", name, allow_empty=True)
        self.momentum = args.check_float(momentum, "momentum", name, minimum=0.0, maximum=1.0, max_closed=False)
        self.start_step = start_step
        #: optimizer steps done, as last passed to :meth:`step`
        self.steps_done = 0
        #: ``{qualified name: module}`` whose input is quantized (after :meth:`attach`)
        self.targets: dict[str, nn.Module] = {}
        #: ``{qualified name: ActFakeQuant}`` on those modules
        self.quantizers: dict[str, aq.ActFakeQuant] = {}
        self._pending: dict[str, Any] | None = None
        if model is not None:
            self.attach(model)

    @property
    def is_attached(self) -> bool:
        return bool(self.targets)

    def attach(self, model: nn.Module) -> dict[str, nn.Module]:
        """Put the quantizers on ``model``'s targets, then apply a state loaded earlier; returns the
        targets.  Call :meth:`remove` before attaching to another model."""
        if self.targets:
            raise ValueError(f"{self.name}: already attached to {len(self.targets)} modules; call remove() first.")
        targets = select_modules(
            model, self.modules, self.exclude, (nn.Linear, nn.Conv2d, *conv1d_types(model)), owner=self.name,
            exclude_last=self.modules is None,
        )
        self.quantizers = attach_act_quantizers(targets, self.bits, self.symmetric, self.range, self.momentum, self.owner)
        try:
            guard_direct_reads(model)
        except ValueError as err:
            for module in targets.values():
                masking.remove_owner(module, self.owner)
            self.quantizers = {}
            raise ValueError(f"{self.name}: {err}") from None
        self.targets = targets
        self.step(self.steps_done)
        if self._pending is not None:
            state, self._pending = self._pending, None
            self.load_state_dict(state)
        return targets

    def step(self, step: int) -> None:
        """Turn the quantizers on once ``step`` optimizer steps are done and ``step >= start_step``
        (call before the forward)."""
        self.steps_done = int(step)
        for q in self.quantizers.values():
            q.enabled = self.steps_done >= self.start_step

    def remove(self) -> None:
        """Take the quantizers off the modules (the range buffers stay until ``strip``)."""
        for module in self.targets.values():
            masking.remove_owner(module, self.owner)
        self.targets = {}
        self.quantizers = {}

    def ranges(self) -> dict[str, tuple[float, float] | None]:
        """Static ranges ``{module name: (lo, hi)}`` (None where nothing was learned yet)."""
        return {n: aq.static_range(m) for n, m in self.targets.items()}

    def sync_ranges(self) -> None:
        """Average the static ranges over the ranks of the default process group (no-op for dynamic
        ranges or without a process group).  Collective: call it on every rank."""
        if self.range == "static":
            aq.sync_static_ranges(list(self.targets.values()))

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """``{"ranges": {module name: [lo, hi] or None}}`` (empty for dynamic ranges)."""
        if self.range != "static":
            return {"ranges": {}}
        return {"ranges": {n: (list(r) if r is not None else None) for n, r in self.ranges().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the static ranges (kept until :meth:`attach` when not attached yet)."""
        if not self.targets:
            self._pending = dict(state)
            return
        for mod_name, rng in state.get("ranges", {}).items():
            if mod_name not in self.targets:
                raise ValueError(
                    f"{self.name}: checkpoint has a static range for module {mod_name!r}, which this "
                    f"{self.name} does not target; resume with the same `modules` / `exclude`."
                )
            if rng is not None:
                aq.set_static_range(self.targets[mod_name], float(rng[0]), float(rng[1]))


__all__ = ["ActQuantizer", "attach_act_quantizers"]
