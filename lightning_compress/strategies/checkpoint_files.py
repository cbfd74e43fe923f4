"""Atomic DeepSpeed checkpoint folders: written aside, swapped in, checked against a manifest on load.

A DeepSpeed checkpoint is a folder (``last.ckpt/``) of parts: ``checkpoint/mp_rank_00_model_states.pt``,
one ``..._optim_states.pt`` per rank, ``latest``, ``zero_to_fp32.py``.  Writing them in place means a
process killed mid-save leaves a folder whose parts come from two saves (DeepSpeed overwrites the
previous checkpoint part by part).  :class:`~lightning_compress.strategies.DeepSpeedCompressionStrategy`
therefore:

1. writes every part into a temporary sibling folder :func:`partial_path` (``.<name>.lc-partial-<token>``,
   the token chosen on rank 0 and broadcast, so all ranks write into the same folder);
2. after all ranks are done, rank 0 writes :data:`MANIFEST` (``lc_manifest.json``: the step, and the
   size and SHA-256 of every part) into it, and :func:`swap_in` renames it to the target (an earlier
   checkpoint there is renamed aside first and deleted after), so the target is always a complete
   earlier or later checkpoint (renames within one folder are atomic on POSIX file systems; the
   folder must be shared by the ranks, as DeepSpeed's own multi-rank checkpoints need);
3. on load, :func:`verify` checks every part against the manifest and refuses a checkpoint with a
   missing, extra, resized or changed part, naming the parts.

Pure Python (no lightning, no torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

#: the manifest file inside a checkpoint folder
MANIFEST = "lc_manifest.json"
FORMAT = "lightning_compress.deepspeed_checkpoint"


def partial_path(target: str | os.PathLike, token: str) -> Path:
    """The temporary sibling folder a checkpoint for ``target`` is written into."""
    t = Path(target)
    return t.parent / f".{t.name}.lc-partial-{token}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parts(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: str | os.PathLike, step: int, extra: dict[str, Any] | None = None) -> Path:
    """Write :data:`MANIFEST` into ``folder``: ``{"format", "step", "parts": {relative path: {"bytes",
    "sha256"}}, **extra}`` (written to a temporary file and renamed)."""
    d = Path(folder)
    parts = {rel: {"bytes": (d / rel).stat().st_size, "sha256": _sha256(d / rel)} for rel in _parts(d)}
    manifest = {"format": FORMAT, "step": int(step), **(extra or {}), "parts": parts}
    tmp = d / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, d / MANIFEST)
    return d / MANIFEST


def verify(folder: str | os.PathLike) -> dict[str, Any] | None:
    """Check ``folder`` against its manifest; returns the manifest (None when there is none: a
    checkpoint not written by the strategy, which cannot be checked).

    Raises:
        ValueError: naming the checkpoint and each bad part: the manifest is unreadable, or a part is
            missing, not listed (from another save), of another size, or with another SHA-256 (its
            content is from another step than the manifest's).
    """
    d = Path(folder)
    m = d / MANIFEST
    if not m.is_file():
        return None
    try:
        manifest = json.loads(m.read_text())
        listed: dict[str, dict[str, Any]] = manifest["parts"]
        step = manifest["step"]
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {str(d)!r}: its manifest {MANIFEST} is unreadable ({err}); the checkpoint cannot be trusted.") from err
    present = set(_parts(d))
    problems = []
    for rel in sorted(set(listed) - present):
        problems.append(f"{rel}: missing")
    for rel in sorted(present - set(listed)):
        problems.append(f"{rel}: not written by the save of step {step} (not in the manifest)")
    for rel in sorted(present & set(listed)):
        size = (d / rel).stat().st_size
        if size != listed[rel]["bytes"]:
            problems.append(f"{rel}: {size} bytes, the save of step {step} wrote {listed[rel]['bytes']} (truncated or from another step)")
        elif _sha256(d / rel) != listed[rel]["sha256"]:
            problems.append(f"{rel}: content differs from what the save of step {step} wrote (from another step, or corrupted)")
    if problems:
        raise ValueError(
            f"checkpoint {str(d)!r} is torn: its parts do not all come from the save of step {step}: "
            + "; ".join(problems) + ". Resume from another checkpoint."
        )
    return manifest


def swap_in(partial: str | os.PathLike, target: str | os.PathLike, token: str) -> None:
    """Rename the complete folder ``partial`` to ``target``; an earlier ``target`` is renamed aside
    first and deleted afterwards (put back if the second rename fails)."""
    p, t = Path(partial), Path(target)
    old = t.parent / f".{t.name}.lc-old-{token}"
    had_old = t.exists() or t.is_symlink()
    if had_old:
        os.replace(t, old)
    try:
        os.replace(p, t)
    except BaseException:
        if had_old:
            os.replace(old, t)
        raise
    if had_old:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def discard(partial: str | os.PathLike) -> None:
    """Delete a partial folder (after a failed save); missing is fine."""
    shutil.rmtree(partial, ignore_errors=True)


def discard_stale(target: str | os.PathLike) -> list[str]:
    """Delete the partial / set-aside folders of earlier saves of ``target`` that did not finish
    (a killed process leaves them).  Returns their names."""
    t = Path(target)
    if not t.parent.is_dir():
        return []
    stale = [p for p in t.parent.iterdir() if p.name.startswith((f".{t.name}.lc-partial-", f".{t.name}.lc-old-"))]
    for p in stale:
        discard(p)
    return sorted(p.name for p in stale)


__all__ = ["FORMAT", "MANIFEST", "discard", "discard_stale", "partial_path", "swap_in", "verify", "write_manifest"]
