"""Where a preparation's result lives: reuse of an earlier result, the atomic install, leftovers.

A result folder is reused when its ``meta.json`` records the same settings and the same source
files (size and mtime; when only mtimes changed, the files' sha256). A new result is installed by
renaming its finished temporary folder into place, so an earlier result is replaced only by a
complete one. Temporary folders of killed preparations are removed once they are a day old.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nima.data.prepared import PreparedData, load_prepared, tokenizer_tag
from nima.data.sources import SourceFile, TextSource
from nima.errors import DataError
from nima.files import atomic_write_json, sha256_file


def file_sha256(file: SourceFile) -> str:
    if not file.path.is_dir():
        return sha256_file(file.path)
    hasher = hashlib.sha256()
    for path in sorted(p for p in file.path.rglob("*") if p.is_file()):
        hasher.update(str(path.relative_to(file.path)).encode() + b"\0" + sha256_file(path).encode())
    return hasher.hexdigest()


def combined_sha256(files: list[SourceFile], hashes: list[str]) -> str:
    """One file: its sha256; several: the sha256 of their names and sha256s, in order."""
    if len(files) == 1:
        return hashes[0]
    root = os.path.commonpath([str(f.path) for f in files])
    hasher = hashlib.sha256()
    for file, digest in zip(files, hashes, strict=True):
        hasher.update(os.path.relpath(file.path, root).encode() + b"\0" + digest.encode())
    return hasher.hexdigest()


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those above it that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; one that holds anything (another writer's) stays
        try:
            folder.rmdir()
        except OSError:
            return


def true_bpe_name(out: Path, meta: dict[str, Any], settings: dict[str, Any]) -> Path:
    """The folder a BPE result goes to: ``bpe-<the size it has>``. A corpus too small for the
    vocabulary asked gives fewer ids than asked; the folder is named after what it holds (the
    asked size stays in ``meta.json``'s settings, which is how it is found again)."""
    asked, got = settings["vocab_size"], meta["vocab_size"]
    if settings["tokenizer"] != "bpe" or got == asked:
        return out
    print(
        f"note: the corpus gave {got} BPE ids, fewer than the {asked} asked (too little text for "
        f"more merges); prepared as {tokenizer_tag('bpe', got)}",
        file=sys.stderr,
    )
    return out.parent / tokenizer_tag("bpe", got)


def reuse_smaller_bpe(out: Path, source: TextSource, settings: dict[str, Any]) -> PreparedData | None:
    """An earlier BPE result for these settings that came out smaller than asked (see
    :func:`true_bpe_name`): ``bpe-<N>`` beside ``out`` with N below the size asked."""
    if settings["tokenizer"] != "bpe" or not out.parent.is_dir():
        return None
    for folder in sorted(out.parent.glob("bpe-*")):
        size = folder.name[len("bpe-") :]
        if size.isdigit() and int(size) < settings["vocab_size"]:
            found = reuse(folder, source, settings)
            if found is not None:
                return found
    return None


def reuse(out: Path, source: TextSource, settings: dict[str, Any]) -> PreparedData | None:
    """The existing result at ``out`` if it was made from the same source with the same settings."""
    if not (out / "meta.json").is_file():
        return None
    try:
        data = load_prepared(out)
    except DataError:
        return None  # damaged: prepare anew (atomically replacing it)
    meta = data.meta
    if meta.get("settings") != settings or meta["source"].get("location") != str(source.location):
        return None
    fingerprint = source.fingerprint()
    if meta["source"].get("fingerprint") == fingerprint:
        return data
    # Touched but maybe unchanged (copied, checked out again): compare contents.
    if meta["source"].get("bytes") != source.total_bytes():
        return None
    if source_sha256(source) != meta["source"].get("sha256"):
        return None
    meta["source"]["fingerprint"] = fingerprint
    atomic_write_json(out / "meta.json", meta)
    return data


def source_sha256(source: TextSource) -> str:
    if source.known_sha256:
        return source.known_sha256  # verified when it was fetched
    return combined_sha256(source.files, [file_sha256(f) for f in source.files])


STALE_AFTER_S = 24 * 3600


def remove_stale_temporaries(out: Path) -> None:
    """Delete temporary folders left by preparations that were killed (older than a day)."""
    now = time.time()
    for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*"):
        for folder in out.parent.glob(pattern):
            try:
                if now - folder.stat().st_mtime > STALE_AFTER_S:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass  # another process removed it


def install(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an existing result is replaced only after success."""
    try:
        os.rename(tmp, out)
        return
    except OSError:
        if not out.exists():
            raise
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if not out.exists():
            os.rename(old, out)  # put the previous result back
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process installed the same result first
    shutil.rmtree(old, ignore_errors=True)
