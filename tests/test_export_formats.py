"""The export-format registry: a format added from this file, by name, through save_slim and RedundancyClean."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_compress import RedundancyClean, SparsePruning, clean
from lightning_compress.export import FORMATS, SaveJob, register_format, save_slim
from lightning_compress.export.formats import WRITERS
from tests.models import TinyMLP, cpu_trainer, mlp_loader


@pytest.fixture
def torchscript_format():
    @register_format("torchscript_test", filename="model.ts", needs_example=True)
    def write(job: SaveJob, path: Path) -> None:
        torch.jit.trace(job.runnable, job.args).save(str(path))

    yield "torchscript_test"
    WRITERS.pop("torchscript_test", None)


def test_registered_format_is_written_by_save_slim(tmp_path, torchscript_format) -> None:
    assert torchscript_format in FORMATS and "torchscript_test" in repr(FORMATS)
    model = clean(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    x = torch.randn(5, 4)
    paths = save_slim(model, tmp_path, x, formats=("safetensors", torchscript_format))
    assert set(paths) == {"safetensors", torchscript_format}
    loaded = torch.jit.load(paths[torchscript_format])
    torch.testing.assert_close(loaded(x), model(x))


@pytest.fixture
def state_format():
    @register_format("state_pt_test", filename="state.pt", needs_example=False)
    def write(job: SaveJob, path: Path) -> None:
        torch.save({k: v.clone() for k, v in job.model.state_dict().items()}, path)

    yield "state_pt_test"
    WRITERS.pop("state_pt_test", None)


def test_registered_format_through_redundancy_clean(tmp_path, state_format) -> None:
    rc = RedundancyClean(tmp_path / "slim", formats=[state_format], latency_runs=0)
    trainer = cpu_trainer(max_steps=2, callbacks=[SparsePruning(sparsity=0.5), rc])
    trainer.fit(TinyMLP(), mlp_loader())
    state = torch.load(tmp_path / "slim" / "state.pt")
    slim_state = rc.slim_model.state_dict()
    assert set(state) == set(slim_state)
    for k, v in state.items():
        torch.testing.assert_close(v, slim_state[k])
    zeros = sum(int((v == 0).sum()) for k, v in state.items() if k.endswith("weight"))
    assert zeros > 0  # the pruned zeros are in the written file


def test_format_needing_an_example_is_refused_before_writing(tmp_path, torchscript_format) -> None:
    model = clean(nn.Sequential(nn.Linear(4, 3)))
    with pytest.raises(ValueError, match="need `example_input`"):
        save_slim(model, tmp_path / "out", None, formats=("safetensors", torchscript_format))
    assert not (tmp_path / "out").exists()
