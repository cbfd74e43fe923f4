"""DeepSpeedCompressionStrategy: registration and CPU setup (the 2-rank runs are in the distributed tests)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, StrategyRegistry

import lightning_compress  # noqa: F401  (registers the names)
from lightning_compress import DeepSpeedCompressionStrategy


@pytest.mark.parametrize("name,stage", [("deepspeed_compression", 2), ("deepspeed_compression_stage_1", 1), ("deepspeed_compression_stage_2", 2), ("deepspeed_compression_stage_3", 3)])
def test_registered_names(name, stage):
    assert name in StrategyRegistry
    trainer = pl.Trainer(accelerator="cpu", devices=1, strategy=name, logger=False)
    assert isinstance(trainer.strategy, DeepSpeedCompressionStrategy)
    assert isinstance(trainer.strategy, DeepSpeedStrategy)
    assert trainer.strategy.config["zero_optimization"]["stage"] == stage


def test_cpu_root_device_and_backend():
    trainer = pl.Trainer(accelerator="cpu", devices=1, strategy=DeepSpeedCompressionStrategy(stage=3), logger=False)
    strategy = trainer.strategy
    assert strategy.root_device == torch.device("cpu", 0)
    assert strategy._get_process_group_backend() == "gloo"


def test_one_process_fit_on_cpu_zero3():
    from lightning_compress import SparsePruning
    from tests.models import TinyMLP, mlp_loader

    cb = SparsePruning(sparsity=0.5, end_step=2)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, strategy="deepspeed_compression_stage_3", max_steps=3, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
    )
    trainer.fit(TinyMLP(), mlp_loader())
    assert trainer.global_step == 3
    assert cb.sparsity_stats()["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_stock_strategy_still_refuses_cpu():
    """We subclass; the stock class keeps its CUDA check (so CUDA users see identical behaviour).
    (Issue 18: the name "deepspeed" now gives our subclass, so the stock class is passed as an object.)"""
    trainer = pl.Trainer(accelerator="cpu", devices=1, strategy=DeepSpeedStrategy(), logger=False, max_steps=1)
    from tests.models import TinyMLP, mlp_loader

    with pytest.raises(RuntimeError, match="only supported on CUDA"):
        trainer.fit(TinyMLP(), mlp_loader())


def test_lightning_deepspeed_names_give_our_class_with_lightnings_params():
    """Every name Lightning registers for DeepSpeedStrategy now builds DeepSpeedCompressionStrategy with
    Lightning's own init params (so on CUDA it is Lightning's strategy, on CPU it runs)."""
    from lightning.fabric.strategies.registry import _StrategyRegistry

    stock = _StrategyRegistry()
    DeepSpeedStrategy.register_strategies(stock)
    assert {"deepspeed", "deepspeed_stage_3", "deepspeed_stage_2_offload"} <= set(stock)
    for name, data in stock.items():
        assert StrategyRegistry[name]["init_params"] == data["init_params"], name
        ours, theirs = StrategyRegistry.get(name), DeepSpeedStrategy(**data["init_params"])
        assert type(ours) is DeepSpeedCompressionStrategy, name
        assert ours.config == theirs.config, name  # same DeepSpeed config as Lightning's for that name
    trainer = pl.Trainer(accelerator="cpu", devices=1, strategy="deepspeed", logger=False)
    assert type(trainer.strategy) is DeepSpeedCompressionStrategy
    assert trainer.strategy.config["zero_optimization"]["stage"] == 2


def test_non_cpu_accelerator_takes_lightnings_path():
    """Only the CPU accelerator gets the CPU code path; any other one keeps Lightning's checks."""
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    strategy = DeepSpeedCompressionStrategy()
    strategy.accelerator = CUDAAccelerator()
    assert strategy._stock_path
    strategy.accelerator = CPUAccelerator()
    assert not strategy._stock_path


COMPRESSION = {
    "sparse_pruning": {
        "shared_parameters": {"enabled": True, "schedule_offset": 1, "method": "l1"},
        "different_groups": {"sp1": {"params": {"dense_ratio": 0.25}, "modules": [r"net\.0"]}},
    }
}


def test_config_with_compression_training_adds_callbacks():
    """An existing DeepSpeed user changes nothing but the strategy."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_compress import SparsePruning
    from tests.models import TinyMLP, mlp_loader

    config = {"zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True, "compression_training": COMPRESSION}
    strategy = DeepSpeedCompressionStrategy(config=config)
    assert "compression_training" in config, "the user's dict is left whole"
    ckpt = ModelCheckpoint(save_top_k=0)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, strategy=strategy, max_steps=3, logger=False, callbacks=[ckpt],
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(TinyMLP(), mlp_loader())
    added = [c for c in trainer.callbacks if isinstance(c, SparsePruning)]
    assert len(added) == 1
    assert trainer.callbacks.index(added[0]) < trainer.callbacks.index(ckpt)
    (cb,) = added
    assert [t.name for t in cb.targets] == ["net.0"]
    assert cb.sparsity_stats()["sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert [h["step"] for h in cb.history] == [1]


def test_bad_compression_section_fails_at_construction():
    bad = {"sparse_pruning": {"shared_parameters": {"enabled": True, "methd": "l1"}, "different_groups": {}}}
    with pytest.raises(ValueError, match="methd"):
        DeepSpeedCompressionStrategy(config={"zero_optimization": {"stage": 2}, "compression_training": bad})
