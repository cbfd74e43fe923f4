"""``ProgressLines``: plain-text progress, one line per phase and per epoch, for logs and pipes.

Lightning's progress bars redraw one terminal line; written to a file or a pipe (CI, ``nohup``, ``| tee``)
they print nothing readable for minutes.  This callback prints whole lines instead (rank 0 only, flushed):

* at the start of ``fit`` (the phase line): the name, epochs, optimizer steps of the fit
  (``trainer.estimated_stepping_batches``) and every compression callback on the Trainer with its target;
* at the end of every training epoch: mean training loss of the epoch, the scalar metrics the
  LightningModule logged (``trainer.callback_metrics``, e.g. ``train_acc``), the compression state now,
  elapsed time and ETA;
* optionally also inside an epoch, every ``every_n_steps`` optimizer steps and/or every ``every_s`` seconds;
* at the end of ``fit``: steps done, wall time, seconds per step, the final compression state.

Units: *loss* is the mean over the epoch's training batches of the loss ``training_step`` returned
(Lightning divides it by ``accumulate_grad_batches``; this callback multiplies it back, so it is the
per-batch loss); *steps* are optimizer steps (``trainer.global_step``); *ETA* is
``elapsed / steps done in this fit * steps left`` (unknown, ``?``, while no step is done or the fit's
length is unknown).  The loss is summed on the device and read once per line, so there is no host sync
per step.

Compression state comes from :func:`lightning_compress.report.schedule_status` (the public, read-only
view that ``RedundancyClean`` also uses): pruning callbacks show their current sparsity (fraction of
zeros in their masks) and prune events done / total, ``WeightQuant`` its current weight width (``fp`` before
it switches on), ``ActQuant`` its activation width and range mode.

The callback reads state and prints; it changes nothing in training.  Use it when stdout is not a terminal
and the usual bar when it is::

    import sys
    from lightning.pytorch import Trainer
    from lightning_compress.callbacks.progress_lines import ProgressLines

    tty = sys.stdout.isatty()
    trainer = Trainer(enable_progress_bar=tty, callbacks=[] if tty else [ProgressLines("fine-tune", every_s=30)])
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, TextIO

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from lightning_compress.core import args
from lightning_compress.report import schedule_status

_OWNER = "ProgressLines"


def format_duration(seconds: float | None) -> str:
    """``m:ss`` (``h:mm:ss`` from one hour on); ``?`` for None / not finite."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def compression_summary(callbacks: list[Any]) -> str:
    """The compression state of ``callbacks`` in a few words, e.g. ``sparsity 0.372 (4/10 events), W8, A8
    static``; empty when none of them compresses (read through
    :func:`lightning_compress.report.schedule_status`)."""
    parts = []
    for s in schedule_status(callbacks):
        if s["kind"] == "pruning":
            done = sum(g["events_done"] for g in s["groups"])
            totals = [g["events_total"] for g in s["groups"]]
            total = "?" if any(t is None for t in totals) else sum(totals)
            parts.append(f"sparsity {s['sparsity']:.3f} ({done}/{total} events)")
        elif s["kind"] == "weight_quant":
            parts.append("W" + ("fp" if s["bits"] is None else str(s["bits"])))
        elif s["kind"] == "act_quant":
            parts.append(f"A{s['bits']} {s['range']}" if s["on"] else "Afp")
    return ", ".join(parts)


def compression_targets(callbacks: list[Any]) -> str:
    """What each compression callback aims at, e.g. ``ChannelPruning -> 0.50, WeightQuant -> 8 bits``."""
    parts = []
    for s in schedule_status(callbacks):
        name = s["callback"].split("#")[0]
        if s["kind"] == "pruning":
            targets = sorted({round(g["target_sparsity"], 4) for g in s["groups"]})
            end = s.get("end_step")
            parts.append(f"{name} -> sparsity {', '.join(f'{t:.2f}' for t in targets)}"
                         + (f" by step {end}" if end is not None else ""))
        elif s["kind"] == "weight_quant":
            parts.append(f"{name} -> {s['target_bits']} bits")
        elif s["kind"] == "act_quant":
            parts.append(f"{name} -> {s['bits']} bits {s['range']}")
    return ", ".join(parts)


def _scalar(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v.detach().float().cpu())
    return None


