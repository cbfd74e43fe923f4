"""ProgressLines: one line per phase and per epoch (loss, metrics, sparsity / bits, ETA), read-only."""

from __future__ import annotations

import io
import re

import pytest
import torch

from lightning_compress import ActQuant, SparsePruning, WeightQuant
from lightning_compress.callbacks import ProgressLines
from lightning_compress.callbacks.progress_lines import compression_summary, format_duration
from tests.models import TinyMLP, cpu_trainer, mlp_loader


class RecordingMLP(TinyMLP):
    """TinyMLP that logs an accuracy and remembers every loss it returned."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        self.log("train_acc", (logits.argmax(-1) == y).float().mean(), on_step=False, on_epoch=True)
        self.losses.append(float(loss.detach()))
        return loss


class FakeClock:
    """10 s per call: elapsed time and ETA become exact numbers."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 10.0
        return self.t


def test_lines_per_phase_and_epoch_with_compression_state() -> None:
    stream = io.StringIO()
    progress = ProgressLines("tiny", stream=stream, clock=FakeClock())
    pruning = SparsePruning(sparsity=0.5, start_step=0, end_step=3, frequency=1)
    model = RecordingMLP()
    trainer = cpu_trainer(max_epochs=2, callbacks=[pruning, WeightQuant(bits=8), ActQuant(bits=8, range="static"), progress])
    trainer.fit(model, mlp_loader(n=24, batch_size=8))  # 3 batches per epoch, 6 optimizer steps
    lines = stream.getvalue().splitlines()
    assert lines == progress.lines and len(lines) == 4, lines
    assert all(line.startswith("[tiny] ") for line in lines)
    assert lines[0] == ("[tiny] fit: up to 2 epoch(s), 6 optimizer steps; compression: SparsePruning -> sparsity 0.50 "
                        "by step 3, WeightQuant -> 8 bits, ActQuant -> 8 bits static")
    # epoch 1: loss = mean of the three losses training_step returned; sparsity and widths as the callbacks say now
    first = lines[1]
    assert first.startswith("[tiny] epoch 1/2 done  step 3/6  ")
    loss = float(re.search(r"loss (\S+)", first).group(1))
    assert loss == pytest.approx(sum(model.losses[:3]) / 3, abs=1e-4)
    assert re.search(r"train_acc 0\.\d{4}", first)
    assert "W8, A8 static" in first
    second = lines[2]
    assert second.startswith("[tiny] epoch 2/2 done  step 6/6  ")
    assert float(re.search(r"loss (\S+)", second).group(1)) == pytest.approx(sum(model.losses[3:]) / 3, abs=1e-4)
    assert f"sparsity {pruning.sparsity_stats()['sparsity']:.3f} (4/4 events)" in second
    assert second.endswith("ETA 0:00")
    # fake clock: every call adds 10 s; the ETA is elapsed / steps done * steps left (3 of 6 done: ETA = elapsed)
    elapsed = re.search(r"elapsed (\S+)  ETA (\S+)$", first)
    assert elapsed.group(1) == elapsed.group(2)
    assert lines[3].startswith("[tiny] fit done: 6 optimizer steps in ") and "s/step); sparsity 0.500 (4/4 events), W8, A8 static" in lines[3]


def test_every_n_steps_metrics_and_accumulation() -> None:
    stream = io.StringIO()
    progress = ProgressLines(every_n_steps=2, metrics=["train_acc", "absent"], stream=stream)
    model = RecordingMLP()
    trainer = cpu_trainer(max_epochs=1, accumulate_grad_batches=2, callbacks=[progress])
    trainer.fit(model, mlp_loader(n=32, batch_size=8))  # 4 batches, 2 optimizer steps
    lines = progress.lines
    assert lines[0] == "fit: up to 1 epoch(s), 2 optimizer steps; no compression callback"
    inner = [line for line in lines if line.startswith("epoch 1  ")]
    assert len(inner) == 1 and inner[0].startswith("epoch 1  step 2/2  ")
    # the loss shown is the per-batch loss (Lightning divides it by accumulate_grad_batches; undone here)
    assert float(re.search(r"loss (\S+)", inner[0]).group(1)) == pytest.approx(sum(model.losses) / 4, abs=1e-4)
    done = [line for line in lines if line.startswith("epoch 1/1 done")]
    assert len(done) == 1 and "train_acc" in done[0] and "absent" not in done[0]
    assert stream.getvalue().splitlines() == lines


def test_compression_summary_reads_state_without_changing_it() -> None:
    model = TinyMLP()
    pruning = SparsePruning(sparsity=0.5, start_step=0, end_step=0)
    quant = WeightQuant(bits=4, start_bits=8, period=2)
    for cb in (pruning, quant):
        cb.attach(model)
    before = {k: v.clone() for k, v in pruning.masks().items()}
    # before a fit the schedule is not resolved (its events are counted at on_train_start): "?"
    assert compression_summary([pruning, quant, object()]) == "sparsity 0.000 (0/? events), W8"
    assert all(torch.equal(before[k], v) for k, v in pruning.masks().items())
    assert compression_summary([]) == ""


def test_format_duration() -> None:
    assert format_duration(0) == "0:00" and format_duration(61.4) == "1:01" and format_duration(3725) == "1:02:05"
    assert format_duration(None) == "?" and format_duration(float("inf")) == "?"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every_n_steps": 0}, ValueError, r"ProgressLines: `every_n_steps`=0 must be >= 1"),
        ({"every_n_steps": 2.5}, TypeError, r"ProgressLines: `every_n_steps`=2\.5 is a float, not an int"),
        ({"every_s": 0}, ValueError, r"ProgressLines: `every_s`=0 is not positive"),
        ({"every_s": "30"}, TypeError, r"ProgressLines: `every_s`='30' is not a number of seconds"),
        ({"metrics": "train_acc"}, TypeError, r"ProgressLines: `metrics`='train_acc' is not a list of metric names"),
        ({"name": 3}, TypeError, r"ProgressLines: `name`=3 is an int, not a string"),
    ],
)
def test_bad_arguments_are_refused_in_init(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        ProgressLines(**kwargs)
