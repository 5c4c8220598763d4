"""Atomic file writes, hashing, and the two checks every command makes on the files it is given.

Reading: :func:`reading` turns whatever a parser raises on a user's file (a checkpoint, config,
tokenizer, Hugging Face folder, corpus) into one :class:`~nima.errors.NimaError` line naming the
file. Writing: :func:`check_writable` finds, before any work, an output path that cannot be
created.

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
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from nima.errors import ConfigError, NimaError

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


# ---------------------------------------------------------------------------------- user files

MESSAGE_CHARS = 300
"""How much of a parser's own message an error line keeps."""


def one_line(err: BaseException | str, limit: int = MESSAGE_CHARS) -> str:
    """An exception's text on one line: terminal escapes removed, lines joined, at most ``limit``
    characters, cut at a word (with "...") rather than mid-word; the type's name when it says
    nothing."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if isinstance(err, LookupError) or (isinstance(err, BaseException) and not text):
        text = f"{type(err).__name__} {text}".strip()  # KeyError's text is the key alone: say what it is
    if len(text) > limit:
        text = text[: limit - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return text


@contextmanager
def reading(path: str | Path, what: str, error: type[NimaError], fix: str = "") -> Iterator[None]:
    """Parse user file ``path`` inside this block: any exception but a NimaError becomes one
    ``error`` line, ``<path> is not a readable <what>: <why>; <fix>``.

    Parsers fed arbitrary bytes raise anything (KeyError, struct.error, UnicodeError, a Rust
    panic's text ...): the file is the user's, so what it says is the user's to fix, never a
    traceback. Only for reading: our own bugs elsewhere still surface.
    """
    try:
        yield
    except NimaError:
        raise
    except Exception as err:  # see the docstring: any parser error on user bytes
        tail = f"; {fix}" if fix else ""
        raise error(f"{path} is not a readable {what}: {one_line(err)}{tail}") from None


def why_unwritable(path: str | Path, folder: bool = True) -> str | None:
    """Why ``path`` (a folder to create or fill, or with ``folder=False`` a file to write) cannot
    be written, or None when it can.

    Nothing is created: the nearest existing folder on the way must be a folder this process can
    create entries in (tried with a temporary folder, removed at once: permission bits do not
    stop root, a read-only file system does).
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        return "it is a file, not a folder"
    if not folder and path.is_dir():
        return "it is a folder, not a file"
    existing = path if folder else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".nima-write-check-", dir=existing))
    except OSError as err:
        return f"{existing}: {err.strerror or err}"
    return None


def check_writable(
    path: str | Path, option: str, folder: bool = True, error: type[NimaError] = ConfigError
) -> Path:
    """Before any work: ``error`` naming ``option`` (``--out``) unless ``path`` can be written
    (see :func:`why_unwritable`)."""
    why = why_unwritable(path, folder)
    if why is not None:
        kind = "folder" if folder else "file"
        raise error(f"{option} {path} cannot be written: {why}; choose a writable {kind} with {option}")
    return Path(path)
