"""WeightQuant / ActQuant under a plain CPU Trainer: QAT, bits schedule, masks, state, bad input."""

from __future__ import annotations

import types

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress.callbacks.act_quant import ActQuant
from lightning_compress.callbacks.weight_quant import WeightQuant
from lightning_compress.core import masking
from lightning_compress.core.act_quant import static_range
from lightning_compress.core.quantize import fake_quant_dynamic, pack_state, unpack_state, weight_quantizer


class Tiny(pl.LightningModule):
    def __init__(self, with_embedding: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 8) if with_embedding else None
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
        self.seen: list[tuple[int, list]] = []  # (global_step, [per target: (enabled, bits)])
        self.probe: WeightQuant | None = None

    def forward(self, x):
        if self.emb is not None:
            x = self.emb(x).mean(1)
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.probe is not None:
            qs = list(self.probe._quantizers.values())
            self.seen.append((self.trainer.global_step, [(q.enabled, q.bits) for q in qs]))
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n=32, emb=False):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 10, (n, 3), generator=g) if emb else torch.randn(n, 8, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=4)


def _trainer(callbacks, **kw):
    kw.setdefault("max_steps", 4)
    return pl.Trainer(
        accelerator="cpu", devices=1, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw,
    )


def _fake_trainer():
    return types.SimpleNamespace(global_step=0)


def test_bits_schedule_steps_at_stated_optimizer_steps():
    model = Tiny()
    cb = WeightQuant(bits=2, start_bits=8, period=2, start_step=1)
    model.probe = cb
    assert cb.levels == [8, 4, 3, 2]
    _trainer([cb], max_steps=8, accumulate_grad_batches=2).fit(model, _loader(64))
    # two micro-batches per optimizer step: global_step 0,0,1,1,2,2,...
    by_step = {}
    for step, states in model.seen:
        assert len({s for s in states}) == 1  # every target alike
        by_step.setdefault(step, set()).add(states[0])
    expected = {0: (False, 8), 1: (True, 8), 2: (True, 8), 3: (True, 4), 4: (True, 4), 5: (True, 3), 6: (True, 3), 7: (True, 2)}
    assert {k: v.pop() for k, v in by_step.items()} == expected
    assert [cb.bits_at(s) for s in range(10)] == [None, 8, 8, 4, 4, 3, 3, 2, 2, 2]
    assert cb.state_dict()["step"] == 7 and cb.current_bits == 2


@pytest.mark.parametrize("gran,group", [("tensor", None), ("channel", None), ("group", 4)])
def test_qat_trains_and_forward_uses_grid(gran, group):
    model = Tiny()
    before = model.net[0].weight.detach().clone()
    cb = WeightQuant(bits=4, granularity=gran, group_size=group)
    _trainer([cb]).fit(model, _loader())
    # default targets: every Linear except the last
    assert sorted(cb.targets) == ["net.0", "net.2"]
    assert weight_quantizer(model.net[4]) is None
    assert not torch.equal(model.net[0].weight, before)  # STE let the weights train
    w = masking.effective_param(model.net[0], "weight")
    rows = w.reshape(1, -1) if gran == "tensor" else (w if gran == "channel" else w.reshape(-1, 4))
    for r in rows:
        assert r.unique().numel() <= 16
    # the packed 4-bit storage gives back exactly what forward used
    assert torch.equal(unpack_state(pack_state(model.net[0])), w.detach())


@pytest.mark.parametrize("bits,values", [(2, 3), (1, 2)])
def test_ternary_binary_qat(bits, values):
    model = Tiny()
    cb = WeightQuant(bits=bits)
    _trainer([cb], max_steps=2).fit(model, _loader())
    w = masking.effective_param(model.net[2], "weight")
    for r in w:
        assert r.unique().numel() <= values


def test_mask_then_quantize_on_same_weight():
    model = Tiny()
    lin = model.net[0]
    mask = torch.rand(lin.weight.shape, generator=torch.Generator().manual_seed(3)) > 0.5
    lin.register_buffer("prune_mask", mask, persistent=False)
    masking.add_param_transform(lin, "weight", "pruner", masking.mask_transform("prune_mask"), kind="mask", priority=masking.MASK_PRIORITY)
    cb = WeightQuant(bits=8, symmetric=False)
    _trainer([cb]).fit(model, _loader())
    assert [k for _, k in masking.owners(lin, "weight")] == ["mask", "weight_quant"]
    w = masking.effective_param(lin, "weight")
    assert torch.equal(w[~mask], torch.zeros_like(w[~mask]))  # zero stays exactly zero (zero-point)
    assert torch.equal(unpack_state(pack_state(lin)), w.detach())
    # state_dict keys of the user's model do not change
    assert set(model.state_dict()) == set(Tiny().state_dict())


