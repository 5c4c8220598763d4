"""Text sources: a dataset name or path -> documents, read as a stream of text blocks.

``resolve_source`` accepts a known dataset name (``tiny_shakespeare``: found locally, in the
offline mirror ``$NIMA_DATA_MIRROR``, or downloaded and verified by sha256), a text file, a folder
of ``.txt`` files (one document per file) or a ``.jsonl`` file (one document per line, text in
``text_field``). Reading is streamed in blocks, so memory never grows with the corpus.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nima.errors import DataError
from nima.files import atomic_copy, atomic_write, one_line, sha256_file, why_unwritable

READ_BLOCK_BYTES = 1 << 20


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
class TextSource:
    """Where a corpus' text comes from and how to read it.

    ``kind``: "known" (a :data:`KNOWN_DATASETS` entry), "file", "folder" or "jsonl". ``files``
    are read in order; each file is one document, except for jsonl where each line is one.
    """

    name: str
    kind: str
    files: list[Path]
    location: Path
    encoding: str = "utf-8"
    text_field: str = "text"
    known_sha256: str | None = None
    _root: Path | None = field(default=None, repr=False)

    @property
    def multi_document(self) -> bool:
        """Whether documents must be separated (an end-of-text token between them)."""
        return self.kind in ("folder", "jsonl")

    def fingerprint(self) -> list[list]:
        """Cheap identity of the source files: (path, size, mtime) each, for the reuse check."""
        rows = []
        for path in self.files:
            st = path.stat()
            rows.append([str(path), st.st_size, st.st_mtime_ns])
        return rows

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def documents(self, hasher=None) -> Iterator[Iterator[str]]:
        """Each document as an iterator of text blocks; ``hasher`` (hashlib) sees every raw byte."""
        for path in self.files:
            if self.kind == "jsonl":
                yield from _jsonl_documents(path, self.encoding, self.text_field, hasher)
            else:
                if hasher is not None and len(self.files) > 1:
                    # Folders: the file name is part of the identity, not only the bytes.
                    hasher.update(str(path.relative_to(self._root or path.parent)).encode() + b"\0")
                yield read_text_blocks(path, self.encoding, hasher)


def read_text_blocks(
    path: Path, encoding: str = "utf-8", hasher=None, block_bytes: int = READ_BLOCK_BYTES
) -> Iterator[str]:
    """Decode ``path`` block by block; a decoding error names the file and the byte offset."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    position = 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(block_bytes)
            if hasher is not None and raw:
                hasher.update(raw)
            held_back = len(decoder.getstate()[0])
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as err:
                raise _decode_error(path, encoding, position - held_back + err.start) from None
            except (UnicodeError, ValueError) as err:  # utf-16 / utf-32 without a byte-order mark ...
                raise _decode_error(path, encoding, position - held_back, one_line(err)) from None
            position += len(raw)
            if text:
                yield text
            if not raw:
                return


def _decode_error(path: Path, encoding: str, offset: int, why: str = "") -> DataError:
    hint = (
        "--encoding latin-1"
        if encoding.replace("_", "-").lower() in ("utf-8", "utf8")
        else "--encoding utf-8"
    )
    return DataError(
        f"{path} is not valid {encoding} text at byte offset {max(offset, 0)}{f' ({why})' if why else ''}; "
        f"pass the file's encoding, for example {hint}"
    )


def _jsonl_documents(path: Path, encoding: str, text_field: str, hasher) -> Iterator[Iterator[str]]:
    position = 0
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            if hasher is not None:
                hasher.update(raw)
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as err:
                raise _decode_error(path, encoding, position + err.start) from None
            except (UnicodeError, ValueError) as err:
                raise _decode_error(path, encoding, position, one_line(err)) from None
            position += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path} line {line_number} is not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                keys = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
                raise DataError(
                    f"{path} line {line_number} has no field {text_field!r} (it has: {keys}); "
                    "choose the field with --text_field NAME"
                )
            text = record[text_field]
            if not isinstance(text, str):
                raise DataError(
                    f"{path} line {line_number}: field {text_field!r} is a {type(text).__name__}, not text"
                )
            if text:
                yield iter((text,))


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
    """Turn ``--dataset`` (a known name or a path) into a :class:`TextSource`; fetch if needed."""
    check_encoding(encoding)
    spec = str(dataset)
    if not spec.strip():
        raise DataError("--dataset is empty; pass a known name (" + ", ".join(KNOWN_DATASETS) + ") or a path")
    if spec in KNOWN_DATASETS:
        known = KNOWN_DATASETS[spec]
        path = fetch_known_dataset(known, data_dir, offline=offline)
        return TextSource(
            name=known.name,
            kind="known",
            files=[path],
            location=path,
            encoding=encoding,
            known_sha256=known.sha256,
        )
    path = Path(spec).expanduser()
    if not path.exists():
        if os.sep in spec or "/" in spec or path.suffix:
            raise DataError(f"--dataset {spec}: no such file or folder")
        raise DataError(
            f"unknown dataset {spec!r}; known datasets: {', '.join(KNOWN_DATASETS)} "
            "(or pass a path to a .txt file, a folder of .txt files, or a .jsonl file)"
        )
    path = path.resolve()
    name = path.stem if path.is_file() else path.name
    if name in KNOWN_DATASETS:
        name += "-local"  # never mix a user's file with the known corpus' folder
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"--dataset {path}: the folder has no .txt files")
        if all(p.stat().st_size == 0 for p in files):
            raise DataError(f"--dataset {path}: every .txt file in the folder is empty")
        return TextSource(name=name, kind="folder", files=files, location=path, encoding=encoding, _root=path)
    if not path.is_file():
        raise DataError(f"--dataset {path} is neither a file nor a folder")
    if path.stat().st_size == 0:
        raise DataError(f"--dataset {path} is empty; give a file with some text in it")
    kind = "jsonl" if path.suffix.lower() == ".jsonl" else "file"
    return TextSource(
        name=name, kind=kind, files=[path], location=path, encoding=encoding, text_field=text_field
    )


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
