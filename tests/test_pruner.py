"""The pure-torch ``Pruner`` in a plain loop, and the extension points: a criterion and a pattern
defined and registered in this file, used by name through SparsePruning and through the Pruner."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_compress import SparsePruning
from lightning_compress.callbacks.row_pruning import RowPruning
from lightning_compress.core import masking
from lightning_compress.core.criteria import CRITERIA, Criterion, SnipMomentum, register_criterion
from lightning_compress.core.patterns import Pattern, parse_pattern, register_pattern, shape_2d
from lightning_compress.core.pruner import Pruner
from lightning_compress.core.surgery import Member, UnitGroup
from tests.models import TinyMLP, cpu_trainer, mlp_loader


# ---------------------------------------------------------------- a toy criterion, one class
@register_criterion("toy_grad_abs")
class GradAbs(Criterion):
    """Score = |dL/dW| of the last optimizer step."""

    needs_grad = True

    def signal(self, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad.abs()


# ---------------------------------------------------------------- a toy pattern, one class
@register_pattern
class WholeRows(Pattern):
    """``"rows"``: a unit is one whole output row of the 2-D weight view."""

    grammar = "'rows' (whole output rows)"

    @classmethod
    def parse(cls, text: str) -> "WholeRows | None":
        return cls() if text == "rows" else None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WholeRows)

    def __hash__(self) -> int:
        return hash("rows")

    @property
    def name(self) -> str:
        return "rows"

    def unit_elems(self, shape=None) -> int:
        return shape_2d(shape)[1]

    def unit_costs(self, score2d: torch.Tensor) -> torch.Tensor:
        return score2d.mean(dim=1)

    def mask_from_pruned(self, pruned_units, shape, score2d=None):
        out, inp = shape_2d(shape)
        return (~pruned_units).view(out, 1).expand(out, inp).reshape(shape).clone()


def loop(model: nn.Module, pruner: Pruner, steps: int, lr: float = 0.05) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    data = list(mlp_loader(n=steps * 8))
    pruner.step(0)
    for step, (x, y) in enumerate(data[:steps]):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        pruner.update_scores()
        opt.step()
        opt.zero_grad()
        pruner.step(step + 1)


def test_registries_list_the_toys():
    assert CRITERIA["toy_grad_abs"] is GradAbs and CRITERIA["magnitude"] is CRITERIA["l1"]
    assert parse_pattern("rows") == WholeRows()
    with pytest.raises(ValueError, match=r"not understood\. Use .*'N:M'.*'rows' \(whole output rows\)"):
        parse_pattern("banana")


def test_toy_criterion_by_name_through_sparse_pruning():
    pl.seed_everything(0)
    cb = SparsePruning(sparsity=0.5, method="toy_grad_abs", pattern="4x1", end_step=4)
    cpu_trainer(max_steps=6, callbacks=[cb]).fit(TinyMLP(), mlp_loader())
    assert isinstance(cb.criterion, GradAbs) and cb.method == "toy_grad_abs"
    assert all(t.score.steps > 0 for t in cb.targets)
    assert cb.sparsity_stats()["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert cb.history[0]["step"] == 1  # a gradient criterion waits for one scored step


def test_toy_criterion_through_the_plain_pruner_ranks_by_its_score():
    torch.manual_seed(0)
    model = TinyMLP()
    pruner = Pruner(model, sparsity=0.5, method=GradAbs, scope="local", start_step=3, end_step=3)
    loop(model, pruner, 3)
    for t in pruner.targets:
        s, keep = t.score.score, t.mask
        assert int((~keep).sum()) == keep.numel() // 2
        assert s[keep].min() >= s[~keep].max()  # pruned = lowest |grad| of the last step


def test_toy_pattern_through_sparse_pruning_and_pruner():
    pl.seed_everything(0)
    cb = SparsePruning(sparsity=0.5, pattern=WholeRows(), scope="local", end_step=2)
    cpu_trainer(max_steps=3, callbacks=[cb]).fit(TinyMLP(), mlp_loader())
    for t in cb.targets:
        rows = t.mask.reshape(t.mask.shape[0], -1)
        assert bool((rows.all(1) | (~rows).all(1)).all()) and int((~rows.all(1)).sum()) == rows.shape[0] // 2
    # by name through the plain pruner, global ranking over layers of different row widths
    torch.manual_seed(0)
    model = TinyMLP()
    pruner = Pruner(model, sparsity=0.5, pattern="rows", start_step=1, end_step=1)
    loop(model, pruner, 1)
    assert isinstance(pruner.pattern, WholeRows)
    assert pruner.sparsity() == pytest.approx(0.5, abs=32 / (16 * 32 + 32 * 32))  # within one row
    for mask in pruner.masks().values():
        assert bool((mask.all(1) | (~mask).all(1)).all())


def test_plain_loop_snip_momentum_4x1_state_and_remove():
    torch.manual_seed(0)
    model = TinyMLP()
    pruner = Pruner(model, sparsity=0.75, method="snip_momentum", pattern="4x1", schedule="exp", start_step=0,
                    end_step=6, frequency=2, scope="global", max_sparsity_per_layer=0.98)
    assert sorted(pruner.modules_touched()) == ["net.0", "net.2"] and pruner.sparsity() == 0.0
    loop(model, pruner, 8)
    assert [h["step"] for h in pruner.history] == [1, 2, 4, 6]
    assert pruner.sparsity() == pytest.approx(0.75, abs=1e-3)
    for name, mask in pruner.masks().items():
        blocks = mask.reshape(mask.shape[0] // 4, 4, -1)
        assert bool((blocks.all(1) | (~blocks).all(1)).all()), name
    # a second pruner restores the state onto a fresh copy of the model
    state = pruner.state_dict()
    other_model = TinyMLP()
    other_model.load_state_dict(model.state_dict())
    other = Pruner(other_model, sparsity=0.75, method="snip_momentum", pattern="4x1", end_step=6, frequency=2)
    other.load_state_dict(state)
    x = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(other_model(x), model(x))
    for a, b in zip(pruner.targets, other.targets):
        assert torch.equal(a.score.score, b.score.score)
    pruner.remove()
    assert not any(masking.is_wrapped(m) for m in model.modules())
    assert not any(b.startswith("_lc_") for m in model.modules() for b in m._buffers)


def test_criterion_object_with_its_own_setting():
    torch.manual_seed(0)
    model = TinyMLP()
    pruner = Pruner(model, sparsity=0.5, method=SnipMomentum(momentum=0.0), end_step=2)
    loop(model, pruner, 2)
    # momentum 0: the score is the last step's |W * g|, like snip
    assert pruner.method == "snip_momentum" and all(t.score.steps == 2 for t in pruner.targets)


def mlp_rows(model: nn.Module, group) -> list[UnitGroup]:
    """Hand-written unit groups: net.0's rows with net.2's columns."""
    prod, cons = model.net[0], model.net[2]
    members = [Member("net.0", prod, "out", ("weight", "bias"), 0), Member("net.2", cons, "in", ("weight",), 1)]
    return [UnitGroup(name="net.0", kind="row_mask", num_units=prod.out_features, members=members, holder=prod)]


@pytest.mark.parametrize("method", ["l1", "topk"])
def test_plain_pruner_drives_unit_groups(method):
    torch.manual_seed(0)
    model = TinyMLP()
    pruner = Pruner(model, sparsity=0.25, method=method, find_groups=mlp_rows, kind="row_mask", scope="local",
                    start_step=2, end_step=2, unit_word="row")
    loop(model, pruner, 3)
    (t,) = pruner.targets
    assert int((~t.mask).sum()) == 8 and (t.score.steps > 0) == (method == "topk")
    pruned = (~t.mask).nonzero().flatten()
    assert bool((model.net[0]._lc_row_mask_d0[pruned] == 0).all())
    pruner.remove()
    assert not any(masking.is_wrapped(m) for m in model.modules())
    assert "_lc_unit_groups" not in model.net[0].__dict__


def test_structured_pruning_rejects_non_structured_criteria_objects():
    with pytest.raises(ValueError, match="RowPruning: `method`=.* must be 'l1' or 'topk'"):
        RowPruning(method=GradAbs())


def test_pruning_callbacks_attach_on_predict_and_restore_masks_from_a_checkpoint(tmp_path):
    from torch.utils.data import DataLoader

    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    loader = DataLoader(x, batch_size=4)
    # predict without fit: all-ones masks, the dense outputs
    model = TinyMLP()
    with torch.no_grad():
        dense = model(x)
    cb = SparsePruning(sparsity=0.5, end_step=1)
    preds = torch.cat(cpu_trainer(callbacks=[cb]).predict(model, loader))
    assert cb.is_attached and sorted(cb.masks()) == ["net.0", "net.2"]
    assert all(bool(m.all()) for m in cb.masks().values())
    torch.testing.assert_close(preds, dense)
    # predict from a checkpoint: the saved masks apply
    pl.seed_everything(0)
    trained, cb = TinyMLP(), SparsePruning(sparsity=0.5, end_step=1)
    trainer = cpu_trainer(max_steps=3, callbacks=[cb])
    trainer.fit(trained, mlp_loader())
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    trained.eval()
    with torch.no_grad():
        masked = trained(x)
    cb2 = SparsePruning(sparsity=0.5, end_step=1)
    preds = torch.cat(cpu_trainer(callbacks=[cb2]).predict(TinyMLP(), loader, ckpt_path=str(tmp_path / "run.ckpt")))
    torch.testing.assert_close(preds, masked)
    assert cb2.sparsity_stats()["sparsity"] == pytest.approx(0.5, abs=1e-3)