def test_two_weight_quantizers_on_one_weight_raise():
    model = Tiny()
    a, b = WeightQuant(bits=8), WeightQuant(bits=4)
    a.setup(_fake_trainer(), model, "fit")
    with pytest.raises(ValueError, match="already has a 'weight_quant' transform"):
        b.setup(_fake_trainer(), model, "fit")


def test_embedding_quantized_per_row_when_named():
    model = Tiny(with_embedding=True)
    cb = WeightQuant(bits=4, granularity="tensor", modules=["emb", r"net\.0"])
    _trainer([cb], max_steps=2).fit(model, _loader(emb=True))
    q = weight_quantizer(model.emb)
    assert q is not None and q.spec.granularity == "channel"
    state = pack_state(model.emb)
    assert state["scale"].shape == (10,)


def test_state_dict_roundtrip_before_and_after_setup():
    cb = WeightQuant(bits=4, start_bits=8, period=3)
    model = Tiny()
    cb.setup(_fake_trainer(), model, "fit")
    cb._apply_step(5)
    state = cb.state_dict()
    assert state["bits"] == 4
    # loaded before setup: stashed, applied in setup
    cb2 = WeightQuant(bits=4, start_bits=8, period=3)
    cb2.load_state_dict(state)
    cb2.setup(_fake_trainer(), Tiny(), "fit")
    assert cb2.current_bits == 4 and all(q.bits == 4 for q in cb2._quantizers.values())
    # loaded after setup: applied at once
    cb3 = WeightQuant(bits=4, start_bits=8, period=3)
    cb3.setup(_fake_trainer(), Tiny(), "fit")
    assert cb3.current_bits == 8
    cb3.load_state_dict(state)
    assert all(q.bits == 4 for q in cb3._quantizers.values())
    with pytest.raises(ValueError, match="differs from this callback's levels"):
        WeightQuant(bits=2, start_bits=8, period=3).load_state_dict(state)


