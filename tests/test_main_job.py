"""The main job end to end on a tiny scale: dense weights in train_dense.py's format (a width-4 ResNet-20
made here, so the test needs no trained weights), the real CIFAR-10 images of tests/data, both recipes
through the Trainer, the report, the picture and the progress lines; and its clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from examples.cifar.model import ResNet
from examples.cifar.tensor_data import CifarTensors, class_subset, load_cifar
from examples.cifar.train_dense import load_dense

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / "tests" / "data" / "cifar10"


def _tiny_weights(path: Path) -> Path:
    torch.manual_seed(0)
    net = ResNet(20, 10, 4)
    meta = {"arch": "resnet20", "depth": 20, "width": 4, "num_classes": 10, "epochs": 0, "test_acc": 0.1,
            "train_images": 0, "train_minutes": 0.0, "command": "tests/test_main_job.py"}
    torch.save({"state_dict": net.state_dict(), "meta": meta}, path)
    return path


def test_tensor_data_loads_a_class_balanced_subset_and_serves_whole_batches() -> None:
    images, labels = load_cifar(CIFAR, "train", per_class=3)
    assert images.dtype == torch.uint8 and images.shape == (30, 3, 32, 32)
    assert torch.bincount(labels).tolist() == [3] * 10
    assert class_subset(torch.tensor([0, 1, 0, 1, 0]), 2).tolist() == [0, 1, 2, 3]
    dm = CifarTensors((images, labels), (images, labels), batch_size=8, seed=0)
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and all(x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 for x, _ in batches)
    again = list(CifarTensors((images, labels), None, batch_size=8, seed=0).train_dataloader())
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))  # same seed, same augmented batches
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape[0] == 30 and torch.equal(y, labels)


def test_main_job_end_to_end_tiny(tmp_path: Path, capsys) -> None:
    from examples.main_job import main

    weights = _tiny_weights(tmp_path / "dense.pt")
    result = main([
        "--source", str(CIFAR), "--weights", str(weights), "--out-dir", str(tmp_path / "out"),
        "--train-per-class", "2", "--test-per-class", "2", "--batch-size", "10", "--compress-epochs", "2",
        "--latency-batch", "4", "--latency-runs", "1", "--formats", "safetensors",
    ])
    out = capsys.readouterr().out
    dense, channel, snip = result["rows"]
    assert [r["recipe"] for r in result["rows"]] == ["dense", "channel", "snip_w8a8"]
    assert dense["params"] == sum(p.numel() for p in load_dense(weights)[0].parameters())  # (BatchNorm biases of an
    assert dense["nonzero_params"] <= dense["params"]  # untrained net are 0: not every dense parameter is non-zero)
    # channel 50% + RedundancyClean: really fewer parameters and a smaller file
    # (the default --channel-layers inner: half of every block's inner channels go -- the first conv's outputs with
    # its BatchNorm, the second conv's inputs -- and nothing else)
    net = load_dense(weights)[0]
    blocks = [b for stage in (net.layer1, net.layer2, net.layer3) for b in stage]
    removed = sum((b.conv1.weight.numel() + b.conv2.weight.numel() + b.bn1.weight.numel() + b.bn1.bias.numel()) // 2
                  for b in blocks)
    assert channel["params"] == channel["nonzero_params"] == dense["params"] - removed
    assert channel["size_bytes"] < 0.6 * dense["size_bytes"]
    # snip 4x1 50% + W8A8: the dense shapes, about half the prunable weights zero, int8 storage
    assert snip["params"] == dense["params"] and snip["nonzero_params"] < 0.6 * dense["params"]
    assert snip["weight_bits"] == 8 and snip["size_bytes"] < 0.7 * dense["size_bytes"]  # (int8 + scales; tiny layers)
    for r in (channel, snip):
        assert r["steps"] == 4 and r["check"]["same_prediction"] >= 0.99 and 0.0 <= r["test_acc"] <= 1.0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["model"] for r in report["rows"]] == [r["model"] for r in result["rows"]]
    assert set(report["layers"]) == {"channel 50%", "snip_momentum 4x1 50% + W8A8"}
    assert (tmp_path / "out" / "report.png").read_bytes()[:4] == b"\x89PNG"
    # stdout is not a terminal here: one line per phase and per epoch, with the compression state
    for expected in ("[phase 1/5] data: decoding CIFAR-10", "[phase 2/5] dense:", "[phase 5/5] latency:",
                     "[channel 50%] fit: up to 2 epoch(s), 4 optimizer steps; compression: ChannelPruning -> sparsity 0.50",
                     "[channel 50%] epoch 2/2 done  step 4/4", "[snip_momentum 4x1 50% + W8A8] epoch 1/2 done  step 2/4",
                     "W8, A8 static", "picture written to", "report written to", "speed-up"):
        assert expected in out, expected


def test_main_job_errors_say_what_to_do(tmp_path: Path, capsys) -> None:
    from examples.main_job import main

    with pytest.raises(FileNotFoundError, match=r"main_job: --weights '.*nowhere\.pt' does not exist.*train_dense\.py"):
        main(["--weights", str(tmp_path / "nowhere.pt")])
    weights = _tiny_weights(tmp_path / "dense.pt")
    with pytest.raises(FileNotFoundError, match=r"main_job: --source '.*empty' does not exist.*\.\./shared/data/cifar10.*--source DIR"):
        main(["--weights", str(weights), "--source", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        main(["--dense-epochs", "4"])
    assert "--dense-epochs: the main job no longer trains the dense model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--channel-prune-end", "-0.1"])
    assert "--channel-prune-end -0.1: must be a fraction of the fine-tuning steps in [0, 1]" in capsys.readouterr().err


def test_train_dense_init_errors_say_what_to_do(tmp_path: Path, capsys) -> None:
    from examples.cifar.train_dense import main

    with pytest.raises(SystemExit):
        main(["--init", str(tmp_path / "nowhere.pt")])
    assert "--init '" in (err := capsys.readouterr().err) and "no such file (a .pt written by this script)" in err
    weights = _tiny_weights(tmp_path / "dense.pt")  # width 4
    with pytest.raises(SystemExit):
        main(["--init", str(weights), "--width", "16"])
    err = capsys.readouterr().err
    assert "holds a depth 20 / width 4 ResNet, but --depth 20 / --width 16 were asked: pass the same architecture" in err
