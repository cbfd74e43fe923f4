"""A one-shot calibration survives checkpoints: masks and quantizer ranges in OneShotCompression's
state, restored on resume (== the uninterrupted run), and in trainer.validate(ckpt_path=...)."""

from __future__ import annotations

import copy
import io

import lightning.pytorch as pl
import pytest
import torch

from lightning_compress.callbacks.oneshot_compression import OneShotCompression
from lightning_compress.core import masking
from lightning_compress.core.quant_grid import WEIGHT_QUANT_KIND
from lightning_compress.oneshot import GPTQ, SmoothQuant, SparseGPT, Wanda, oneshot
from lightning_compress.oneshot.packed_mask import stored_keep
from lightning_compress.oneshot.saved_state import calibration_state, restore_calibration
from tests.oneshot_lightning import TinyLM, first_batches, token_loader
from tests.oneshot_models import VOCAB, tiny

METHODS = lambda: [SparseGPT(None, "2:4"), GPTQ(4, group_size=32)]  # noqa: E731


def trainer(**kw):
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, **kw)


def loader():
    return token_loader(n=8, batch_size=2)  # 4 optimizer steps per epoch


def machinery(lm):
    """Per linear of the stack: (keep-mask, (lo, hi)) as forward uses them."""
    out = {}
    for name, m in lm.model.model.layers.named_modules():
        q = masking.find_transform(m, "weight", WEIGHT_QUANT_KIND)
        if q is not None:
            out[name] = (stored_keep(m).clone(), tuple(r.clone() for r in q.fn.ranges))
    return out


def test_resume_after_calibration_equals_uninterrupted(tmp_path):
    whole = TinyLM()
    trainer(max_epochs=2, callbacks=[OneShotCompression(METHODS(), calib_batches=3)]).fit(whole, loader())

    first = TinyLM()
    t = trainer(max_epochs=1, callbacks=[OneShotCompression(METHODS(), calib_batches=3)])
    t.fit(first, loader())
    t.save_checkpoint(tmp_path / "a.ckpt")
    resumed = TinyLM()
    with torch.no_grad():  # other starting weights: a calibration of them would give other masks and ranges
        for p in resumed.parameters():
            p.add_(0.5 * torch.randn_like(p))
    cb = OneShotCompression(METHODS(), calib_batches=3)
    trainer(max_epochs=2, callbacks=[cb]).fit(resumed, loader(), ckpt_path=tmp_path / "a.ckpt")

    assert cb.restored and cb.report is None
    a, b = machinery(whole), machinery(resumed)
    assert a.keys() == b.keys() and len(a) == 14  # 7 linears x 2 layers
    for name in a:
        assert torch.equal(a[name][0], b[name][0]), name
        assert all(torch.equal(x, y) for x, y in zip(a[name][1], b[name][1])), name
    for (n, p), (_, q) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6), n
    x = first_batches(1)[0]
    with torch.no_grad():
        assert torch.allclose(whole(x), resumed(x), atol=1e-5)
    # the fine-tuning really moved weights and kept the 2:4 masks
    w = resumed.model.model.layers[0].mlp.up_proj
    assert bool(((masking.effective_param(w, "weight") != 0).reshape(w.weight.shape[0], -1, 4).sum(-1) <= 2).all())


def test_resume_from_a_checkpoint_without_calibration_is_refused(tmp_path):
    t = trainer(max_steps=1)
    t.fit(TinyLM(), loader())
    t.save_checkpoint(tmp_path / "dense.ckpt")
    again = trainer(max_steps=2, callbacks=[OneShotCompression([Wanda(0.5)], calib_batches=1)])
    with pytest.raises(RuntimeError, match="holds no OneShotCompression state"):
        again.fit(TinyLM(), loader(), ckpt_path=tmp_path / "dense.ckpt")


def test_validate_from_checkpoint_restores_instead_of_calibrating(tmp_path):
    lm = TinyLM()
    t = trainer(max_epochs=1, callbacks=[OneShotCompression(METHODS(), calib_batches=3)])
    t.fit(lm, loader())
    t.save_checkpoint(tmp_path / "a.ckpt")
    cb = OneShotCompression(METHODS(), calib_batches=3)
    fresh = TinyLM()
    trainer(callbacks=[cb]).validate(fresh, token_loader(seed=9), ckpt_path=tmp_path / "a.ckpt")
    assert cb.restored and cb.report is None  # not calibrated on the validation batches
    a, b = machinery(lm), machinery(fresh)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[n][0], b[n][0]) for n in a)


@pytest.mark.parametrize("family,methods", [("llama", lambda: [SmoothQuant(0.5)]),
                                            ("gpt2", lambda: [Wanda(0.5), GPTQ(3, group_size=32)])])
def test_calibration_state_round_trip(family, methods):
    model = tiny(family)
    batches = [torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    oneshot(model, methods(), batches, owner="one", measure_error=False)
    state = calibration_state(model, "one")
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)  # plain data: Lightning's checkpoints load it as weights_only
    other = masking.strip(copy.deepcopy(model))
    x = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        ref = model(x).logits
        if family == "llama":  # the dynamic input quantizers change the output
            assert not torch.allclose(other(x).logits, ref, atol=1e-6)
        touched = restore_calibration(other, loaded, "two")
        assert torch.equal(other(x).logits, ref)
    assert set(touched) == set(state)
    for name in state:
        assert masking.transformed_params(dict(other.named_modules())[name]) == ["weight"], name
    assert calibration_state(other, "two").keys() == state.keys()
    with pytest.raises(ValueError, match="names modules this model lacks"):
        restore_calibration(tiny(family, layers=1), loaded, "three")