class ProgressLines(Callback):
    """Print one line per phase (fit start / end) and per training epoch, optionally more often.

    Args:
        name: label at the start of every line (``[name] ...``), e.g. the recipe; ``None``: none.
        every_n_steps: also print a line every this many optimizer steps inside an epoch (None: no).
        every_s: also print a line when this many seconds passed since the last line (None: no).
        metrics: names in ``trainer.callback_metrics`` to show (in this order, those present);
            None: every scalar metric whose name does not start with ``val`` / ``test`` (training-time
            metrics; validation ones are shown after a validation run with ``metrics`` naming them).
        stream: where to write (default ``sys.stdout`` at each write, so pytest's capture and
            redirections see it).
        clock: the time source in seconds (default ``time.monotonic``; tests pass a fake).

    Raises:
        TypeError / ValueError: in ``__init__``, for a ``name`` that is not a string, a non-positive or
            non-integer ``every_n_steps``, a non-positive ``every_s``, or ``metrics`` that are not strings.
    """

    def __init__(
        self,
        name: str | None = None,
        every_n_steps: int | None = None,
        every_s: float | None = None,
        metrics: list[str] | tuple[str, ...] | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        self.name = args.check_str(name, "name", _OWNER, allow_none=True, what="a label for the lines")
        self.every_n_steps = None if every_n_steps is None else args.check_int(
            every_n_steps, "every_n_steps", _OWNER, minimum=1, fix="pass a number of optimizer steps >= 1, or None")
        if every_s is not None:
            if isinstance(every_s, bool) or not isinstance(every_s, (int, float)):
                args.fail(_OWNER, "every_s", every_s, "is not a number of seconds", "pass e.g. 30 or None", TypeError)
            if not every_s > 0:
                args.fail(_OWNER, "every_s", every_s, "is not positive", "pass a number of seconds > 0, or None")
        self.every_s = None if every_s is None else float(every_s)
        if metrics is not None:
            if isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics):
                args.fail(_OWNER, "metrics", metrics, "is not a list of metric names",
                          "pass e.g. ['train_acc'], or None for every training metric", TypeError)
            metrics = list(metrics)
        self.metrics = metrics
        self.stream = stream
        self.clock = clock or time.monotonic
        #: every line printed, in order (also handy for tests and for saving a log)
        self.lines: list[str] = []
        self._reset_epoch()
        self._fit_start = self._last_line = 0.0
        self._start_step = 0
        self._total: int | None = None  # optimizer steps of the fit (-1: unknown), read at on_train_start

    # ------------------------------------------------------------------ output
    def write(self, trainer: Trainer, text: str) -> None:
        """Print ``[name] text`` on rank 0 (flushed) and keep it in :attr:`lines`."""
        if not trainer.is_global_zero:
            return
        line = f"[{self.name}] {text}" if self.name else text
        self.lines.append(line)
        stream = self.stream if self.stream is not None else sys.stdout
        print(line, file=stream, flush=True)
        self._last_line = self.clock()

    def _reset_epoch(self) -> None:
        self._loss_sum: torch.Tensor | None = None
        self._loss_batches = 0

    # ------------------------------------------------------------------ pieces of a line
    def _total_steps(self, trainer: Trainer) -> int | None:
        """Optimizer steps of this fit (read once, at ``on_train_start``); None when unknown (infinite)."""
        if self._total is None:
            total = trainer.estimated_stepping_batches
            self._total = int(total) if isinstance(total, (int, float)) and math.isfinite(total) else -1
        return None if self._total < 0 else self._total

    def _shown_metrics(self, trainer: Trainer) -> list[str]:
        out = []
        cm = trainer.callback_metrics
        names = self.metrics if self.metrics is not None else [
            k for k in cm if not k.startswith(("val", "test"))]
        for k in names:
            v = _scalar(cm.get(k))
            if v is not None:
                out.append(f"{k} {v:.4f}")
        return out

    def status(self, trainer: Trainer) -> str:
        """The body of a progress line now: step, loss, metrics, compression state, elapsed, ETA."""
        total = self._total_steps(trainer)
        done = trainer.global_step - self._start_step
        parts = [f"step {trainer.global_step}" + (f"/{self._start_step + total}" if total is not None else "")]
        if self._loss_batches:
            loss = float(self._loss_sum.detach().float().cpu()) / self._loss_batches  # type: ignore[union-attr]
            parts.append(f"loss {loss:.4f}")
        parts += self._shown_metrics(trainer)
        comp = compression_summary(list(trainer.callbacks))
        if comp:
            parts.append(comp)
        elapsed = self.clock() - self._fit_start
        eta = elapsed / done * (total - done) if total is not None and done > 0 else None
        parts.append(f"elapsed {format_duration(elapsed)}")
        parts.append(f"ETA {format_duration(eta)}")
        return "  ".join(parts)

    # ------------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start = self._last_line = self.clock()
        self._start_step = trainer.global_step
        self._total = None
        self._reset_epoch()

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after the compression callbacks' on_train_start resolved their schedules (they run before: the
        # Trainer calls callbacks in order, and this one goes last in the examples; either order is right
        # for the phase line's targets, only `by step` needs the resolved end)
        total = self._total_steps(trainer)
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else "?"
        targets = compression_targets(list(trainer.callbacks))
        self.write(trainer, f"fit: up to {epochs} epoch(s), {total if total is not None else '?'} optimizer steps"
                   + (f"; compression: {targets}" if targets else "; no compression callback"))

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset_epoch()

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            value = loss.detach() * trainer.accumulate_grad_batches  # Lightning divided it (automatic optimization)
            self._loss_sum = value if self._loss_sum is None else self._loss_sum + value
            self._loss_batches += 1
        at_boundary = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        due = self.every_n_steps is not None and at_boundary and trainer.global_step > self._start_step and (
            (trainer.global_step - self._start_step) % self.every_n_steps == 0)
        due = due or (self.every_s is not None and self.clock() - self._last_line >= self.every_s)
        if due:
            self.write(trainer, f"epoch {trainer.current_epoch + 1}  " + self.status(trainer))

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs is not None and trainer.max_epochs > 0 else ""
        self.write(trainer, f"epoch {trainer.current_epoch + 1}{epochs} done  " + self.status(trainer))

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        done = trainer.global_step - self._start_step
        wall = self.clock() - self._fit_start
        comp = compression_summary(list(trainer.callbacks))
        per_step = f" ({wall / done:.2f} s/step)" if done else ""
        self.write(trainer, f"fit done: {done} optimizer steps in {format_duration(wall)}{per_step}"
                   + (f"; {comp}" if comp else ""))


__all__ = ["ProgressLines", "compression_summary", "compression_targets", "format_duration"]