def test_remove_restores_full_precision():
    model = Tiny()
    cb = WeightQuant(bits=2)
    cb.setup(_fake_trainer(), model, "fit")
    assert masking.is_wrapped(model.net[0])
    cb.remove()
    assert not masking.is_wrapped(model.net[0])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(bits=5), r"WeightQuant: `bits`=5 is not a supported bit width; use one of \[1, 2, 3, 4, 8\]"),
        (dict(bits=8, start_bits=6), r"`start_bits`=6 is not a supported bit width"),
        (dict(bits=8, start_bits=4), r"`start_bits`=4 must be >= `bits`=8"),
        (dict(bits=4, start_bits=8), r"`period`=None must be a positive number of optimizer steps"),
        (dict(bits=4, start_bits=8, period=0), r"`period`=0 must be >= 1"),
        (dict(granularity="row"), r"`granularity`='row' must be one of"),
        (dict(granularity="group"), r"granularity='group' needs a positive integer `group_size`"),
        (dict(granularity="channel", group_size=4), r"`group_size`=4 is only used with granularity='group'"),
        (dict(start_step=-1), r"`start_step`=-1 must be >= 0"),
    ],
)
def test_weight_quant_bad_init(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WeightQuant(**kwargs)


def test_weight_quant_bad_setup():
    with pytest.raises(ValueError, match=r"`group_size`=5 does not divide the input dimension 8 of module 'net.0'"):
        WeightQuant(granularity="group", group_size=5).setup(_fake_trainer(), Tiny(), "fit")
    with pytest.raises(ValueError, match=r"`modules` regex 'nope' matches no"):
        WeightQuant(modules=["nope"]).setup(_fake_trainer(), Tiny(), "fit")

    class NoLayers(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(3))

    with pytest.raises(ValueError, match="no Linear, Conv2d module of NoLayers is left to compress"):
        WeightQuant().setup(_fake_trainer(), NoLayers(), "fit")


# ------------------------------------------------------------------------------------ ActQuant
def test_act_quant_dynamic_per_token():
    model = Tiny()
    cb = ActQuant(bits=8, range="dynamic")
    cb.setup(_fake_trainer(), model, "fit")
    assert sorted(cb.targets) == ["net.0", "net.2"]
    x = torch.randn(2, 5, 8)
    lin = model.net[0]
    expected = nn.functional.linear(fake_quant_dynamic(x, 8, True, (-1,)), lin.weight, lin.bias)
    assert torch.equal(lin(x), expected)


def test_act_quant_dynamic_per_image_conv():
    conv_model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    cb = ActQuant(bits=8, modules=[r"^0$"])
    cb.setup(_fake_trainer(), conv_model, "fit")
    x = torch.randn(2, 3, 5, 5)
    x[0] *= 50
    conv = conv_model[0]
    out = conv(x)
    expected = nn.functional.conv2d(fake_quant_dynamic(x[1:], 8, True, (1, 2, 3)), conv.weight, conv.bias)
    assert torch.allclose(out[1:], expected, atol=1e-6)
    per_batch = nn.functional.conv2d(fake_quant_dynamic(x, 8, True, (0, 1, 2, 3)), conv.weight, conv.bias)
    assert not torch.allclose(out[1:], per_batch[1:], atol=1e-3)  # the loud image did not set image 1's scale


def test_act_quant_static_learns_then_freezes_and_keeps_state():
    model = Tiny()
    wq, aq_cb = WeightQuant(bits=8), ActQuant(bits=8, range="static", symmetric=False, momentum=0.5)
    _trainer([wq, aq_cb]).fit(model, _loader())
    ranges = aq_cb.ranges()
    assert set(ranges) == {"net.0", "net.2"}
    lo, hi = ranges["net.0"]
    assert lo < 0 < hi
    # frozen in eval
    model.eval()
    with torch.no_grad():
        model(torch.randn(4, 8) * 100)
    assert aq_cb.ranges()["net.0"] == (lo, hi)
    # model state_dict keys unchanged (buffers are non-persistent), range kept in the callback state
    assert not any("_lc_act" in k for k in model.state_dict())
    state = aq_cb.state_dict()
    fresh = Tiny()
    cb2 = ActQuant(bits=8, range="static", symmetric=False)
    cb2.load_state_dict(state)
    cb2.setup(_fake_trainer(), fresh, "fit")
    assert cb2.ranges()["net.0"] == pytest.approx((lo, hi))
    assert static_range(fresh.net[2]) == pytest.approx(ranges["net.2"])
    with pytest.raises(ValueError, match="does not target; resume with the same `modules`"):
        cb3 = ActQuant(range="static", modules=[r"net\.0"])
        cb3.setup(_fake_trainer(), Tiny(), "fit")
        cb3.load_state_dict(state)


def test_act_quant_static_ema():
    model = Tiny()
    cb = ActQuant(range="static", modules=[r"net\.0"], momentum=0.5)
    cb.setup(_fake_trainer(), model, "fit")
    model.train()
    lin = model.net[0]
    lin(torch.full((2, 8), 2.0).index_fill(1, torch.tensor([0]), -2.0))
    assert static_range(lin) == (-2.0, 2.0)
    lin(torch.full((2, 8), 4.0))
    assert static_range(lin) == (-0.5 * 2 + 0.5 * 4.0, 3.0)


def test_weight_and_act_quant_bf16_mixed():
    model = Tiny()
    _trainer([WeightQuant(bits=4), ActQuant(bits=8)], precision="bf16-mixed", max_steps=2).fit(model, _loader())
    assert model.net[0].weight.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(bits=3), r"ActQuant: `bits`=3 is not a supported bit width; use one of \[4, 8\]"),
        (dict(range="minmax"), r"`range`='minmax' must be one of \['dynamic', 'static'\]"),
        (dict(momentum=1.0), r"`momentum`=1.0 must be in \[0, 1\)"),
    ],
)
def test_act_quant_bad_init(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ActQuant(**kwargs)


def test_resume_restores_schedule_and_ranges(tmp_path):
    """Checkpoint mid-schedule, resume in a new Trainer: the bits schedule continues at the stored
    optimizer step (same bits per step as an uninterrupted run) and the static ranges are restored
    before training goes on."""

    class RangeProbe(pl.Callback):
        def __init__(self, aq):
            self.aq, self.at_start = aq, None

        def on_train_start(self, trainer, pl_module):
            self.at_start = self.aq.ranges()

    def callbacks(model):
        wq, aq = WeightQuant(bits=2, start_bits=8, period=2), ActQuant(range="static", symmetric=False)
        model.probe = wq
        return [wq, aq, RangeProbe(aq)]

    straight = Tiny()
    _trainer(callbacks(straight), max_steps=8).fit(straight, _loader(16))  # 4 batches per epoch

    class StopAt4(pl.Callback):  # an interruption mid-fit (max_steps=4 would be a schedule that cannot finish)
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step >= 4:
                trainer.should_stop = True

    first = Tiny()
    cbs1 = callbacks(first)
    t1 = _trainer([*cbs1, StopAt4()], max_steps=8)
    t1.fit(first, _loader(16))
    t1.save_checkpoint(tmp_path / "mid.ckpt")
    saved_ranges = cbs1[1].ranges()
    resumed = Tiny()
    cbs = callbacks(resumed)
    _trainer(cbs, max_steps=8).fit(resumed, _loader(16), ckpt_path=tmp_path / "mid.ckpt")
    assert cbs[2].at_start == saved_ranges
    resumed_bits = {step: states[0] for step, states in resumed.seen}
    straight_bits = {step: states[0] for step, states in straight.seen}
    assert sorted(resumed_bits) == [4, 5, 6, 7]
    assert resumed_bits == {k: straight_bits[k] for k in resumed_bits} == {4: (True, 3), 5: (True, 3), 6: (True, 2), 7: (True, 2)}
