"""Planning a preparation: the corpus' files -> numbered work units, and which split each goes to.

Units are what worker processes encode, one at a time. They depend only on the files and the
settings, never on the number of workers, so the prepared bytes do not either:

- a text or plain jsonl file larger than ``UNIT_BYTES`` is cut into byte ranges: jsonl after a
  line break; text only where GPT-2's pre-tokenizer cuts anyway (an ASCII non-space character,
  then ASCII whitespace, see :mod:`nima.data.chunking`), so the ranges encode to exactly the ids
  of the whole text. Encodings where ASCII is not itself (UTF-16, UTF-32) are never cut;
- a compressed jsonl file is one unit (a stream cannot be entered in the middle);
- a parquet file gives one unit per run of row groups of about ``UNIT_BYTES``; a datasets folder
  one unit per ``UNIT_ROWS`` rows.

The validation split takes whole documents (:func:`val_side`):

- ``val_files`` (a glob): those files are the validation split;
- a corpus of text files (each one document): the ``ceil(val_fraction * files)`` files whose
  path hashes lowest (at least one, and never all); in a corpus that also has records, each text
  file whose path hashes below ``val_fraction``;
- documents in records (jsonl, parquet, datasets): each document whose text hashes below
  ``val_fraction`` (so a duplicated document always lands on the same side);
- a corpus that is one document: its text is cut at a line break, the last ``val_fraction`` of it
  is the validation split (as nanoGPT does).
"""

from __future__ import annotations

import codecs
import fnmatch
import hashlib
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from nima.data.readers import ReadSpec, open_parquet, open_saved_dataset, read_text
from nima.data.sources import SourceFile, TextSource
from nima.errors import DataError

UNIT_BYTES = 32 << 20
"""About this much source text per work unit: enough units to keep every core busy on a corpus
of a few hundred MB, few enough that per-unit costs vanish."""
UNIT_ROWS = 50_000
SEEK_BYTES = 1 << 20
"""How far past a nominal cut to look for a safe one (text) or a line break (jsonl)."""

_SAFE_TEXT_CUT = re.compile(rb"[\x21-\x7e][ \t\n\r\f\v]")


@dataclass
class Unit:
    """One piece of work: what to read, and where its documents go."""

    index: int
    read: ReadSpec
    bytes: int
    """Source bytes it covers (for progress and throughput)."""
    side: str | None = None
    """``train`` or ``val`` for every document of the unit; None: decided per document."""
    val_from_char: int | None = None
    """One-document corpus in one unit: the text from this character on is validation."""


@dataclass
class Plan:
    units: list[Unit]
    single_document: bool
    """The corpus is one document (one text file): split by position, no end-of-text needed."""
    notes: list[str] = field(default_factory=list)


def plan_units(
    source: TextSource,
    *,
    val_fraction: float,
    val_files: str | None = None,
    skip_bad_records: bool = False,
) -> Plan:
    """Number the corpus' work units, each with its split (see the module docstring)."""
    base = ReadSpec(
        path="",
        format="text",
        encoding=source.encoding,
        text_field=source.text_field,
        skip_bad_records=skip_bad_records,
    )
    files = source.files
    single = len(files) == 1 and files[0].format == "text" and val_files is None
    val_paths = _val_files(source, val_fraction, val_files)
    root = source.location if source.location.is_dir() else source.location.parent
    units: list[Unit] = []
    for file in files:
        if val_paths is not None:
            side = "val" if _key(file) in val_paths else "train"
        elif file.format == "text":  # a whole document: all its byte ranges on one side
            side = "train" if single else val_side(_relative(file.path, root), val_fraction)
        else:
            side = None  # records: each by the hash of its text
        for read, size in _ranges(
            file, replace(base, path=str(file.path), format=file.format, split=file.split_name)
        ):
            units.append(Unit(index=len(units), read=read, bytes=size, side=side))
    if single:
        _cut_one_document(units, val_fraction, source.encoding)
    return Plan(units=units, single_document=single)


def part_of(units: list[Unit], part: tuple[int, int]) -> list[Unit]:
    """Part ``K`` of ``N`` (``part=(K, N)``, K from 1): a contiguous run of the units."""
    k, n = part
    first, last = len(units) * (k - 1) // n, len(units) * k // n
    return units[first:last]


def val_side(text: str, val_fraction: float) -> str:
    """``val`` for a document whose text hashes below ``val_fraction``, else ``train``."""
    digest = hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=8).digest()
    return "val" if int.from_bytes(digest, "little") < val_fraction * 2.0**64 else "train"


# ------------------------------------------------------------------------------------ val files


def _key(file: SourceFile) -> tuple[Path, str | None]:
    return file.path, file.split_name


