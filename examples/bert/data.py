"""GLUE SST-2 / MRPC as a LightningDataModule: TSV files offline, the ``datasets`` hub online.

Offline, ``data_dir`` holds the GLUE files as distributed: ``train.tsv`` and ``dev.tsv`` either
directly or under ``SST-2/`` / ``MRPC/`` (so the GLUE root folder works too):

* SST-2: ``sentence<TAB>label`` with a header line.
* MRPC: ``Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String`` with a header that may start
  with a UTF-8 byte-order mark.

Without TSVs (``data_dir`` unset or empty) the task is loaded with ``datasets.load_dataset("nyu-mll/glue",
task)`` unless ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` is set; failing that, ``FileNotFoundError``
says how to get the data.  The dev split is used for validation and test (GLUE's test labels are hidden).

``setup`` prints one line saying which data it uses: the folder (or the hub), sentences per split, and
where they came from; a folder is compared with GLUE's published sizes (:data:`GLUE_SIZES`), so a partial
copy says so.  A task folder made by :func:`prepare_subset` carries ``DATA_ORIGIN.json`` (kind "subset");
``subset=None`` (all of GLUE's training sentences) on such a folder is refused with the fix, as is
``subset=N`` larger than it; ``subset="folder"`` takes the folder as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from examples.bert.model import load_tokenizer

TASK_DIRS = {"sst2": "SST-2", "mrpc": "MRPC"}
#: header columns that hold (text_a, text_b or None, label) for each task
TASK_COLUMNS = {"sst2": ("sentence", None, "label"), "mrpc": ("#1 String", "#2 String", "Quality")}
SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv"}
#: rows (sentences / sentence pairs) of GLUE as distributed
GLUE_SIZES = {"sst2": {"train": 67349, "validation": 872}, "mrpc": {"train": 3668, "validation": 408}}
#: left in a task folder by :func:`prepare_subset`
MARKER = "DATA_ORIGIN.json"
#: ``subset`` value: the training rows of the folder as they are, unchecked
AS_IS = "folder"

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
        subset: keep the first ``subset`` training examples; ``None``: all (GLUE's full training set: a
            folder marked as a subset by :func:`prepare_subset` is refused); ``"folder"``: all rows of the
            folder as it is, unchecked.
        eval_subset: keep the first ``eval_subset`` dev examples (``None``: all).

    Raises:
        ValueError: bad sizes (``max_length`` < 8, ``batch_size`` < 1, ``subset`` < 1); at ``setup``, a
            marked subset folder that contradicts ``subset`` (the message says how to fix it).
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
        subset: Optional[Union[int, Literal["folder"]]] = None,
        eval_subset: Optional[int] = None,
    ) -> None:
        super().__init__()
        if max_length < 8:
            raise ValueError(f"max_length={max_length}: must be >= 8 tokens")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        for name, value in (("subset", subset), ("eval_subset", eval_subset)):
            if value is None or (name == "subset" and value == AS_IS):
                continue
            if not isinstance(value, int) or value < 1:
                extra = f", or {AS_IS!r} for the folder as it is" if name == "subset" else ""
                raise ValueError(f"GlueDataModule: {name}={value!r}: must be >= 1, or null for all examples{extra}")
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
        #: the line ``setup`` printed: which data, how many sentences, from where
        self.data_report: Optional[str] = None

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
        task_dir = find_task_dir(self.task, self.data_dir)
        marker = read_marker(task_dir) if task_dir is not None else None
        check_request(self.task, task_dir, self.subset, marker)
        have: dict[str, int] = {}
        if "train" not in self.rows and stage in (None, "fit"):
            rows = self.load_split("train")
            have["train"] = len(rows)
            self.rows["train"] = rows[: self.subset] if isinstance(self.subset, int) else rows
        if "validation" not in self.rows:
            rows = self.load_split("validation")
            have["validation"] = len(rows)
            self.rows["validation"] = rows[: self.eval_subset] if self.eval_subset else rows
        if have:
            self._report(task_dir, marker, have)

    def _report(self, task_dir: Optional[Path], marker: Optional[dict[str, Any]], have: dict[str, int]) -> None:
        name = TASK_DIRS[self.task]
        if task_dir is None:
            origin = f"the datasets hub, nyu-mll/glue {self.task} (downloaded once into the datasets cache)"
        else:
            full = GLUE_SIZES[self.task]
            found = " / ".join(f"{have[s]:,} {'dev' if s == 'validation' else s}" for s in have)
            if marker is not None and marker.get("kind") == "subset":
                kind = f"a subset made by {marker.get('made_by', '?')} from {marker.get('source', '?')}"
            elif all(have[s] == full[s] for s in have):
                kind = f"the full GLUE {name} as distributed"
            else:
                kind = f"a partial copy: GLUE's {name} has {full['train']:,} train / {full['validation']:,} dev"
            origin = f"TSV files in {task_dir}: {found} rows; {kind}"
        used = " / ".join(f"{len(r):,} {'dev' if s == 'validation' else s}" for s, r in self.rows.items())
        line = f"GLUE {name} data: {origin}; using {used} examples"
        self.data_report = line
        if getattr(rank_zero_only, "rank", 0) == 0:
            print(line, flush=True)

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


def read_marker(task_dir: Path) -> Optional[dict[str, Any]]:
    path = Path(task_dir) / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not readable JSON ({err}); delete the folder and make it again.") from err


def check_request(task: str, task_dir: Optional[Path], subset: Any, marker: Optional[dict[str, Any]]) -> None:
    """Raise ``ValueError`` with the fix when a marked subset folder contradicts ``subset`` (see module doc)."""
    if marker is None or marker.get("kind") != "subset" or subset == AS_IS:
        return
    rows = marker.get("rows", {})
    made = f"{task_dir} holds a subset ({rows.get('train', '?')} train / {rows.get('validation', '?')} dev rows, see {task_dir / MARKER})"
    if subset is None:
        raise ValueError(
            f"GlueDataModule: {made}, but subset=None asks for all of GLUE {TASK_DIRS[task]}'s "
            f"{GLUE_SIZES[task]['train']:,} training rows. Fix: point data_dir at the full task folder (e.g. "
            f"`cp -r ../shared/data/glue data/glue` and `--data.data_dir data/glue`), or pass `--data.subset folder` "
            f"to train on this subset knowingly."
        )
    if isinstance(subset, int) and subset > int(rows.get("train", 0)):
        raise ValueError(
            f"GlueDataModule: subset={subset} training rows asked, but {made}. Fix: a smaller subset, or a data_dir "
            f"with the full task folder."
        )


def prepare_subset(task: Literal["sst2", "mrpc"], source: str | os.PathLike, data_dir: str | os.PathLike,
                   train_rows: int, dev_rows: int, made_by: str = "examples.bert.data.prepare_subset") -> Path:
    """Write the first ``train_rows`` / ``dev_rows`` rows of ``source``'s task TSVs (``source`` = the task
    folder or the GLUE root) into ``data_dir`` (header kept), with ``DATA_ORIGIN.json`` saying so.
    Returns ``data_dir``.  Refuses a ``data_dir`` that already holds TSVs."""
    src = find_task_dir(task, str(source))
    if src is None:
        raise FileNotFoundError(f"prepare_subset: no {TASK_DIRS[task]} train.tsv/dev.tsv in {source!s}. "
                                + HOW_TO_GET_GLUE.format(name=TASK_DIRS[task], d=source))
    out = Path(data_dir)
    if any((out / f).exists() for f in SPLIT_FILES.values()):
        raise ValueError(f"prepare_subset: {out} already holds GLUE TSV files; pass a new folder or delete it.")
    out.mkdir(parents=True, exist_ok=True)
    wanted = {"train": train_rows, "validation": dev_rows}
    for split, fname in SPLIT_FILES.items():
        with open(src / fname, encoding="utf-8", newline="") as f:
            lines = f.read().splitlines(keepends=True)
        (out / fname).write_text("".join(lines[: 1 + wanted[split]]), encoding="utf-8", newline="")
    rows = {split: len(read_glue_tsv(out / fname, task)) for split, fname in SPLIT_FILES.items()}
    body = {"kind": "subset", "task": task, "rows": rows, "source": str(src), "made_by": made_by,
            "note": "Written by lightning-compress's examples: this folder holds the first rows of GLUE only."}
    (out / MARKER).write_text(json.dumps(body, indent=2) + "\n")
    return out
