"""CIFAR-10 decoded once into tensors, served to Lightning in whole batches (fast on a 2-core CPU).

:func:`load_cifar` decodes ``train.zip``/``test.zip`` (or the ``train/``/``test/`` image folders) of a
``source`` folder into uint8 tensors with :func:`examples.cifar.train_dense.load_split` (about 5 s for all
60,000 images), optionally keeping the first ``per_class`` images of every class (a fixed, class-balanced
subset).  :class:`CifarTensors` is a LightningDataModule over those tensors: its training loader yields
whole batches (a ``BatchSampler`` of indices; one fancy-indexing per batch instead of 128 per-image
``__getitem__`` + collate calls), normalized with the CIFAR-10 mean / std and, in training, augmented on the
whole batch (random crop with zero padding 4 + horizontal flip, one draw per image, from a seeded
generator: the same seed gives the same batches).
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from examples.cifar.data import has_image_folders, has_zips
from examples.cifar.train_dense import augment, load_split, normalize

SHARED_SOURCE_HINT = (
    "The project's developer and CI machines have it at ../shared/data/cifar10 (the default); elsewhere put "
    "CIFAR-10 in the image-folder layout there, or in any folder as train.zip + test.zip (holding "
    "train/<class>/*.jpg and test/<class>/*.jpg) or as the extracted train/ and test/ folders, and pass "
    "--source DIR."
)


def check_source(source: str | os.PathLike, owner: str = "main_job") -> Path:
    """``source`` as a Path if it holds CIFAR-10 zips or image folders, else ``FileNotFoundError`` saying
    where the data is expected and how to point at it."""
    src = Path(source)
    if not (has_zips(src) or has_image_folders(src)):
        what = "does not exist" if not src.exists() else "holds neither train.zip + test.zip nor train/ + test/ image folders"
        raise FileNotFoundError(f"{owner}: --source {str(src)!r} {what}, so there is no CIFAR-10 data to read. "
                                + SHARED_SOURCE_HINT)
    return src


def class_subset(labels: torch.Tensor, per_class: int | None) -> torch.Tensor:
    """Indices of the first ``per_class`` images of every class (in the given order); all when None."""
    if per_class is None:
        return torch.arange(labels.numel())
    keep = [torch.nonzero(labels == c).flatten()[:per_class] for c in range(int(labels.max()) + 1)]
    return torch.cat(keep).sort().values


def load_cifar(source: str | os.PathLike, split: str, per_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 images (N, 3, 32, 32), int64 labels (N,))`` of ``split`` from ``source`` (see the module
    docstring); ``per_class`` keeps the first that many of every class."""
    images, labels = load_split(check_source(source), split)
    keep = class_subset(labels, per_class)
    return images[keep], labels[keep]


class _Batches(Dataset):
    """``dataset[list of indices]`` -> one normalized (augmented) batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, train: bool, seed: int) -> None:
        self.images, self.labels, self.train = images, labels, train
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long)
        x = normalize(self.images[index])
        if self.train:
            x = augment(x, self.generator)
        return x.contiguous(), self.labels[index]


class CifarTensors(pl.LightningDataModule):
    """LightningDataModule over decoded CIFAR-10 tensors (see the module docstring).

    Args:
        train: ``(uint8 images, labels)`` for training (None: no training loader).
        test: ``(uint8 images, labels)`` for ``trainer.test`` (None: no test loader).
        batch_size: images per training batch (the last partial batch is dropped); evaluation uses 500.
        augment: random crop + flip in training.
        seed: seeds the shuffling and the augmentation.
    """

    def __init__(
        self,
        train: tuple[torch.Tensor, torch.Tensor] | None,
        test: tuple[torch.Tensor, torch.Tensor] | None,
        batch_size: int = 128,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"CifarTensors: batch_size={batch_size} must be >= 1")
        if train is not None and train[1].numel() < batch_size:
            raise ValueError(f"CifarTensors: {train[1].numel()} training images are fewer than batch_size={batch_size}; "
                             "lower --batch-size or use more images")
        self.train, self.test, self.batch_size, self.augment, self.seed = train, test, batch_size, augment, seed

    def train_dataloader(self) -> DataLoader:
        if self.train is None:
            raise RuntimeError("CifarTensors: no training tensors were given")
        ds = _Batches(*self.train, train=self.augment, seed=self.seed)
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(self.seed + 1))
        return DataLoader(ds, sampler=BatchSampler(sampler, self.batch_size, drop_last=True), batch_size=None)

    def _eval_loader(self) -> DataLoader:
        if self.test is None:
            raise RuntimeError("CifarTensors: no test tensors were given")
        ds = _Batches(*self.test, train=False, seed=self.seed)
        return DataLoader(ds, sampler=BatchSampler(SequentialSampler(ds), 500, drop_last=False), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy (fraction) of ``model`` in eval mode over all of ``images`` (uint8, normalized here)."""
    was = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, labels.numel(), batch_size):
            logits = model(normalize(images[i : i + batch_size]))
            correct += int((logits.argmax(-1) == labels[i : i + batch_size]).sum())
    finally:
        model.train(was)
    return correct / max(1, labels.numel())
