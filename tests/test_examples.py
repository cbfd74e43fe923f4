"""Examples: data loading from the shipped real subsets (tests/data), clear errors without data, and every
YAML config under examples/*/configs parsed and run for a few steps on tiny models (CPU)."""

from __future__ import annotations

import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from examples.bert.data import GlueDataModule, find_task_dir, read_glue_tsv
from examples.bert.model import GlueBert, packaged_model_dir
from examples.cifar.data import CifarDataModule, class_balanced_indices, has_image_folders
from examples.cifar.model import CifarResNet, resnet20, resnet32, resnet56

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
CIFAR = DATA / "cifar10"
GLUE = DATA / "glue"
CONFIGS = sorted((ROOT / "examples").glob("*/configs/*.yaml"))

# A small BERT of the MiniLM layout (6 layers, 12 heads) so layer/head recipes keep their meaning.
TINY_BERT = {"hidden_size": 48, "num_attention_heads": 12, "intermediate_size": 96, "num_hidden_layers": 6}


# ---------------------------------------------------------------------------------------------- CIFAR
def test_shipped_cifar_subset_is_real_and_small() -> None:
    jpgs = list(CIFAR.glob("*/*/*.jpg"))
    assert len(jpgs) == 400
    assert sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file()) < 2_000_000


def test_cifar_image_folder_layout() -> None:
    dm = CifarDataModule(str(CIFAR), batch_size=16, num_workers=0, download=False)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 200 and len(dm.test_set) == 200
    assert dm.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (16,)
    assert abs(float(x.mean())) < 1.0  # normalised


def test_cifar_subset_is_class_balanced() -> None:
    dm = CifarDataModule(str(CIFAR), batch_size=8, num_workers=0, subset=3, download=False)
    dm.setup("fit")
    assert len(dm.train_set) == 30 and len(dm.test_set) == 30
    labels = [dm.test_set.dataset.targets[i] for i in dm.test_set.indices]
    assert sorted(labels) == sorted(list(range(10)) * 3)
    assert class_balanced_indices([0, 0, 1, 0, 1, 1], 2) == [0, 1, 2, 4]


def _zip_split(src: Path, dst: Path, split: str, per_class: int) -> None:
    with zipfile.ZipFile(dst / f"{split}.zip", "w") as zf:
        zf.writestr(f"{split}/", "")
        for class_dir in sorted((src / split).iterdir()):
            for img in sorted(class_dir.iterdir())[:per_class]:
                zf.write(img, f"{split}/{class_dir.name}/{img.name}")


def test_cifar_zips_are_extracted_once(tmp_path: Path) -> None:
    for split in ("train", "test"):
        _zip_split(CIFAR, tmp_path, split, per_class=2)
    dm = CifarDataModule(str(tmp_path), batch_size=4, num_workers=0, download=False)
    dm.prepare_data()
    assert has_image_folders(tmp_path)
    marker = tmp_path / "train" / "cat" / "marker.txt"
    marker.write_text("x")  # a second prepare_data must not re-extract over existing folders
    dm.prepare_data()
    dm.setup("fit")
    assert marker.exists() and len(dm.train_set) == 20 and len(dm.test_set) == 20
    assert not list(tmp_path.glob(".extract-*"))


def test_cifar_missing_data_dir_says_how_to_get_data(tmp_path: Path) -> None:
    dm = CifarDataModule(str(tmp_path / "nothing_here"), num_workers=0, download=False)
    with pytest.raises(FileNotFoundError, match=r"No CIFAR-10 data in data_dir=.*nothing_here.*download=False.*"
                       r"cp \.\./shared/data/cifar10/train\.zip"):
        dm.prepare_data()


def test_cifar_offline_download_failure_says_how_to_get_data(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets

    def offline(*args, **kwargs):  # noqa: ANN002,ANN003
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    dm = CifarDataModule(str(tmp_path / "empty"), num_workers=0, download=True)
    with pytest.raises(FileNotFoundError, match=r"downloading it failed \(URLError.*looks offline.*unzip them there"):
        dm.prepare_data()


def test_cifar_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"subset=0"):
        CifarDataModule(subset=0)
    with pytest.raises(ValueError, match=r"batch_size=0"):
        CifarDataModule(batch_size=0)


def test_resnet_depths_and_errors() -> None:
    counts = [sum(p.numel() for p in f().parameters()) for f in (resnet20, resnet32, resnet56)]
    assert counts[0] < counts[1] < counts[2]
    assert 0.26e6 < counts[0] < 0.29e6  # ResNet-20 with 1x1-conv shortcuts
    assert resnet20(width=4)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"depth=21: a CIFAR ResNet has depth 6n\+2"):
        from examples.cifar.model import ResNet

        ResNet(depth=21)
    assert CifarResNet(width=4).model.fc.out_features == 10


