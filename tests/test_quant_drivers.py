"""The pure-torch quantization drivers (core/weight_quantizer.py, core/act_quantizer.py) from a plain loop,
against the callbacks they sit behind; two WeightQuant / ActQuant instances in one Trainer."""

from __future__ import annotations

import copy
import types

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress.callbacks.act_quant import ActQuant
from lightning_compress.callbacks.weight_quant import WeightQuant
from lightning_compress.core import masking
from lightning_compress.core.act_quantizer import ActQuantizer
from lightning_compress.core.quantize import weight_quantizer
from lightning_compress.core.weight_quantizer import WeightQuantizer


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))


def _batches(n: int = 12):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 8, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(n)]


def _fake_trainer(step: int = 0):
    return types.SimpleNamespace(global_step=step)


SCHEDULES = [
    dict(bits=2, start_bits=8, period=2, start_step=1),
    dict(bits=4, start_bits=8, period=3),
    dict(bits=8),
    dict(bits=1, start_step=2),
]


@pytest.mark.parametrize("kwargs", SCHEDULES)
def test_plain_loop_bits_schedule_matches_callback(kwargs):
    model = _net()
    wq = WeightQuantizer(model, **kwargs)
    cb = WeightQuant(**kwargs)
    assert sorted(wq.targets) == ["0", "2"] and wq.levels == cb.levels
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step, (x, y) in enumerate(_batches()):
        wq.step(step)
        bits = cb.bits_at(step)
        assert wq.current_bits == bits
        for q in wq.quantizers.values():
            assert (q.enabled, q.bits) == (bits is not None, bits if bits is not None else cb.start_bits)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    assert [wq.bits_at(s) for s in range(12)] == [cb.bits_at(s) for s in range(12)]
    assert wq.state_dict() == {"step": 11, "bits": cb.bits_at(11), "levels": cb.levels, "start_step": cb.start_step}


@pytest.mark.parametrize("step", [0, 3, 7])
def test_driver_forward_equals_callback_forward(step):
    kwargs = dict(bits=2, start_bits=8, period=2, start_step=1, granularity="group", group_size=4, symmetric=False)
    a, b = _net(), _net()
    wq = WeightQuantizer(a, **kwargs)
    wq.step(step)
    cb = WeightQuant(**kwargs)
    cb.setup(_fake_trainer(step), b, "fit")
    assert cb.current_bits == wq.current_bits
    x = torch.randn(5, 8)
    assert torch.equal(a(x), b(x))
    for name in wq.targets:
        assert torch.equal(
            masking.effective_param(a.get_submodule(name), "weight"), masking.effective_param(b.get_submodule(name), "weight")
        )


def test_weight_driver_state_attach_later_and_remove():
    wq = WeightQuantizer(None, bits=4, start_bits=8, period=3)
    assert not wq.is_attached and wq.targets == {}
    wq.load_state_dict({"step": 6, "bits": 4, "levels": [8, 4], "start_step": 0})  # before attach: kept
    model = _net()
    wq.attach(model)
    assert wq.current_bits == 4 and all(q.bits == 4 for q in wq.quantizers.values())
    assert weight_quantizer(model[0]) is wq.quantizers["0"]
    with pytest.raises(ValueError, match=r"WeightQuantizer: already attached to 2 modules; call remove\(\) first"):
        wq.attach(model)
    with pytest.raises(ValueError, match="differs from this callback's levels"):
        wq.load_state_dict({"step": 6, "levels": [8, 4, 3, 2], "start_step": 0})
    wq.remove()
    assert not any(masking.is_wrapped(m) for m in model.modules())
    with pytest.raises(ValueError, match=r"WeightQuantizer: `bits`=5 is not a supported bit width"):
        WeightQuantizer(None, bits=5)


def test_weight_driver_failed_attach_leaves_no_quantizer():
    model = _net()
    masking.add_param_transform(model[2], "weight", "other", lambda m, w: w, kind="weight_quant", priority=10)
    with pytest.raises(ValueError, match="already has a 'weight_quant' transform"):
        WeightQuantizer(model, bits=8)
    assert masking.owners(model[0], "weight") == []  # all or nothing


