"""GLUE SST-2 / MRPC as a LightningDataModule: TSV files offline, the ``datasets`` hub online.

Offline, ``data_dir`` holds the GLUE files as distributed: ``train.tsv`` and ``dev.tsv`` either
directly or under ``SST-2/`` / ``MRPC/`` (so the GLUE root folder works too):

* SST-2: ``sentence<TAB>label`` with a header line.
* MRPC: ``Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String`` with a header that may start
  with a UTF-8 byte-order mark.

Without TSVs (``data_dir`` unset or empty) the task is loaded with ``datasets.load_dataset("nyu-mll/glue",
task)`` unless ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` is set; failing that, ``FileNotFoundError``
says how to get the data.  The dev split is used for validation and test (GLUE's test labels are hidden).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from examples.bert.model import load_tokenizer

TASK_DIRS = {"sst2": "SST-2", "mrpc": "MRPC"}
#: header columns that hold (text_a, text_b or None, label) for each task
TASK_COLUMNS = {"sst2": ("sentence", None, "label"), "mrpc": ("#1 String", "#2 String", "Quality")}
SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv"}

HOW_TO_GET_GLUE = (
    "Get GLUE {name} in one of these ways: (a) offline, copy the task folder so that {d}/train.tsv and "
    "{d}/dev.tsv exist (e.g. `mkdir -p data/glue && cp -r ../shared/data/glue/{name} data/glue/` and pass "
    "--data.data_dir data/glue); (b) online, leave data_dir unset (and HF_HUB_OFFLINE / HF_DATASETS_OFFLINE "
    "unset) to load it with `datasets`."
)

Example = tuple[str, Optional[str], int]


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def find_task_dir(task: str, data_dir: Optional[str]) -> Optional[Path]:
    """The folder holding ``train.tsv`` / ``dev.tsv`` of ``task`` in ``data_dir`` (or ``data_dir/SST-2`` etc.)."""
    if not data_dir:
        return None
    for candidate in (Path(data_dir), Path(data_dir) / TASK_DIRS[task]):
        if all((candidate / f).is_file() for f in SPLIT_FILES.values()):
            return candidate
    return None


def read_glue_tsv(path: str | os.PathLike, task: Literal["sst2", "mrpc"]) -> list[Example]:
    """Rows of a GLUE TSV as ``(text_a, text_b or None, label)``; the header names the columns.

    Raises:
        ValueError: a needed column is missing from the header, a row has too few fields or a
            label that is not an integer (names the file and line).
    """
    col_a, col_b, col_label = TASK_COLUMNS[task]
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig drops MRPC's byte-order mark
        lines = f.read().splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file; expected a header line with {col_a!r} and {col_label!r}")
    header = [h.strip() for h in lines[0].split("\t")]
    needed = [c for c in (col_a, col_b, col_label) if c is not None]
    missing = [c for c in needed if c not in header]
    if missing:
        raise ValueError(f"{path}: header {header} lacks column(s) {missing} needed for task {task!r}")
    ia, il = header.index(col_a), header.index(col_label)
    ib = header.index(col_b) if col_b is not None else None
    rows: list[Example] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < len(header):
            raise ValueError(f"{path}:{lineno}: {len(fields)} tab-separated fields, the header has {len(header)}")
        try:
            label = int(fields[il])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: label {fields[il]!r} is not an integer") from None
        rows.append((fields[ia].strip(), fields[ib].strip() if ib is not None else None, label))
    return rows


def _hub_rows(task: str, split: str) -> list[Example]:
    import datasets

    ds = datasets.load_dataset("nyu-mll/glue", task, split=split)
    if task == "sst2":
        return [(r["sentence"], None, int(r["label"])) for r in ds]
    return [(r["sentence1"], r["sentence2"], int(r["label"])) for r in ds]


class GlueDataModule(pl.LightningDataModule):
    """GLUE SST-2 or MRPC, tokenised per batch (dynamic padding up to ``max_length``).

    Args:
        task: ``"sst2"`` (single sentences) or ``"mrpc"`` (sentence pairs).
        data_dir: folder with the task's ``train.tsv``/``dev.tsv`` (or the GLUE root holding ``SST-2/``,
            ``MRPC/``); ``None`` = load from the hub with ``datasets``.
        tokenizer_name_or_path: tokenizer folder or hub id; ``None`` = the packaged all-MiniLM-L6-v2
            (main.py links it to ``model.model_name_or_path``).
        max_length: maximum tokens per example (longer ones are truncated).
        batch_size: examples per batch (per process).
        num_workers: DataLoader worker processes.
        subset: keep the first ``subset`` training examples (``None``: all).
        eval_subset: keep the first ``eval_subset`` dev examples (``None``: all).

    Raises:
        ValueError: bad sizes (``max_length`` < 8, ``batch_size`` < 1, ``subset`` < 1).
        FileNotFoundError: no TSVs in ``data_dir`` and the hub is off or unreachable (says how to get them).
    """

    def __init__(
        self,
        task: Literal["sst2", "mrpc"] = "sst2",
        data_dir: Optional[str] = None,
        tokenizer_name_or_path: Optional[str] = None,
        max_length: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        subset: Optional[int] = None,
        eval_subset: Optional[int] = None,
    ) -> None:
        super().__init__()
        if max_length < 8:
            raise ValueError(f"max_length={max_length}: must be >= 8 tokens")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        for name, value in (("subset", subset), ("eval_subset", eval_subset)):
            if value is not None and value < 1:
                raise ValueError(f"{name}={value}: must be >= 1, or null for all examples")
        self.task = task
        self.data_dir = data_dir
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.max_length = max_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.subset = subset
        self.eval_subset = eval_subset
        self.tokenizer: Any = None
        self.rows: dict[str, list[Example]] = {}

    def load_split(self, split: Literal["train", "validation"]) -> list[Example]:
        """The split's examples, from TSVs when ``data_dir`` has them, else from the hub."""
        task_dir = find_task_dir(self.task, self.data_dir)
        if task_dir is not None:
            return read_glue_tsv(task_dir / SPLIT_FILES[split], self.task)
        where = self.data_dir or "data/glue/" + TASK_DIRS[self.task]
        if self.data_dir and Path(self.data_dir).exists():
            problem = f"data_dir={self.data_dir!r} holds no train.tsv and dev.tsv (nor under {TASK_DIRS[self.task]}/)"
        elif self.data_dir:
            problem = f"data_dir={self.data_dir!r} does not exist"
        else:
            problem = "data_dir is not set"
        if _offline():
            raise FileNotFoundError(
                f"{problem} and HF_HUB_OFFLINE/HF_DATASETS_OFFLINE forbid the hub. "
                + HOW_TO_GET_GLUE.format(name=TASK_DIRS[self.task], d=where)
            )
        try:
            return _hub_rows(self.task, split)
        except Exception as err:  # ConnectionError, hub errors: all mean the data is not reachable
            raise FileNotFoundError(
                f"{problem} and loading GLUE {self.task} from the hub failed ({type(err).__name__}: {err}). "
                + HOW_TO_GET_GLUE.format(name=TASK_DIRS[self.task], d=where)
            ) from err

    def prepare_data(self) -> None:
        if find_task_dir(self.task, self.data_dir) is None:
            self.load_split("train")  # download into the datasets cache once (or raise the clear error)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_name_or_path)
        if "train" not in self.rows and stage in (None, "fit"):
            rows = self.load_split("train")
            self.rows["train"] = rows[: self.subset] if self.subset else rows
        if "validation" not in self.rows:
            rows = self.load_split("validation")
            self.rows["validation"] = rows[: self.eval_subset] if self.eval_subset else rows

    def collate(self, batch: list[Example]) -> dict[str, torch.Tensor]:
        a = [r[0] for r in batch]
        b = [r[1] for r in batch] if batch[0][1] is not None else None
        enc = self.tokenizer(a, b, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        enc = dict(enc)
        enc["labels"] = torch.tensor([r[2] for r in batch], dtype=torch.long)
        return enc

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.rows:
            raise RuntimeError("GlueDataModule.setup() has not run")
        return DataLoader(
            self.rows[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)