# ---------------------------------------------------------------------------------------------- GLUE
def test_read_sst2_tsv() -> None:
    rows = read_glue_tsv(GLUE / "SST-2" / "train.tsv", "sst2")
    assert len(rows) == 160
    assert all(b is None and label in (0, 1) for _, b, label in rows)
    assert {label for *_, label in rows} == {0, 1}


def test_read_mrpc_tsv_with_byte_order_mark() -> None:
    raw = (GLUE / "MRPC" / "dev.tsv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfQuality")  # the shipped file keeps GLUE's BOM
    rows = read_glue_tsv(GLUE / "MRPC" / "dev.tsv", "mrpc")
    assert len(rows) == 40
    assert all(a and b and label in (0, 1) for a, b, label in rows)


def test_glue_bad_tsv_errors(tmp_path: Path) -> None:
    bad = tmp_path / "train.tsv"
    bad.write_text("text\tlabel\nhello\t1\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['sentence'\] needed for task 'sst2'"):
        read_glue_tsv(bad, "sst2")
    bad.write_text("sentence\tlabel\nhello\tpositive\n")
    with pytest.raises(ValueError, match=r"train.tsv:2: label 'positive' is not an integer"):
        read_glue_tsv(bad, "sst2")


def test_glue_data_dir_may_be_task_folder_or_glue_root() -> None:
    assert find_task_dir("mrpc", str(GLUE)) == GLUE / "MRPC"
    assert find_task_dir("sst2", str(GLUE / "SST-2")) == GLUE / "SST-2"
    assert find_task_dir("sst2", str(GLUE / "CoLA")) is None
    dm = GlueDataModule("sst2", str(GLUE / "MRPC"))  # the wrong task's folder: its header says so
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['sentence', 'label'\] needed for task 'sst2'"):
        dm.setup("fit")