def test_act_driver_plain_loop_static_ranges_match_callback():
    model = _net()
    aq = ActQuantizer(model, bits=8, range="static", symmetric=False, momentum=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for x, y in _batches(4):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        aq.sync_ranges()  # no process group: a no-op
    ranges = aq.ranges()
    assert set(ranges) == {"0", "2"} and all(r is not None and r[0] < r[1] for r in ranges.values())
    state = aq.state_dict()
    # the callback on a copy of the trained model, with the driver's state, quantizes alike
    twin = masking.strip(copy.deepcopy(model))
    cb = ActQuant(bits=8, range="static", symmetric=False, momentum=0.5)
    cb.load_state_dict(state)
    cb.setup(_fake_trainer(), twin, "fit")
    assert cb.ranges() == ranges
    model.eval(), twin.eval()
    x = torch.randn(6, 8) * 3
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))
    # a fresh driver loaded before attach applies the ranges when it attaches
    fresh = ActQuantizer(None, bits=8, range="static", symmetric=False)
    fresh.load_state_dict(state)
    fresh.attach(_net())
    assert fresh.ranges() == ranges
    aq.remove()
    assert not any(masking.is_wrapped(m) for m in model.modules())


def test_act_driver_dynamic_equals_callback():
    a, b = _net(), _net()
    ActQuantizer(a, bits=4, symmetric=False, modules=[r"^2$"])
    ActQuant(bits=4, symmetric=False, modules=[r"^2$"]).setup(_fake_trainer(), b, "fit")
    x = torch.randn(3, 8)
    assert torch.equal(a(x), b(x))


# ------------------------------------------------------------------------------ two instances, one Trainer
class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    xs, ys = zip(*_batches(4))
    return DataLoader(TensorDataset(torch.cat(xs), torch.cat(ys)), batch_size=4)


def _trainer(callbacks, **kw):
    return pl.Trainer(
        accelerator="cpu", devices=1, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw,
    )


def _four():
    return [
        WeightQuant(bits=8, modules=[r"net\.0"]),
        WeightQuant(bits=4, start_bits=8, period=2, modules=[r"net\.2"]),
        ActQuant(bits=8, range="static", modules=[r"net\.0"]),
        ActQuant(bits=8, range="static", modules=[r"net\.2"]),
    ]


def test_two_weight_quant_and_two_act_quant_on_disjoint_modules_coexist(tmp_path):
    cbs = _four()
    assert len({cb.state_key for cb in cbs}) == 4
    model = Tiny()
    trainer = _trainer(cbs, max_steps=3)
    trainer.fit(model, _loader())
    assert weight_quantizer(model.net[0]).bits == 8 and weight_quantizer(model.net[2]).bits == 4
    assert sorted(cbs[2].ranges()) == ["net.0"] and sorted(cbs[3].ranges()) == ["net.2"]
    trainer.save_checkpoint(tmp_path / "q.ckpt")
    saved = torch.load(tmp_path / "q.ckpt", weights_only=False)["callbacks"]
    assert {cb.state_key for cb in cbs} <= set(saved)
    # the step of the last batch's start (global_step 2 of 0..2), at 4 bits from step 2 on
    assert saved[cbs[1].state_key]["step"] == 2 and saved[cbs[1].state_key]["bits"] == 4
    # a new process builds the same callbacks: each finds its own state again
    resumed = _four()
    assert [cb.state_key for cb in resumed] == [cb.state_key for cb in cbs]
    trainer2 = _trainer(resumed, max_steps=4)
    trainer2.fit(Tiny(), _loader(), ckpt_path=tmp_path / "q.ckpt")
    assert resumed[1].current_bits == 4 and resumed[1].state_dict()["step"] == 3
    assert set(resumed[3].ranges()) == {"net.2"}


def test_two_equal_weight_quant_refused_by_lightning():
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `WeightQuant`"):
        _trainer([WeightQuant(bits=8), WeightQuant(bits=8)], max_steps=1).fit(Tiny(), _loader())
