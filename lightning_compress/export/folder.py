"""Export folders that never hold a mix of runs: checked up front, written aside, swapped in whole.

* :func:`check_output_dir`: before any work (``RedundancyClean.setup``), refuse an ``output_dir``
  that is a file, whose parent cannot be written, that holds files no export writes, or that holds an
  earlier export (unless ``overwrite=True``).
* :func:`staged_dir`: a context manager yielding an empty temporary sibling folder
  (``.<name>.lc-tmp-<random>`` next to ``output_dir``).  Everything is written there; when the block
  ends without an error the folder is renamed to ``output_dir`` (an earlier export is first renamed
  aside and deleted after the swap).  On an error the temporary folder is deleted and ``output_dir``
  is left exactly as it was.  Renames are within one parent folder, so they are atomic on POSIX file
  systems; between the two renames of a replacement ``output_dir`` is briefly absent, never mixed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: names an export writes into its folder besides the registered formats' files (anything else
#: there is the user's and is never deleted)
EXPORT_FILES = ("model.onnx.data", "report.json")


def export_files() -> set[str]:
    """Every file name an export may write: each registered format's file
    (:mod:`lightning_compress.export.formats`) and :data:`EXPORT_FILES`."""
    from lightning_compress.export import writers  # noqa: F401  (registers the built-in formats)
    from lightning_compress.export.formats import WRITERS

    return {w.filename for w in WRITERS.values()} | set(EXPORT_FILES)


def _writable_parent(path: Path) -> Path:
    """The nearest existing ancestor of ``path`` (it will create the rest)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool, owner: str = "RedundancyClean") -> Path:
    """Check that an export can be written to ``output_dir`` (nothing is created).  Returns it resolved.

    Raises:
        ValueError: ``output_dir`` is a file; is a folder holding files an export does not write
            (named; they would be deleted by the swap); or holds an earlier export and
            ``overwrite`` is False.
        PermissionError: the folder that would hold ``output_dir`` cannot be written.
    """
    out = Path(output_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{owner}: `output_dir`={str(output_dir)!r} is a file, not a folder; pass a folder path.")
    parent = _writable_parent(out)
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{owner}: `output_dir`={str(output_dir)!r} cannot be written: {str(parent)!r} is not a writable folder; "
            f"choose another `output_dir` or fix its permissions."
        )
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(f"{owner}: `output_dir`={str(output_dir)!r} is not writable; fix its permissions or choose another.")
        entries = sorted(p.name for p in out.iterdir())
        ours = export_files()
        foreign = [n for n in entries if n not in ours]
        if foreign:
            raise ValueError(
                f"{owner}: `output_dir`={str(output_dir)!r} holds files an export does not write ({foreign[:5]}"
                f"{' ...' if len(foreign) > 5 else ''}); the export replaces the whole folder, so pass an empty or new folder."
            )
        if entries and not overwrite:
            raise ValueError(
                f"{owner}: `output_dir`={str(output_dir)!r} already holds an export ({entries}); pass overwrite=True "
                f"to replace it whole, or choose a new folder."
            )
    return out


@contextmanager
def staged_dir(output_dir: str | os.PathLike, overwrite: bool, owner: str = "RedundancyClean") -> Iterator[Path]:
    """Yield an empty temporary sibling of ``output_dir``; on success swap it in as ``output_dir``
    (see module docstring).  :func:`check_output_dir` runs first (and again at the swap)."""
    out = check_output_dir(output_dir, overwrite, owner)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.lc-tmp-", dir=out.parent))
    try:
        yield tmp
        check_output_dir(out, overwrite, owner)  # nothing appeared there meanwhile
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.lc-old-", dir=out.parent))
            os.rmdir(old)
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            if old is not None:
                os.rename(old, out)  # put the earlier export back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["EXPORT_FILES", "check_output_dir", "export_files", "staged_dir"]
