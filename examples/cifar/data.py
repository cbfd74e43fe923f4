"""CIFAR-10 as a LightningDataModule: an image folder offline, torchvision's download online.

``data_dir`` decides where the images come from, checked in this order:

1. ``data_dir/train/<class>/*.jpg`` and ``data_dir/test/<class>/*.jpg`` (any image type
   ``torchvision.datasets.ImageFolder`` reads): used as they are.
2. ``data_dir/train.zip`` and ``data_dir/test.zip`` holding that layout (the offline copy of
   CIFAR-10 the project ships its developers): extracted once into ``data_dir``, then as in 1.
3. ``data_dir/cifar-10-batches-py`` (torchvision's own format): read with ``CIFAR10``.
4. Otherwise, with ``download=True``: ``torchvision.datasets.CIFAR10(data_dir, download=True)``.
   Without a network (or with ``download=False``) this raises ``FileNotFoundError`` that says how to
   get the data.

The CIFAR-10 test split serves as the validation set, as usual for CIFAR.  ``subset`` keeps the first
``subset`` images of every class in each split (a deterministic, class-balanced subset for quick runs).

Provenance (:mod:`examples.cifar.provenance`): whoever fills ``data_dir`` leaves ``DATA_ORIGIN.json`` in it
(:func:`prepare_subset`: "a subset of N per class", :func:`extract_zips`: "the zips").  ``setup`` prints
one line saying which data it uses (path, images per split, where they came from) and refuses, with the
fix, a folder that contradicts the request: ``subset=None`` (the full set) on a marked subset, or on image
folders whose counts differ from the ``train.zip``/``test.zip`` beside them; ``subset=N`` on a marked
subset smaller than N per class.  ``subset="folder"`` takes the folder as it is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Literal, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, Dataset, Subset

from examples.cifar import provenance

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
SPLITS = ("train", "test")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

HOW_TO_GET_DATA = (
    "Get CIFAR-10 in one of these ways: (a) offline, copy the zips of the image-folder layout into it "
    "(`mkdir -p {d} && cp ../shared/data/cifar10/train.zip ../shared/data/cifar10/test.zip {d}/`; they "
    "are extracted on first use), or unzip them there so that `{d}/train/<class>/*.jpg` and "
    "`{d}/test/<class>/*.jpg` exist; (b) online, run again with `download: true` (the default) and "
    "torchvision downloads CIFAR-10 into it."
)


def _has_image_folder(split_dir: Path) -> bool:
    if not split_dir.is_dir():
        return False
    for class_dir in split_dir.iterdir():
        if class_dir.is_dir() and any(f.suffix.lower() in _IMAGE_SUFFIXES for f in class_dir.iterdir()):
            return True
    return False


def has_image_folders(data_dir: str | os.PathLike) -> bool:
    """True when ``data_dir/train/<class>/`` and ``data_dir/test/<class>/`` hold images."""
    root = Path(data_dir)
    return all(_has_image_folder(root / split) for split in SPLITS)


def has_zips(data_dir: str | os.PathLike) -> bool:
    root = Path(data_dir)
    return all((root / f"{split}.zip").is_file() for split in SPLITS)


def extract_zips(data_dir: str | os.PathLike) -> None:
    """Extract ``train.zip`` / ``test.zip`` into ``data_dir`` once (atomic per split: safe to race), and
    record that in ``DATA_ORIGIN.json`` when it extracted something and no marker was there."""
    root = Path(data_dir)
    extracted_any = False
    for split in SPLITS:
        target = root / split
        if _has_image_folder(target):
            continue
        extracted_any = True
        with tempfile.TemporaryDirectory(dir=root, prefix=f".extract-{split}-") as tmp:
            with zipfile.ZipFile(root / f"{split}.zip") as zf:
                zf.extractall(tmp)
            extracted = Path(tmp) / split
            if not _has_image_folder(extracted):
                raise FileNotFoundError(
                    f"{root / f'{split}.zip'} does not hold `{split}/<class>/<image>` entries. "
                    + HOW_TO_GET_DATA.format(d=root)
                )
            try:
                os.rename(extracted, target)
            except OSError:
                if not _has_image_folder(target):  # not a concurrent extraction that won: a real error
                    if target.exists() and not any(target.iterdir()):
                        target.rmdir()
                        os.rename(extracted, target)
                    else:
                        raise
    if extracted_any and provenance.read_marker(root) is None:
        provenance.write_marker(root, kind="zips", source=str(root / "train.zip") + ", " + str(root / "test.zip"))


def _torchvision_present(data_dir: str | os.PathLike) -> bool:
    return (Path(data_dir) / "cifar-10-batches-py").is_dir()


def class_balanced_indices(targets: list[int], per_class: int) -> list[int]:
    """Indices of the first ``per_class`` samples of every class (in dataset order)."""
    seen: dict[int, int] = {}
    keep = []
    for i, t in enumerate(targets):
        t = int(t)
        if seen.get(t, 0) < per_class:
            seen[t] = seen.get(t, 0) + 1
            keep.append(i)
    return keep


class CifarDataModule(pl.LightningDataModule):
    """CIFAR-10 from an image folder, its zips, or torchvision's download (see the module docstring).

    Args:
        data_dir: folder with ``train/`` and ``test/`` image folders, or ``train.zip`` and
            ``test.zip``, or torchvision's ``cifar-10-batches-py``; or where to download.
        batch_size: images per batch (per process).
        num_workers: DataLoader worker processes.
        subset: keep this many images per class in each split; ``None``: all of them (the full set: a
            folder marked as a subset is refused); ``"folder"``: whatever ``data_dir`` holds, unchecked.
        augment: random crop (padding 4) and horizontal flip on the training split.
        download: allow torchvision to download CIFAR-10 when ``data_dir`` holds none of the above.

    Raises:
        ValueError: ``batch_size`` < 1, ``num_workers`` < 0 or ``subset`` < 1; at ``setup``, a ``data_dir``
            that contradicts ``subset`` (see the module docstring; the message says how to fix it).
        FileNotFoundError: no data in ``data_dir`` and it cannot be downloaded (the message says how
            to get it).

    Example::

        dm = CifarDataModule("data/cifar10", batch_size=128, subset=500)
    """

    def __init__(
        self,
        data_dir: str = "data/cifar10",
        batch_size: int = 128,
        num_workers: int = 2,
        subset: Optional[Union[int, Literal["folder"]]] = None,
        augment: bool = True,
        download: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers}: must be >= 0")
        if subset is not None and subset != provenance.AS_IS and (not isinstance(subset, int) or subset < 1):
            raise ValueError(
                f"CifarDataModule: subset={subset!r}: must be a number of images per class >= 1, null for all "
                f"images, or {provenance.AS_IS!r} for whatever data_dir holds"
            )
        self.data_dir = str(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.subset = subset
        self.augment = augment
        self.download = download
        self.train_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None
        #: the line ``setup`` printed: which data, how many images, from where
        self.data_report: Optional[str] = None
        self._origin: Optional[str] = None

    def _source(self) -> str:
        if has_image_folders(self.data_dir):
            return "folder"
        if has_zips(self.data_dir):
            return "zip"
        if _torchvision_present(self.data_dir):
            return "torchvision"
        return "download"

    def prepare_data(self) -> None:
        source = self._source()
        if source == "zip":
            extract_zips(self.data_dir)
        elif source == "download":
            self._download()

    def _download(self) -> None:
        from torchvision.datasets import CIFAR10

        if not self.download:
            raise FileNotFoundError(
                f"No CIFAR-10 data in data_dir={self.data_dir!r} and download=False. " + HOW_TO_GET_DATA.format(d=self.data_dir)
            )
        try:
            for train in (True, False):
                CIFAR10(self.data_dir, train=train, download=True)
        except Exception as err:  # URLError, socket errors, HTTP errors: all mean "no network"
            raise FileNotFoundError(
                f"No CIFAR-10 data in data_dir={self.data_dir!r} and downloading it failed ({type(err).__name__}: "
                f"{err}); this machine looks offline. " + HOW_TO_GET_DATA.format(d=self.data_dir)
            ) from err

    def _transforms(self, train: bool):  # noqa: ANN202 (torchvision transform)
        from torchvision import transforms as T

        steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if (train and self.augment) else []
        return T.Compose(steps + [T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])

    def _make(self, split: str) -> Dataset:
        from torchvision.datasets import CIFAR10, ImageFolder

        train = split == "train"
        source = self._source()
        if source == "zip":  # prepare_data runs on one process only; others may arrive here first
            extract_zips(self.data_dir)
            source = "folder"
        if source == "folder":
            self._check_folder()
            ds = ImageFolder(str(Path(self.data_dir) / split), transform=self._transforms(train))
        elif source == "torchvision":
            self._origin = self._origin or f"torchvision's cifar-10-batches-py in {self.data_dir}"
            ds = CIFAR10(self.data_dir, train=train, download=False, transform=self._transforms(train))
        else:
            self._download()
            self._origin = f"downloaded by torchvision into {self.data_dir}"
            ds = CIFAR10(self.data_dir, train=train, download=False, transform=self._transforms(train))
        if isinstance(self.subset, int):
            ds = Subset(ds, class_balanced_indices(list(ds.targets), self.subset))
        return ds

    def _check_folder(self) -> None:
        """Refuse a folder that contradicts ``subset`` (once per setup); remember where it came from."""
        if self._origin is not None:
            return
        counts = provenance.class_counts(self.data_dir)
        marker = provenance.read_marker(self.data_dir)
        provenance.check_request(self.data_dir, self.subset, counts, marker)
        self._origin = provenance.describe(self.data_dir, counts, marker)

    def _report(self) -> None:
        sizes = {name: len(ds) for name, ds in (("train", self.train_set), ("test", self.test_set)) if ds is not None}
        used = " / ".join(f"{n:,} {name}" for name, n in sizes.items())
        pick = {None: "all images", provenance.AS_IS: "the folder as it is"}.get(self.subset, f"the first {self.subset} per class")
        line = f"CIFAR-10 data: {self.data_dir} ({self._origin}); using {pick}: {used} images"
        if line != self.data_report:
            self.data_report = line
            if getattr(rank_zero_only, "rank", 0) == 0:
                print(line, flush=True)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._make("train")
        if self.test_set is None:
            self.test_set = self._make("test")
        self._report()

    @property
    def classes(self) -> list[str]:
        ds = self.test_set.dataset if isinstance(self.test_set, Subset) else self.test_set
        return list(ds.classes)

    def _loader(self, ds: Optional[Dataset], shuffle: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError("CifarDataModule.setup() has not run")
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle and len(ds) > self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


def example_batch(data_dir: str, n: int = 8) -> torch.Tensor:
    """A normalised batch of ``n`` test images (for latency measurements)."""
    dm = CifarDataModule(data_dir, batch_size=n, num_workers=0, subset=max(1, n // 10 + 1), augment=False, download=False)
    dm.prepare_data()
    dm.setup("test")
    return next(iter(dm.test_dataloader()))[0][:n]


def prepare_subset(
    source: str | os.PathLike, data_dir: str | os.PathLike, train_per_class: int, test_per_class: int
) -> Path:
    """Extract a class-balanced subset of CIFAR-10 from ``source`` into ``data_dir`` (image-folder layout).

    ``source`` holds ``train.zip``/``test.zip`` (the offline layout) or ``train/``/``test/`` folders.
    Only the first ``*_per_class`` images of each class (in name order) are read, so this is quick
    even from the full 60,000-image zips.  Writes ``data_dir/DATA_ORIGIN.json`` (kind "subset").  When
    ``data_dir`` already has images it is reused if it is this very subset (its marker says so, or an
    unmarked folder holds exactly these counts per class: then the marker is written), else refused.

    Raises:
        FileNotFoundError: ``source`` has neither layout (says how to get the data).
        ValueError: ``data_dir`` already holds other images (the full set, another subset): says how to fix it.
    """
    out = Path(data_dir)
    src = Path(source)
    wanted = {"train": train_per_class, "test": test_per_class}
    if has_image_folders(out):
        _reuse_subset(out, wanted)
        return out
    if has_zips(src):
        for split, n in wanted.items():
            with zipfile.ZipFile(src / f"{split}.zip") as zf:
                by_class: dict[str, list[str]] = {}
                for name in sorted(zf.namelist()):
                    parts = name.split("/")
                    if len(parts) == 3 and parts[0] == split and parts[2].lower().endswith(_IMAGE_SUFFIXES):
                        by_class.setdefault(parts[1], []).append(name)
                for cls, names in by_class.items():
                    (out / split / cls).mkdir(parents=True, exist_ok=True)
                    for name in names[:n]:
                        (out / name).write_bytes(zf.read(name))
    elif has_image_folders(src):
        for split, n in wanted.items():
            for class_dir in sorted((src / split).iterdir()):
                if class_dir.is_dir():
                    (out / split / class_dir.name).mkdir(parents=True, exist_ok=True)
                    for f in sorted(class_dir.iterdir())[:n]:
                        shutil.copyfile(f, out / split / class_dir.name / f.name)
    else:
        raise FileNotFoundError(f"No CIFAR-10 zips or image folders in {str(src)!r}. " + HOW_TO_GET_DATA.format(d=out))
    provenance.write_marker(out, kind="subset", per_class=wanted, source=str(src), made_by=SUBSET_MAKER)
    return out


#: who :func:`prepare_subset` says made the subset
SUBSET_MAKER = "examples/main_job.py"


def _reuse_subset(out: Path, wanted: dict[str, int]) -> None:
    marker = provenance.read_marker(out)
    counts = provenance.class_counts(out)
    if marker is not None and marker.get("kind") == "subset" and marker.get("per_class") == wanted:
        return
    exact = all(counts[s] and set(counts[s].values()) == {wanted[s]} for s in SPLITS)
    if marker is None and exact:  # a subset made before markers existed: the same counts, so adopt it
        provenance.write_marker(out, kind="subset", per_class=wanted, source="unknown (an unmarked folder with "
                                "exactly these counts, adopted)", made_by=SUBSET_MAKER)
        return
    totals = " / ".join(f"{sum(counts[s].values()):,} {s}" for s in SPLITS)
    raise ValueError(
        f"prepare_subset: data_dir={str(out)!r} already holds {totals} images "
        f"({provenance.describe(out, counts, marker)}), not the subset asked for "
        f"({wanted['train']} train / {wanted['test']} test images per class). Fix: pass a new --data-dir (it is "
        f"created from --source), or delete {out}, or ask for what it holds (--train-per-class / --test-per-class)."
    )
