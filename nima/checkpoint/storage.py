"""Checkpoint files on disk: the atomic write, the ``step_N.pt`` family, pruning, leftovers.

A checkpoint is written to a temporary file in its folder and renamed over its name (see
:func:`nima.files.atomic_write`), so a crash never leaves a half-written checkpoint under a
final name. The temporary file's name carries the writer's host and process id, so that the next
run can delete what a killed writer left behind (:func:`remove_partial_checkpoints`) without
touching a live write.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import torch

from nima.files import atomic_write

# Temporary checkpoint files (".<name>.<host>-<pid>.<random>.tmp", see nima.files) older than
# this are removed whoever wrote them: no save takes a day.
PARTIAL_STALE_AFTER_S = 24 * 3600


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temporary file, fsync, rename, folder fsync)."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def step_checkpoints(folder: Path, prefix: str) -> list[Path]:
    """``<prefix>_N.pt`` files in ``folder``, oldest (smallest N) first."""
    found = []
    for p in folder.glob(f"{prefix}_*.pt"):
        m = re.fullmatch(rf"{prefix}_(\d+)\.pt", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _local_writer_is_gone(tmp_name: str) -> bool:
    """Whether the temporary file was written on this host by a process that no longer exists."""
    match = re.fullmatch(rf"\..+\.{re.escape(socket.gethostname())}-(\d+)\.\w+\.tmp", tmp_name)
    if match is None:
        return False  # another node's (or an older format's): only its age can tell
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists, run by another user
    return False


def remove_partial_checkpoints(
    folder: str | Path, stale_after_s: float = PARTIAL_STALE_AFTER_S
) -> list[Path]:
    """Delete the temporary files that writers killed mid-save left in ``folder``; returns them.

    A file goes when its writer (host and pid in its name) no longer runs on this host, or when
    it is older than ``stale_after_s`` (a writer on another node); a write in progress stays.
    """
    folder = Path(folder)
    removed = []
    now = time.time()
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
        try:
            if _local_writer_is_gone(tmp.name) or now - tmp.stat().st_mtime > stale_after_s:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            pass  # its writer finished or removed it meanwhile
    return removed


def newest_checkpoint(output_dir: str | Path) -> Path | None:
    """The most recently written ``step_N.pt`` or ``epoch_N.pt`` under ``output_dir/checkpoints``."""
    folder = Path(output_dir) / "checkpoints"
    found = [*step_checkpoints(folder, "step"), *step_checkpoints(folder, "epoch")]
    return max(found, key=lambda p: p.stat().st_mtime_ns, default=None)


def prune_checkpoints(folder: Path, prefix: str, keep: int | None, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` ``<prefix>_N.pt`` files; returns what was removed."""
    if keep is None:
        return []
    files = step_checkpoints(folder, prefix)
    removed = []
    for p in files[: max(0, len(files) - keep)]:
        if protect is not None and p.resolve() == protect.resolve():
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed
