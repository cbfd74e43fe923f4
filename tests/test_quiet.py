"""Known-harmless DeepSpeed messages are hidden during a DeepSpeedCompressionStrategy fit only; real ones stay."""

from __future__ import annotations

import logging
import warnings

import lightning.pytorch as pl

import lightning_compress  # noqa: F401
from lightning_compress.strategies.quiet import DEEPSPEED_LOGGER, QuietDeepSpeed
from tests.models import TinyMLP, mlp_loader

KNOWN = "`torch.distributed.all_gather_into_tensor` is deprecated. Please use `torch.distributed.all_gather_single` instead."
UNTESTED = "**** You are using ZeRO with an untested optimizer, proceed with caution *****"


class _Warns(TinyMLP):
    """Emits, at every step, one known-harmless message and two real ones; records what DeepSpeed's logger lets through."""

    def __init__(self) -> None:
        super().__init__()
        self.log_passes: list[tuple[str, bool]] = []

    def training_step(self, batch, batch_idx):
        warnings.warn(KNOWN, FutureWarning)
        warnings.warn("a real FutureWarning the user must see", FutureWarning)
        warnings.warn(KNOWN, UserWarning)  # same text, other category: not ours to hide
        ds = logging.getLogger(DEEPSPEED_LOGGER)
        for msg in (UNTESTED, "a real DeepSpeed warning"):
            record = ds.makeRecord(ds.name, logging.WARNING, __file__, 0, msg, (), None)
            self.log_passes.append((msg, ds.filter(record)))
        return super().training_step(batch, batch_idx)


def _messages(caught) -> list[tuple[str, str]]:
    return [(w.category.__name__, str(w.message)) for w in caught]


def test_fit_hides_known_messages_only_and_only_during_fit() -> None:
    model = _Warns()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, strategy="deepspeed_compression_stage_3", max_steps=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, mlp_loader())
        during = _messages(caught)
        caught.clear()
        warnings.warn(KNOWN, FutureWarning)  # after teardown: visible again
        after = _messages(caught)
    assert ("FutureWarning", KNOWN) not in during
    assert during.count(("FutureWarning", "a real FutureWarning the user must see")) == 2
    assert during.count(("UserWarning", KNOWN)) == 2
    assert after == [("FutureWarning", KNOWN)]
    assert model.log_passes == [(UNTESTED, False), ("a real DeepSpeed warning", True)] * 2
    assert not logging.getLogger(DEEPSPEED_LOGGER).filters
    assert not trainer.strategy._quiet.active


def test_env_var_keeps_everything(monkeypatch) -> None:
    monkeypatch.setenv("LC_DEEPSPEED_WARNINGS", "1")
    quiet = QuietDeepSpeed()
    before = list(warnings.filters)
    quiet.enter()
    assert not quiet.active and warnings.filters == before
    quiet.exit()


def test_exit_removes_exactly_its_filters() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the user's own filter")
        before = list(warnings.filters)
        quiet = QuietDeepSpeed()
        quiet.enter()
        quiet.enter()  # idempotent
        assert len(warnings.filters) == len(before) + 2
        warnings.filterwarnings("error", message="added by someone else meanwhile")
        quiet.exit()
        quiet.exit()
        assert warnings.filters[1:] == before and "meanwhile" in warnings.filters[0][1].pattern
