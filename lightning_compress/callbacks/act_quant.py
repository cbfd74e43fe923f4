"""``ActQuant``: quantization-aware training of layer inputs (activations)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from lightning_compress.core import act_quant as aq
from lightning_compress.core import masking
from lightning_compress.core.quantize import SUPPORTED_ACT_BITS, check_bits
from lightning_compress.core.select import select_modules

_COUNTER = itertools.count()
RANGES = ("dynamic", "static")


class ActQuant(Callback):
    """Fake-quantizes the input of every targeted Linear / Conv2d (straight-through in backward).

    * ``range="dynamic"``: scale (and zero-point) computed at every call, per token for Linear
      (over the last dimension) and per image for Conv2d (over C, H, W).
    * ``range="static"``: one per-tensor range per layer, learned in training as an exponential
      moving average (``momentum``) of each batch's min / max, averaged over ranks after every
      training batch (so all ranks quantize alike), frozen in eval mode.  The ranges live in
      non-persistent module buffers (the model's ``state_dict`` keys do not change) and in this
      callback's ``state_dict`` (so they survive checkpoints, DeepSpeed ones included).

    Args:
        bits: activation width in bits (8 or 4).
        range: ``"dynamic"`` or ``"static"`` (see above).
        symmetric: symmetric (zero-point 0) or asymmetric (zero-point from the range).
        modules: regexes of module names (Linear, Conv2d); None: all except the last one.
        exclude: regexes of module names to leave alone.
        momentum: EMA factor of the static range (0 <= momentum < 1).

    Raises:
        ValueError: unsupported ``bits``, ``range`` or ``momentum`` (``__init__``); a regex matching
            nothing or no Linear / Conv2d to quantize (``setup``).

    Example::

        trainer = Trainer(callbacks=[WeightQuant(bits=8), ActQuant(bits=8, range="static")])
    """

    def __init__(
        self,
        bits: int = 8,
        range: Literal["dynamic", "static"] = "dynamic",
        symmetric: bool = True,
        modules: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        momentum: float = 0.95,
    ) -> None:
        name = type(self).__name__
        check_bits(bits, SUPPORTED_ACT_BITS, "bits", name)
        if range not in RANGES:
            raise ValueError(f"{name}: `range`={range!r} must be one of {list(RANGES)}.")
        if not (0.0 <= float(momentum) < 1.0):
            raise ValueError(f"{name}: `momentum`={momentum!r} must be in [0, 1).")
        self.bits = bits
        self.range = range
        self.symmetric = symmetric
        self.modules = modules
        self.exclude = exclude
        self.momentum = float(momentum)
        self._owner = f"{name}#{next(_COUNTER)}"
        self._targets: dict[str, nn.Module] = {}
        self._quantizers: dict[str, aq.ActFakeQuant] = {}
        self._pending: dict[str, Any] | None = None

    @property
    def targets(self) -> dict[str, nn.Module]:
        return dict(self._targets)

    def ranges(self) -> dict[str, tuple[float, float] | None]:
        """Static ranges ``{module name: (lo, hi)}`` (None where nothing was learned yet)."""
        return {n: aq.static_range(m) for n, m in self._targets.items()}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._targets:
            return
        name = type(self).__name__
        targets = select_modules(
            pl_module, self.modules, self.exclude, (nn.Linear, nn.Conv2d), owner=name, exclude_last=self.modules is None
        )
        for mod_name, module in targets.items():
            q = aq.ActFakeQuant(self.bits, self.symmetric, self.range, self.momentum)
            aq.attach(module, q, self._owner, mod_name)
            self._quantizers[mod_name] = q
        self._targets = targets
        if self._pending is not None:
            self._apply_ranges(self._pending)
            self._pending = None

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # every micro-batch (not only at accumulation boundaries): every forward updates the EMA, and
        # under DeepSpeed the boundary flag has already moved on when this hook runs
        if self.range == "static":
            aq.sync_static_ranges(list(self._targets.values()))

    def remove(self) -> None:
        """Take the quantizers off the modules."""
        for module in self._targets.values():
            masking.remove_owner(module, self._owner)
        self._targets = {}
        self._quantizers = {}

    def _apply_ranges(self, state: dict[str, Any]) -> None:
        for mod_name, rng in state.get("ranges", {}).items():
            if mod_name not in self._targets:
                raise ValueError(
                    f"{type(self).__name__}: checkpoint has a static range for module {mod_name!r}, which this "
                    f"callback does not target; resume with the same `modules` / `exclude`."
                )
            if rng is not None:
                aq.set_static_range(self._targets[mod_name], float(rng[0]), float(rng[1]))

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.range != "static":
            return {"ranges": {}}
        return {"ranges": {n: (list(r) if r is not None else None) for n, r in self.ranges().items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._targets:
            self._apply_ranges(state_dict)
        else:
            self._pending = dict(state_dict)