def test_glue_datamodule_pairs_batch() -> None:
    dm = GlueDataModule("mrpc", str(GLUE), max_length=32, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 32
    assert int(batch["token_type_ids"].max()) == 1  # sentence pairs


def test_glue_missing_data_offline_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dm = GlueDataModule("sst2", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"does not exist and HF_HUB_OFFLINE.*cp -r \.\./shared/data/glue/SST-2"):
        dm.prepare_data()
    dm = GlueDataModule("mrpc", None)
    with pytest.raises(FileNotFoundError, match=r"data_dir is not set and HF_HUB_OFFLINE.*glue/MRPC"):
        dm.prepare_data()


def test_default_model_is_the_packaged_minilm(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = packaged_model_dir()
    assert folder is not None and (folder / "model.safetensors").is_file()
    with pytest.raises(ValueError, match=r"pretrained checkpoint cannot fill; set pretrained: false"):
        GlueBert(config_overrides={"hidden_size": 48})
    m = GlueBert(pretrained=False, config_overrides=TINY_BERT)
    assert m.model.config.hidden_size == 48 and m.model.training


# ---------------------------------------------------------------------------------------------- configs
def _cli(kind: str):  # noqa: ANN202
    if kind == "cifar":
        from examples.cifar.main import cli_main
    else:
        from examples.bert.main import cli_main
    return cli_main


def tiny_config(path: Path, out_dir: Path, steps: int = 3) -> dict:
    """The config with data on tests/data, a tiny model and a few steps; the recipes' step arguments are
    kept as shipped (fractions of the fit), so the run checks that each reaches its target at any budget."""
    cfg = yaml.safe_load(path.read_text())
    kind = path.parent.parent.name
    trainer = cfg.setdefault("trainer", {})
    trainer.update(
        accelerator="cpu", devices=1, max_steps=steps, max_epochs=1, limit_val_batches=1, limit_test_batches=1,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(out_dir), log_every_n_steps=1,
    )
    trainer.pop("val_check_interval", None)
    for cb in trainer.get("callbacks") or []:
        args = cb.setdefault("init_args", {})
        if args.get("group_size"):
            args["group_size"] = 16  # divides the tiny model's widths (48, 96)
        if cb["class_path"].endswith("RedundancyClean"):
            args.update(latency_runs=1, formats=["safetensors"])  # torch.export is tested with the callback
        for key in ("output_dir", "dirpath", "save_dir"):
            if key in args:
                args[key] = str(out_dir / "slim")
    if kind == "cifar":
        cfg["model"] = {**cfg.get("model", {}), "width": 8}
        cfg["data"] = {**cfg.get("data", {}), "data_dir": str(CIFAR), "batch_size": 8, "num_workers": 0,
                       "subset": 4, "download": False}
        cfg["run_test"] = False
    else:
        cfg["model"] = {**cfg.get("model", {}), "pretrained": False, "config_overrides": TINY_BERT}
        cfg["data"] = {**cfg.get("data", {}), "data_dir": str(GLUE), "batch_size": 4, "max_length": 24,
                       "subset": 16, "eval_subset": 4}
    return cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_config_prints(path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["main.py"])
    with pytest.raises(SystemExit) as exit_info:
        _cli(path.parent.parent.name)(["fit", "--config", str(path), "--print_config"], run=True)
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"] and printed["data"] and "trainer" in printed
    shipped = yaml.safe_load(path.read_text())["trainer"].get("callbacks") or []
    assert [c["class_path"] for c in printed["trainer"].get("callbacks") or []] == [c["class_path"] for c in shipped]


def assert_target_reached(cb) -> None:  # noqa: ANN001
    """The recipe's target holds after the fit: every prune event ran and the sparsity is the target
    (within one unit of the tiny model), the final bit width is in use, activations are quantized."""
    from lightning_compress.callbacks._pruning import BasePruning

    name = type(cb).__name__
    if isinstance(cb, BasePruning):
        for group in cb.groups:
            assert group.schedule is not None and group.events_done == group.schedule.num_events, (name, group.name)
        target = sum(g.sparsity for g in cb.groups) / len(cb.groups)
        tolerance = 0.02
        if cb.pruner.find_groups is not None:  # rows / heads / channels: the tiny model's units are coarse
            tolerance = max(0.5 / min(t.unit_group.num_units for t in cb.targets), 0.02)
        assert abs(cb.sparsity_stats()["sparsity"] - target) <= tolerance, (name, cb.sparsity_stats(), target)
    elif name == "WeightQuant":
        assert cb.current_bits == cb.bits and all(q.enabled and q.bits == cb.bits for q in cb._quantizers.values()), name
    elif name == "ActQuant":
        assert cb._quantizers and all(q.enabled and q.bits == cb.bits for q in cb._quantizers.values()), name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_config_runs_a_few_steps(path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["main.py"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg_path = tmp_path / path.name
    cfg_path.write_text(yaml.safe_dump(tiny_config(path, tmp_path)))
    cli = _cli(path.parent.parent.name)(["fit", "--config", str(cfg_path)])
    assert cli.trainer.global_step == 3  # 3 optimizer steps with the shipped schedules (issue 18)
    wanted = [c["class_path"].rsplit(".", 1)[-1] for c in yaml.safe_load(path.read_text())["trainer"].get("callbacks") or []]
    have = [type(c).__name__ for c in cli.trainer.callbacks]
    assert all(name in have for name in wanted), (wanted, have)
    for cb in cli.trainer.callbacks:
        assert_target_reached(cb)
    for cb in cli.trainer.callbacks:
        if type(cb).__name__ == "RedundancyClean":  # the slim model is really smaller, and saved
            params = sum(p.numel() for p in cli.model.parameters())
            slim_params = sum(p.numel() for p in cb.slim_model.parameters())
            saved = tmp_path / "slim" / "model.safetensors"
            assert saved.is_file()
            if any(k.endswith(("WeightQuant", "ActQuant")) for k in wanted):  # quantized weights stored as int8
                from safetensors import safe_open

                with safe_open(str(saved), "pt") as f:
                    int8 = [k for k in f.keys() if f.get_slice(k).get_dtype() == "I8"]
                assert int8, "no int8 tensors in the saved quantized model"
                assert saved.stat().st_size < 0.4 * 4 * params  # int8 weights: well under the fp32 size
            else:  # pruning removes parameters
                assert slim_params < params, (slim_params, params)
    if "LayerReductionKD" in wanted:
        assert len(cli.model.model.bert.encoder.layer) == cli.model.model.config.num_hidden_layers == 3
    x = cli.model.example_input_array if path.parent.parent.name == "cifar" else None
    if x is not None:
        cli.model.eval()
        assert torch.isfinite(cli.model(x)).all()


def test_every_example_has_the_dense_baseline() -> None:
    names = {f"{p.parent.parent.name}/{p.name}" for p in CONFIGS}
    assert {"cifar/dense.yaml", "bert/dense.yaml"} <= names


def test_cifar_config_under_deepspeed_two_ranks(dist_results) -> None:
    r0, r1 = dist_results("examples_cifar_snip_momentum_zero2")
    assert r0["global_step"] == r1["global_step"] == 4
    assert r0["masks"].keys() == r1["masks"].keys() and r0["masks"]
    for name in r0["masks"]:
        assert torch.equal(r0["masks"][name], r1["masks"][name]), name
    assert abs(r0["stats"]["sparsity"] - 0.5) < 0.05
    assert torch.allclose(r0["output"], r1["output"], atol=1e-5)


def test_prepare_subset_from_zips_reads_only_what_it_needs(tmp_path: Path) -> None:
    from examples.cifar.data import prepare_subset

    src = tmp_path / "src"
    src.mkdir()
    for split in ("train", "test"):
        _zip_split(CIFAR, src, split, per_class=5)
    out = prepare_subset(src, tmp_path / "out", train_per_class=3, test_per_class=2)
    assert len(list(out.glob("train/*/*.jpg"))) == 30 and len(list(out.glob("test/*/*.jpg"))) == 20
    with pytest.raises(FileNotFoundError, match=r"No CIFAR-10 zips or image folders in .*missing"):
        prepare_subset(tmp_path / "missing", tmp_path / "out2", 1, 1)
