"""Atomic file writes and hashing: nothing good on disk is ever half-replaced.

Every file Nima writes for keeps (checkpoints, prepared data, tokenizers, metrics summaries)
goes through :func:`atomic_write`: a temporary file beside the target, flushed and fsynced,
renamed over the target, and the folder fsynced so the rename survives a power cut. The
temporary file's name carries the writer's host and process id, so that a later run can tell
what a killed writer left behind from a write still in progress (see
:func:`nima.checkpoint.remove_partial_checkpoints`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

HASH_BLOCK = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_public(path: Path, directory: bool = False) -> None:
    """Give a temporary file or folder (created private by ``tempfile``) the usual permissions."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def temporary_name_prefix(path: Path) -> str:
    """``.<name>.<host>-<pid>.``: how this process names its temporary files beside ``path``."""
    return f".{path.name}.{socket.gethostname()}-{os.getpid()}."


def fsync_folder(folder: Path) -> None:
    """Make renames in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it over ``path``.

    The target is either the old file or the whole new one, never a part; a failed ``write`` (or a
    full disk) leaves the old file as it was and removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temporary_name_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        make_public(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """:func:`atomic_write` of an indented JSON document."""
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def atomic_copy(source: str | Path, target: str | Path) -> Path:
    """Copy ``source`` to ``target`` atomically."""
    with open(source, "rb") as src:
        return atomic_write(target, lambda handle: shutil.copyfileobj(src, handle, HASH_BLOCK))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