def _val_files(source: TextSource, val_fraction: float, val_files: str | None) -> set[tuple] | None:
    """The files that are validation, or None when documents are assigned one by one."""
    root = source.location if source.location.is_dir() else source.location.parent
    if val_files is not None:
        chosen = {
            _key(f)
            for f in source.files
            if fnmatch.fnmatch(_relative(f.path, root), val_files) or f.split == "val"
        }
        if not chosen:
            raise DataError(f"--val_files {val_files!r} matches none of the corpus' files (under {root})")
        if len(chosen) == len(source.files):
            raise DataError(f"--val_files {val_files!r} matches every file: nothing is left to train on")
        return chosen
    if any(f.split is not None for f in source.files):  # a datasets folder with its own splits
        return {_key(f) for f in source.files if f.split == "val"}
    if len(source.files) < 2 or any(f.format != "text" for f in source.files):
        return None
    count = min(len(source.files) - 1, max(1, math.ceil(val_fraction * len(source.files))))
    ranked = sorted(source.files, key=lambda f: hashlib.sha256(_relative(f.path, root).encode()).digest())
    return {_key(f) for f in ranked[:count]}


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


# --------------------------------------------------------------------------------------- ranges


def _ranges(file: SourceFile, read: ReadSpec) -> list[tuple[ReadSpec, int]]:
    """The file's units as (read spec, source bytes)."""
    if file.format == "parquet":
        return _row_group_ranges(file, read)
    if file.format == "datasets":
        dataset = open_saved_dataset(str(file.path), file.split_name)
        rows = len(dataset)
        per_row = file.size / max(rows, 1)
        return [
            (
                replace(read, start=a, stop=min(a + UNIT_ROWS, rows)),
                int(per_row * (min(a + UNIT_ROWS, rows) - a)),
            )
            for a in range(0, rows, UNIT_ROWS)
        ]
    cuttable = file.format in ("text", "jsonl") and _ascii_compatible(read.encoding)
    if not cuttable or file.size <= UNIT_BYTES:
        return [(read, file.size)]
    cuts = [0]
    with open(file.path, "rb") as f:
        nominal = UNIT_BYTES
        while nominal < file.size:
            cut = _find_cut(f, nominal, file.format)
            if cut is not None and cut > cuts[-1]:
                cuts.append(cut)
            nominal = max(nominal, cuts[-1]) + UNIT_BYTES
    cuts.append(file.size)
    ranges = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        last = i == len(cuts) - 2
        ranges.append((replace(read, start=a, stop=b, ends_document=last or file.format != "text"), b - a))
    return ranges


def _find_cut(f, nominal: int, file_format: str) -> int | None:
    """A safe cut at or after byte ``nominal`` (within ``SEEK_BYTES``), or None."""
    f.seek(nominal)
    window = f.read(SEEK_BYTES)
    if file_format == "jsonl":
        newline = window.find(b"\n")
        return None if newline < 0 else nominal + newline + 1
    match = _SAFE_TEXT_CUT.search(window)
    return None if match is None else nominal + match.start() + 1


def _ascii_compatible(encoding: str) -> bool:
    """Whether ASCII text is its own bytes in this encoding (so a newline byte is a newline)."""
    try:
        probe = "\n\t x~"
        return codecs.encode(probe, encoding) == probe.encode("ascii")
    except (UnicodeError, LookupError):
        return False


def _row_group_ranges(file: SourceFile, read: ReadSpec) -> list[tuple[ReadSpec, int]]:
    metadata = open_parquet(str(file.path), read.text_field).metadata
    ranges, first, size = [], 0, 0
    for group in range(metadata.num_row_groups):
        size += metadata.row_group(group).total_byte_size
        if size >= UNIT_BYTES or group == metadata.num_row_groups - 1:
            ranges.append((replace(read, start=first, stop=group + 1), size))
            first, size = group + 1, 0
    return ranges or [(read, file.size)]


# --------------------------------------------------------------------------------- one document


def _cut_one_document(units: list[Unit], val_fraction: float, encoding: str) -> None:
    """Split a one-document corpus: the last ``val_fraction`` of its text is validation.

    In one unit, the cut is found by characters, just after the first line break past the
    nominal point when one is within half the validation text (in ``val_from_char``). A text cut
    into several byte ranges is split between ranges instead, at the range boundary nearest the
    nominal point (whole ranges are validation)."""
    if len(units) == 1:
        units[0].val_from_char = _char_cut(units[0].read, val_fraction)
        return
    total = sum(u.bytes for u in units)
    train_bytes = total * (1.0 - val_fraction)
    seen, best = 0, None
    for i, unit in enumerate(units[:-1]):
        seen += unit.bytes
        if best is None or abs(seen - train_bytes) < abs(best[1] - train_bytes):
            best = (i, seen)
    assert best is not None
    for unit in units[best[0] + 1 :]:
        unit.side = "val"


def _char_cut(read: ReadSpec, val_fraction: float) -> int:
    """The character where validation starts in a one-unit, one-document corpus."""
    chars = sum(len(block) for block in read_text(read))
    if chars == 0:
        raise DataError(f"--dataset {read.path} contains no text")
    train_chars = int(chars * (1.0 - val_fraction))
    if train_chars < 1 or train_chars >= chars:
        raise DataError(
            f"--dataset {read.path} has only {chars} characters: too few to split into train and val "
            f"with --val_fraction {val_fraction}"
        )
    window = max(1, (chars - train_chars) // 2)
    seen = 0
    for block in read_text(read):
        if seen + len(block) >= train_chars:
            local = train_chars - seen
            newline = block.find("\n", local - 1, local - 1 + window)
            return seen + (newline + 1 if newline >= 0 else local)
        seen += len(block)
    return train_chars
