"""Text sources: ``--dataset`` -> the corpus' files, in a fixed order.

``resolve_source`` accepts a known dataset name (``tiny_shakespeare``: found locally, in the
offline mirror ``$NIMA_DATA_MIRROR``, or downloaded and verified by sha256), a file, a folder
(searched recursively; hidden files skipped) or a glob of the formats :mod:`nima.data.readers`
reads, or a folder written by ``datasets.Dataset.save_to_disk``. Files are sorted by path, so the
corpus' order never depends on the file system.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nima.data.readers import SUFFIXES, file_format
from nima.errors import DataError
from nima.files import atomic_copy, atomic_write, one_line, sha256_file, why_unwritable


@dataclass(frozen=True)
class KnownDataset:
    """A public corpus that Nima knows how to fetch."""

    name: str
    url: str
    sha256: str
    filename: str = "input.txt"


KNOWN_DATASETS: dict[str, KnownDataset] = {
    "tiny_shakespeare": KnownDataset(
        name="tiny_shakespeare",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
}

MIRROR_ENV = "NIMA_DATA_MIRROR"
DOWNLOAD_TIMEOUT_S = 30


@dataclass
class SourceFile:
    """One file of a corpus (or one split of a datasets folder)."""

    path: Path
    format: str
    """text | jsonl | jsonl.gz | jsonl.zst | parquet | datasets"""
    size: int
    mtime_ns: int
    split: str | None = None
    """For a datasets folder with splits: ``train`` or ``val`` (its ``validation`` split)."""
    split_name: str | None = None
    """That split's own name in the folder."""

    @classmethod
    def of(cls, path: Path, file_format: str, **kwargs: str | None) -> SourceFile:
        """The entry for ``path``; a folder (a datasets split) counts all the files in it."""
        stats = [_stat(path)] if not path.is_dir() else [_stat(p) for p in path.rglob("*") if p.is_file()]
        size, mtime = sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
        return cls(path=path, format=file_format, size=size, mtime_ns=mtime, **kwargs)

    def fingerprint(self) -> list:
        """Cheap identity for the reuse check: path, split, size and mtime."""
        return [str(self.path), self.split_name, self.size, self.mtime_ns]


@dataclass
class TextSource:
    """Where a corpus' text comes from: its files in a fixed order, and how to read them.

    ``kind``: "known" (a :data:`KNOWN_DATASETS` entry), "file", "folder", "glob" or "datasets".
    """

    name: str
    kind: str
    files: list[SourceFile]
    location: Path
    encoding: str = "utf-8"
    text_field: str = "text"
    known_sha256: str | None = None

    @property
    def uses_text_field(self) -> bool:
        return any(f.format != "text" for f in self.files)

    def fingerprint(self) -> list[list]:
        return [f.fingerprint() for f in self.files]

    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None


def check_encoding(encoding: str, option: str = "--encoding") -> str:
    """The encoding's name, or a DataError for one that is unknown or not a text encoding (Python
    also knows bytes-to-bytes codecs such as ``hex``, ``zlib`` and ``base64``, and ``rot13``, which
    works on str: none of them decodes a file into text)."""
    try:
        info = codecs.lookup(encoding)
    except (LookupError, TypeError, ValueError):
        raise DataError(
            f"unknown {option} {encoding!r}; use a Python codec name such as utf-8 or latin-1"
        ) from None
    if not getattr(info, "_is_text_encoding", True):
        raise DataError(
            f"{option} {encoding!r} is not a text encoding (it maps bytes to bytes or text to text); "
            "use a text codec such as utf-8 or latin-1"
        )
    return encoding


def resolve_source(
    dataset: str | os.PathLike,
    data_dir: Path,
    encoding: str = "utf-8",
    text_field: str = "text",
    offline: bool = False,
) -> TextSource:
    """Turn ``--dataset`` (a known name, a path or a glob) into a :class:`TextSource`; fetch if needed."""
    check_encoding(encoding)
    spec = str(dataset)
    if not spec.strip():
        raise DataError("--dataset is empty; pass a known name (" + ", ".join(KNOWN_DATASETS) + ") or a path")
    common = {"encoding": encoding, "text_field": text_field}
    if spec in KNOWN_DATASETS:
        known = KNOWN_DATASETS[spec]
        path = fetch_known_dataset(known, data_dir, offline=offline)
        file = SourceFile.of(path, "text")
        return TextSource(known.name, "known", [file], path, known_sha256=known.sha256, **common)
    if glob.has_magic(spec):
        return _glob_source(spec, common)
    path = Path(spec).expanduser()
    if not path.exists():
        if os.sep in spec or "/" in spec or path.suffix:
            raise DataError(f"--dataset {spec}: no such file or folder")
        raise DataError(
            f"unknown dataset {spec!r}; known datasets: {', '.join(KNOWN_DATASETS)} "
            f"(or pass a file, a folder or a glob of {', '.join(SUFFIXES)} files)"
        )
    path = path.resolve()
    name = _name(path)
    if path.is_dir():
        if is_saved_dataset(path):
            return TextSource(name, "datasets", _dataset_splits(path), path, **common)
        files = _corpus_files(sorted(p for p in path.rglob("*") if not _hidden(p.relative_to(path))))
        if not files:
            raise DataError(f"--dataset {path}: the folder has no {', '.join(SUFFIXES)} files")
        _check_not_all_empty(files, f"--dataset {path}: every file in the folder is empty")
        return TextSource(name, "folder", files, path, **common)
    if not path.is_file():
        raise DataError(f"--dataset {path} is neither a file nor a folder")
    if path.stat().st_size == 0:
        raise DataError(f"--dataset {path} is empty; give a file with some text in it")
    return TextSource(name, "file", [SourceFile.of(path, file_format(path) or "text")], path, **common)


