"""Every public callback's docstring example runs as written (tiny stand-ins, CPU; tests/doc_examples.py),
and the slim result it loads runs without the model's code."""

from __future__ import annotations

import pytest
import torch

import lightning_compress
from tests.doc_examples import docstring_example, stand_ins

#: which stand-in model each callback's example needs
KIND = {
    "SparsePruning": "mlp", "SnipMomentumPruning": "mlp", "RowPruning": "mlp", "WeightQuant": "mlp",
    "ActQuant": "mlp", "ChannelPruning": "cnn", "RedundancyClean": "cnn", "HeadPruning": "bert",
    "LayerReductionKD": "bert", "OneShotCompression": "bert",
}


def test_every_callback_has_an_example_that_loads_the_slim_result() -> None:
    from lightning.pytorch import Callback

    public = {n for n in lightning_compress.__all__ if isinstance(getattr(lightning_compress, n), type)
              and issubclass(getattr(lightning_compress, n), Callback)}
    assert public == set(KIND)
    for name in public:
        code = docstring_example(getattr(lightning_compress, name))
        assert 'torch.export.load("slim/model.pt2").module()' in code and "slim(x)" in code, name


@pytest.mark.parametrize("name", sorted(KIND))
def test_docstring_example_runs(name, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = stand_ins(KIND[name])
    model = namespace["model"]
    exec(compile(docstring_example(getattr(lightning_compress, name)), f"{name}.__doc__", "exec"), namespace)
    assert model.trainer.global_step == 3
    y = namespace["y"]
    assert type(namespace["slim"]).__name__ == "GraphModule"
    with torch.no_grad():
        expected = namespace["slim"](namespace["x"])
    assert y.shape[0] == namespace["x"].shape[0] and torch.isfinite(y).all() and torch.equal(y, expected)
    assert (tmp_path / "slim" / "report.json").is_file()


def test_example_cli_fit_help_shows_every_callbacks_example_and_how_to_load(capsys) -> None:
    """``examples/cifar/main.py fit --help`` ends with the docstring examples (the ones run above)."""
    from examples._help import _own_lines
    from examples.cifar.main import cli_main

    with pytest.raises(SystemExit):
        cli_main(["fit", "--help"])
    out = capsys.readouterr().out
    for name in KIND:
        for line in _own_lines(docstring_example(getattr(lightning_compress, name))):
            assert f"      {line}\n" in out, (name, line)
    assert 'slim = torch.export.load("slim/model.pt2").module()' in out and "It cannot .eval()" in out
