"""OneShotCompression in a Trainer: calibrate at the start of fit (then fine-tune with the masks held)
or inside trainer.validate, from the Trainer's own dataloaders."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch

from lightning_compress.callbacks.oneshot_compression import OneShotCompression
from lightning_compress.core import masking
from lightning_compress.oneshot import GPTQ, SparseGPT, Wanda, oneshot
from lightning_compress.oneshot.linear_view import linears, weight_out_in
from tests.oneshot_lightning import TinyLM, first_batches, token_loader


def trainer(**kw):
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, **kw)


def stack_weights(lm):
    return {f"{i}.{n}": weight_out_in(m) for i, b in enumerate(lm.model.model.layers) for n, m in linears(b).items()}


def test_fit_calibrates_then_finetunes_with_masks_held():
    lm = TinyLM()
    ref = copy.deepcopy(lm)
    cb = OneShotCompression([SparseGPT(None, "2:4"), GPTQ(4, group_size=32)], calib_batches=3)
    trainer(max_steps=3, callbacks=[cb]).fit(lm, token_loader())
    assert cb.report is not None and cb.report.calib_batches == 3 and len(cb.report.layers) == 2
    # the same calibration by hand on the same first 3 batches
    oneshot(ref.model, [SparseGPT(None, "2:4"), GPTQ(4, group_size=32)], first_batches(3))
    after = stack_weights(lm)
    mods = lambda m: {f"{i}.{n}": x for i, b in enumerate(m.model.model.layers) for n, x in linears(b).items()}  # noqa: E731
    mine, theirs = mods(lm), mods(ref)
    buf = masking.private_name("mask")
    for name, w in stack_weights(ref).items():
        # the callback's mask is the hand-made one, and fine-tuning kept it (2:4 in the effective weight)
        assert torch.equal(getattr(mine[name], buf), getattr(theirs[name], buf)), name
        kept = (after[name] != 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert bool((kept <= 2).all()), name
    assert not torch.equal(lm.model.model.layers[0].mlp.up_proj.weight, ref.model.model.layers[0].mlp.up_proj.weight)  # it trained


def test_validate_calibrates_from_val_loader():
    lm = TinyLM()
    ref = copy.deepcopy(lm)
    cb = OneShotCompression([Wanda(0.5)], calib_batches=2)
    trainer().validate(lm, token_loader(seed=7))
    assert cb.report is None  # not in the callbacks of that call
    trainer(callbacks=[cb]).validate(lm, token_loader(seed=7))
    oneshot(ref.model, [Wanda(0.5)], first_batches(2, seed=7))
    for name, w in stack_weights(ref).items():
        assert torch.equal(stack_weights(lm)[name], w), name
    assert masking.find_transform(lm.model.model.layers[1].mlp.down_proj, "weight", "sparse_mask") is not None


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"OneShotCompression: `calib_batches`=0"):
        OneShotCompression([Wanda(0.5)], calib_batches=0)
    with pytest.raises(ValueError, match=r"OneShotCompression: `dataloader`='test'"):
        OneShotCompression([Wanda(0.5)], dataloader="test")
    with pytest.raises(ValueError, match=r"OneShotCompression: `methods`"):
        OneShotCompression([])
    with pytest.raises(TypeError, match=r"OneShotCompression: `calib_batches`=2.0"):
        OneShotCompression([Wanda(0.5)], calib_batches=2.0)
    with pytest.raises(TypeError, match=r"OneShotCompression: `verbose`='yes'"):
        OneShotCompression([Wanda(0.5)], verbose="yes")
    lm = TinyLM()
    cb = OneShotCompression([Wanda(0.5)], dataloader="val")
    with pytest.raises(ValueError, match="could not get the val dataloader"):
        trainer(max_steps=1, callbacks=[cb]).fit(lm, token_loader())
