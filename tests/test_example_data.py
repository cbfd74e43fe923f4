"""The examples say which data they use and refuse a folder that contradicts the request (issue 18)."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

import pytest

from examples.bert.data import GlueDataModule
from examples.bert.data import prepare_subset as prepare_glue_subset
from examples.cifar.data import CifarDataModule, prepare_subset
from examples.cifar.provenance import MARKER, read_marker

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / "tests" / "data" / "cifar10"
GLUE = ROOT / "tests" / "data" / "glue"


def _zips(dst: Path, per_class: int) -> Path:
    """train.zip / test.zip of the shipped images, ``per_class`` of each class (a stand-in for the full set)."""
    dst.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with zipfile.ZipFile(dst / f"{split}.zip", "w") as zf:
            for class_dir in sorted((CIFAR / split).iterdir()):
                for img in sorted(class_dir.iterdir())[:per_class]:
                    zf.write(img, f"{split}/{class_dir.name}/{img.name}")
    return dst


def _setup(dm):
    dm.prepare_data()
    dm.setup("fit")
    return dm


# ---------------------------------------------------------------------------------------------- CIFAR
def test_issue_scenario_full_zips_beside_the_main_jobs_subset_are_refused_then_fixed(tmp_path, capsys) -> None:
    """The main job extracted its subset into data/cifar10; the user copied the full zips there and asked
    for the full set: refused (not a silent 2,500-image run), and the fix in the message works."""
    src = _zips(tmp_path / "shared", per_class=5)
    data = prepare_subset(src, tmp_path / "cifar10", train_per_class=3, test_per_class=2)
    marker = read_marker(data)
    assert marker["kind"] == "subset" and marker["per_class"] == {"train": 3, "test": 2}
    assert marker["images"] == {"train": 30, "test": 20} and marker["made_by"] == "examples/main_job.py"
    for z in src.glob("*.zip"):
        shutil.copy(z, data)
    dm = CifarDataModule(str(data), batch_size=4, num_workers=0, download=False)
    with pytest.raises(ValueError, match=r"holds a subset \(3 train / 2 test images per class, 30 train / 20 test "
                       r"images\) that examples/main_job\.py extracted .*subset=None asks for the full CIFAR-10\. Fix: "
                       r"remove .*/train, .*/test and .*DATA_ORIGIN\.json .*--data\.subset folder"):
        _setup(dm)
    for d in ("train", "test"):
        shutil.rmtree(data / d)
    (data / MARKER).unlink()
    dm = _setup(CifarDataModule(str(data), batch_size=4, num_workers=0, download=False))
    assert len(dm.train_set) == 50 and len(dm.test_set) == 50
    assert read_marker(data)["kind"] == "zips"
    out = capsys.readouterr().out
    assert f"CIFAR-10 data: {data} (extracted from the zips {data}/train.zip, {data}/test.zip); using all images: " \
           "50 train / 50 test images" in out


def test_unmarked_folders_that_do_not_match_the_zips_beside_them_are_refused(tmp_path) -> None:
    """A subset made before markers existed, with the full zips copied beside it."""
    data = tmp_path / "cifar10"
    prepare_subset(_zips(tmp_path / "src", per_class=3), data, 3, 2)
    (data / MARKER).unlink()
    _zips(data, per_class=5)
    with pytest.raises(ValueError, match=r"image folders with 30 train / 20 test images, but train\.zip/test\.zip "
                       r"beside them hold 50 / 50: the folders were not extracted from these zips"):
        _setup(CifarDataModule(str(data), num_workers=0, download=False))


def test_subset_larger_than_the_marked_subset_is_refused_and_folder_takes_it_as_is(tmp_path, capsys) -> None:
    data = prepare_subset(_zips(tmp_path / "src", per_class=5), tmp_path / "cifar10", 3, 2)
    with pytest.raises(ValueError, match=r"subset=3 asks for 3 images per class, but .* only 3 train / 2 test images"):
        _setup(CifarDataModule(str(data), num_workers=0, subset=3, download=False))
    dm = _setup(CifarDataModule(str(data), num_workers=0, subset=2, download=False))
    assert len(dm.train_set) == 20 and len(dm.test_set) == 20
    dm = _setup(CifarDataModule(str(data), num_workers=0, subset="folder", download=False))
    assert len(dm.train_set) == 30 and len(dm.test_set) == 20
    out = capsys.readouterr().out
    assert f"CIFAR-10 data: {data} (a subset (3 train / 2 test images per class) extracted by examples/main_job.py " \
           f"from {tmp_path / 'src'}); using the first 2 per class: 20 train / 20 test images" in out
    assert "using the folder as it is: 30 train / 20 test images" in out
    assert dm.data_report in out


def test_report_for_an_unmarked_folder(capsys) -> None:
    dm = _setup(CifarDataModule(str(CIFAR), batch_size=8, num_workers=0, download=False))
    assert dm.data_report == (f"CIFAR-10 data: {CIFAR} (image folders of unknown origin (no DATA_ORIGIN.json)); "
                              "using all images: 200 train / 200 test images")
    assert capsys.readouterr().out.count("CIFAR-10 data:") == 1
    dm.setup("test")  # a second setup prints nothing new
    assert "CIFAR-10 data:" not in capsys.readouterr().out


def test_main_job_refuses_a_folder_holding_other_images_and_adopts_an_unmarked_exact_one(tmp_path) -> None:
    src = _zips(tmp_path / "src", per_class=5)
    full = tmp_path / "full"
    _zips(full, per_class=5)
    _setup(CifarDataModule(str(full), num_workers=0, download=False))  # extracts the "full" zips
    with pytest.raises(ValueError, match=r"prepare_subset: data_dir=.*full' already holds 50 train / 50 test images "
                       r"\(extracted from the zips .*\), not the subset asked for \(3 train / 2 test images per class\)\. "
                       r"Fix: pass a new --data-dir"):
        prepare_subset(src, full, 3, 2)
    made = prepare_subset(src, tmp_path / "sub", 3, 2)
    with pytest.raises(ValueError, match=r"already holds 30 train / 20 test images \(a subset \(3 train / 2 test"):
        prepare_subset(src, made, 4, 2)
    assert prepare_subset(src, made, 3, 2) == made  # the same subset: reused
    (made / MARKER).unlink()
    prepare_subset(src, made, 3, 2)  # unmarked, exactly these counts: adopted, and marked now
    assert read_marker(made)["source"].startswith("unknown (an unmarked folder")


def test_bad_subset_value() -> None:
    with pytest.raises(ValueError, match=r"CifarDataModule: subset='all': must be a number of images per class"):
        CifarDataModule(subset="all")


# ---------------------------------------------------------------------------------------------- GLUE
def test_glue_report_says_partial_copy_and_counts(capsys) -> None:
    dm = GlueDataModule("sst2", str(GLUE), max_length=32, batch_size=4, subset=100)
    dm.setup("fit")
    assert dm.data_report == (f"GLUE SST-2 data: TSV files in {GLUE / 'SST-2'}: 160 train / 64 dev rows; a partial "
                              "copy: GLUE's SST-2 has 67,349 train / 872 dev; using 100 train / 64 dev examples")
    assert dm.data_report in capsys.readouterr().out


def test_glue_marked_subset_refused_when_all_rows_are_asked(tmp_path, capsys) -> None:
    sub = prepare_glue_subset("mrpc", GLUE, tmp_path / "MRPC", train_rows=20, dev_rows=10)
    marker = json.loads((sub / "DATA_ORIGIN.json").read_text())
    assert marker["kind"] == "subset" and marker["rows"] == {"train": 20, "validation": 10}
    with pytest.raises(ValueError, match=r"holds a subset \(20 train / 10 dev rows.*subset=None asks for all of GLUE "
                       r"MRPC's 3,668 training rows\. Fix: .*--data\.subset folder"):
        GlueDataModule("mrpc", str(sub), max_length=32).setup("fit")
    with pytest.raises(ValueError, match=r"subset=30 training rows asked, but .* holds a subset"):
        GlueDataModule("mrpc", str(sub), max_length=32, subset=30).setup("fit")
    dm = GlueDataModule("mrpc", str(sub), max_length=32, subset="folder")
    dm.setup("fit")
    assert len(dm.rows["train"]) == 20 and len(dm.rows["validation"]) == 10
    assert f"20 train / 10 dev rows; a subset made by examples.bert.data.prepare_subset from {GLUE / 'MRPC'}" \
           in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"already holds GLUE TSV files"):
        prepare_glue_subset("mrpc", GLUE, sub, 5, 5)


# ---------------------------------------------------------------------------------------------- tips
def test_examples_hide_lightnings_tips_only() -> None:
    from examples._quiet import hide_lightning_tips

    hide_lightning_tips()
    hide_lightning_tips()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert len(logger.filters) == 1
    tip = logger.makeRecord(logger.name, logging.INFO, __file__, 0, "💡 Tip: For seamless cloud logging ...", (), None)
    info = logger.makeRecord(logger.name, logging.INFO, __file__, 0, "GPU available: False, used: False", (), None)
    assert not logger.filter(tip) and logger.filter(info)