def _name(path: Path) -> str:
    name = path.name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    if name in KNOWN_DATASETS:
        name += "-local"  # never mix a user's file with the known corpus' folder
    return name


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _corpus_files(paths: list[Path]) -> list[SourceFile]:
    return [SourceFile.of(p, fmt) for p in paths if p.is_file() and (fmt := file_format(p)) is not None]


def _check_not_all_empty(files: list[SourceFile], message: str) -> None:
    if all(f.size == 0 for f in files):
        raise DataError(message)


def _glob_source(pattern: str, common: dict[str, str]) -> TextSource:
    matched = sorted(Path(p).resolve() for p in glob.glob(os.path.expanduser(pattern), recursive=True))
    files = _corpus_files(matched)
    if not files:
        raise DataError(f"--dataset {pattern!r} matches no {', '.join(SUFFIXES)} files")
    _check_not_all_empty(files, f"--dataset {pattern!r}: every file it matches is empty")
    root = Path(os.path.commonpath([f.path.parent for f in files]))
    return TextSource(_name(root), "glob", files, root, **common)


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``datasets``' ``save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


VALIDATION_SPLITS = ("validation", "valid", "val")


def _dataset_splits(path: Path) -> list[SourceFile]:
    """A datasets folder as source entries: the whole dataset, or its train and validation splits."""
    dict_file = path / "dataset_dict.json"
    if not dict_file.is_file():
        return [SourceFile.of(path, "datasets")]
    try:
        splits = json.loads(dict_file.read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{dict_file} is damaged ({one_line(err)})") from None
    if "train" not in splits:
        raise DataError(f"{path} has no train split (it has: {', '.join(map(str, splits))})")
    entries = [SourceFile.of(path / "train", "datasets", split="train", split_name="train")]
    entries[0].path = path
    for name in VALIDATION_SPLITS:
        if name in splits:
            val = SourceFile.of(path / name, "datasets", split="val", split_name=name)
            val.path = path
            entries.append(val)
            break
    return entries


def fetch_known_dataset(known: KnownDataset, data_dir: Path, offline: bool = False) -> Path:
    """``<data_dir>/<name>/input.txt`` with the right sha256: local, from the mirror, or downloaded."""
    target = Path(data_dir) / known.name / known.filename
    if target.is_file() and sha256_file(target) == known.sha256:
        return target
    why = why_unwritable(target.parent)  # before copying or downloading anything
    if why is not None:
        raise DataError(f"cannot write {known.name} under {target.parent}: {why}; choose another --data_dir")
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        candidate = Path(mirror) / known.name / known.filename
        if candidate.is_file() and sha256_file(candidate) == known.sha256:
            try:
                atomic_copy(candidate, target)
            except OSError as err:
                raise DataError(f"cannot copy {candidate} to {target}: {one_line(err)}") from None
            return target
    where = f"put the file at {target}" + (f" (or in {MIRROR_ENV}={mirror})" if mirror else "")
    if offline:
        raise DataError(f"{known.name} is not available offline; {where}")
    try:
        _download(known, target)
    except OSError as err:
        raise DataError(
            f"{known.name} is not in {target.parent} and the download from {known.url} "
            f"failed ({_reason(err)}); "
            f"download it yourself and {where}, or set {MIRROR_ENV} to a folder that holds "
            f"{known.name}/{known.filename}"
        ) from None
    return target


def _reason(err: OSError) -> str:
    reason = getattr(err, "reason", None) or err.strerror or str(err) or type(err).__name__
    return str(reason).replace("\n", " ")


def _download(known: KnownDataset, target: Path) -> None:
    def fetch_verified(out) -> None:
        digest = hashlib.sha256()
        with urllib.request.urlopen(known.url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            while block := resp.read(1 << 16):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != known.sha256:
            raise OSError(
                f"downloaded file has sha256 {digest.hexdigest()[:12]}..., expected {known.sha256[:12]}..."
            )

    atomic_write(target, fetch_verified)
