"""Where a CIFAR-10 image folder came from, and whether it is what a run asked for.

A folder of ``train/<class>/*.jpg`` + ``test/<class>/*.jpg`` says nothing about itself: the main job's
2,500-image subset and the full 60,000 images look alike.  So whoever fills ``data_dir`` writes
``data_dir/DATA_ORIGIN.json`` (:data:`MARKER`):

* :func:`examples.cifar.data.prepare_subset` (the main job): ``{"kind": "subset", "per_class": {"train":
  250, "test": 100}, "source": ".../shared/data/cifar10", "made_by": "examples/main_job.py", ...}``;
* :func:`examples.cifar.data.extract_zips` (``CifarDataModule`` on ``train.zip``/``test.zip``):
  ``{"kind": "full zips", ...}`` (whatever the zips hold).

A folder without the file (unzipped by hand, or made before markers existed) is "origin unknown".
:func:`check_request` refuses a folder whose content contradicts the request, with the fix in the
message; :func:`describe` is the one-line report the examples print.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Optional, Union

MARKER = "DATA_ORIGIN.json"
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: images per class of the real CIFAR-10
FULL_PER_CLASS = {"train": 5000, "test": 1000}

#: ``subset`` values of ``CifarDataModule``: all images (the full set), N per class, or what the folder holds
Subset = Union[int, str, None]
AS_IS = "folder"


def read_marker(data_dir: Union[str, os.PathLike]) -> Optional[dict[str, Any]]:
    path = Path(data_dir) / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not readable JSON ({err}); delete it or the whole folder and run again.") from err


def write_marker(data_dir: Union[str, os.PathLike], **fields: Any) -> Path:
    """Write :data:`MARKER` (atomic rename) with ``fields`` plus the image counts now in the folder."""
    root = Path(data_dir)
    counts = class_counts(root)
    body = {**fields, "images": {s: sum(c.values()) for s, c in counts.items()}, "note": (
        "Written by lightning-compress's examples: where this folder's images came from. "
        "Delete this folder (not just this file) to change what it holds.")}
    tmp = root / f".{MARKER}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, root / MARKER)
    return root / MARKER


def class_counts(data_dir: Union[str, os.PathLike]) -> dict[str, dict[str, int]]:
    """``{split: {class: number of images}}`` of the image folders (0 where absent)."""
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        split_dir = Path(data_dir) / split
        out[split] = {}
        if split_dir.is_dir():
            for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                out[split][class_dir.name] = sum(
                    1 for f in os.scandir(class_dir) if f.name.lower().endswith(IMAGE_SUFFIXES)
                )
    return out


def zip_counts(data_dir: Union[str, os.PathLike]) -> Optional[dict[str, int]]:
    """Images in ``train.zip`` / ``test.zip`` (reads only their directories), or None without both."""
    root = Path(data_dir)
    if not all((root / f"{s}.zip").is_file() for s in SPLITS):
        return None
    counts = {}
    for split in SPLITS:
        with zipfile.ZipFile(root / f"{split}.zip") as zf:
            counts[split] = sum(
                1 for n in zf.namelist() if n.startswith(f"{split}/") and n.lower().endswith(IMAGE_SUFFIXES)
            )
    return counts


def _per_class_text(per_class: dict[str, int]) -> str:
    return " / ".join(f"{per_class[s]:,} {s}" for s in SPLITS) + " images per class"


def _totals(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    return {s: sum(counts[s].values()) for s in SPLITS}


def describe(data_dir: Union[str, os.PathLike], counts: dict[str, dict[str, int]], marker: Optional[dict[str, Any]]) -> str:
    """Where the images of ``data_dir`` came from, in words (for the report line)."""
    if marker is None:
        full = all(counts[s] and min(counts[s].values()) >= FULL_PER_CLASS[s] for s in SPLITS)
        return "image folders of unknown origin (no " + MARKER + ")" + ("; as large as the full CIFAR-10" if full else "")
    if marker.get("kind") == "subset":
        return (f"a subset ({_per_class_text(marker['per_class'])}) extracted by {marker.get('made_by', '?')} "
                f"from {marker.get('source', '?')}")
    return f"extracted from the zips {marker.get('source', '?')}"


def _fixes(d: str, zips: bool) -> str:
    extract = (f"remove {d}/train, {d}/test and {d}/{MARKER} so that the train.zip/test.zip in it are extracted "
               "on the next run" if zips else
               f"put the full set in its own folder (`mkdir -p {d}_full && cp ../shared/data/cifar10/*.zip {d}_full/`, "
               f"then `--data.data_dir {d}_full`)")
    return extract


def check_request(data_dir: Union[str, os.PathLike], subset: Subset, counts: dict[str, dict[str, int]],
                  marker: Optional[dict[str, Any]]) -> None:
    """Raise ``ValueError`` (with the fix) when the folder contradicts ``subset``:

    * ``subset=None`` (the full set) and the marker says subset, or ``train.zip``/``test.zip`` lie beside
      image folders that hold a different number of images than the zips (folders not made from them);
    * ``subset=N`` and a marked subset holds fewer than N images per class in a split.
    ``subset="folder"`` accepts what is there (the main job, which checked its own subset)."""
    if subset == AS_IS:
        return
    d = str(data_dir)
    zips = zip_counts(d)
    have = _totals(counts)
    if subset is None:
        if marker is not None and marker.get("kind") == "subset":
            raise ValueError(
                f"CifarDataModule: data_dir={d!r} holds a subset ({_per_class_text(marker['per_class'])}, "
                f"{have['train']:,} train / {have['test']:,} test images) that {marker.get('made_by', '?')} extracted "
                f"(see {d}/{MARKER}), but subset=None asks for the full CIFAR-10. Fix: "
                + _fixes(d, zips is not None)
                + f"; or pass `--data.subset folder` (CifarDataModule(subset='folder')) to train on this subset knowingly."
            )
        if zips is not None and zips != have:
            raise ValueError(
                f"CifarDataModule: data_dir={d!r} has image folders with {have['train']:,} train / {have['test']:,} test "
                f"images, but train.zip/test.zip beside them hold {zips['train']:,} / {zips['test']:,}: the folders were "
                f"not extracted from these zips and subset=None asks for all images. Fix: remove {d}/train and {d}/test "
                f"so the zips are extracted on the next run, or move the zips to their own folder; or pass "
                f"`--data.subset folder` to train on the folders as they are."
            )
        return
    if marker is not None and marker.get("kind") == "subset":
        short = {s: n for s, n in marker["per_class"].items() if n < subset}
        if short:
            raise ValueError(
                f"CifarDataModule: subset={subset} asks for {subset} images per class, but data_dir={d!r} is a subset "
                f"with only {_per_class_text(marker['per_class'])} (see {d}/{MARKER}). Fix: a smaller subset, or "
                + _fixes(d, zips is not None) + "."
            )
