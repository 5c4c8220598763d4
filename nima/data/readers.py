"""Reading documents out of corpus files, one work unit at a time, streaming.

A *work unit* (:mod:`nima.data.units`) is a file, a byte range of a large text or jsonl file, or a
range of row groups / rows of a table. :func:`read_unit` yields its documents; each document is an
iterator of text blocks, so a long document never has to fit in memory.

Formats, by file name:

- ``.txt``, ``.md``: the file is one document (a byte range of a large file is a part of it).
- ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``: one document per line, text in ``text_field``.
- ``.parquet`` (needs ``pyarrow``): one document per row, text in the ``text_field`` column.
- a folder written by ``datasets.Dataset.save_to_disk`` (needs ``datasets``): one per row.

A bad record (a line that is not JSON, a record without the field, a field that is not text) is a
:class:`~nima.errors.DataError` naming the file and the record, unless the reader is told to skip
bad records: then they are counted in :class:`BadRecords` and reading goes on.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from nima.errors import DataError
from nima.files import one_line

READ_BLOCK_BYTES = 1 << 20
TABLE_BATCH_ROWS = 1024

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
TABLE_SUFFIXES = (".parquet",)
SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + TABLE_SUFFIXES


def file_format(path: Path) -> str | None:
    """``text``, ``jsonl``, ``jsonl.gz``, ``jsonl.zst`` or ``parquet`` from the name, else None."""
    name = path.name.lower()
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    for suffix in (".jsonl.gz", ".jsonl.zst", ".jsonl", ".parquet"):
        if name.endswith(suffix):
            return suffix[1:]
    return None


@dataclass
class BadRecords:
    """Records skipped as bad: how many, and the first one (file, record, why)."""

    count: int = 0
    first: str | None = None

    def add(self, where: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = where

    def merge(self, other: BadRecords) -> None:
        if other.count:
            self.count += other.count
            self.first = self.first or other.first


@dataclass
class Document:
    """A document (or the part of one inside a work unit) as text blocks."""

    blocks: Iterator[str]
    ends: bool = True
    """The document ends here (False for all but the last byte range of a large text file)."""
    where: str = ""
    """File and record, for messages."""


@dataclass
class ReadSpec:
    """How to read one work unit (a plain, picklable description for worker processes)."""

    path: str
    format: str
    start: int = 0
    """Byte offset (text, jsonl), first row group (parquet) or first row (datasets)."""
    stop: int | None = None
    """End of the range (exclusive); None: to the end."""
    ends_document: bool = True
    """For a text file's byte range: the document ends with the range."""
    encoding: str = "utf-8"
    text_field: str = "text"
    skip_bad_records: bool = False
    split: str | None = None
    """For a datasets folder holding several splits: which one."""
    bad: BadRecords = field(default_factory=BadRecords)


def read_unit(spec: ReadSpec) -> Iterator[Document]:
    """The documents of one work unit, in order."""
    if spec.format == "text":
        yield Document(read_text(spec), ends=spec.ends_document, where=spec.path)
    elif spec.format.startswith("jsonl"):
        yield from _jsonl_documents(spec)
    elif spec.format == "parquet":
        yield from _parquet_documents(spec)
    elif spec.format == "datasets":
        yield from _datasets_documents(spec)
    else:  # our own planning went wrong
        raise AssertionError(f"unknown format {spec.format}")


# ------------------------------------------------------------------------------------------ text


def read_text(spec: ReadSpec) -> Iterator[str]:
    """The byte range of a text file, decoded block by block; an error names the byte offset."""
    decoder = codecs.getincrementaldecoder(spec.encoding)(errors="strict")
    position = spec.start
    with _open_file(spec.path) as f:
        f.seek(spec.start)
        while True:
            want = READ_BLOCK_BYTES if spec.stop is None else min(READ_BLOCK_BYTES, spec.stop - position)
            raw = f.read(want) if want > 0 else b""
            held_back = len(decoder.getstate()[0])
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as err:
                raise decode_error(spec.path, spec.encoding, position - held_back + err.start) from None
            except (UnicodeError, ValueError) as err:  # utf-16 / utf-32 without a byte-order mark ...
                raise decode_error(spec.path, spec.encoding, position - held_back, one_line(err)) from None
            position += len(raw)
            if text:
                yield text
            if not raw:
                return


def decode_error(path: str | Path, encoding: str, offset: int, why: str = "") -> DataError:
    hint = (
        "--encoding latin-1"
        if encoding.replace("_", "-").lower() in ("utf-8", "utf8")
        else "--encoding utf-8"
    )
    return DataError(
        f"{path} is not valid {encoding} text at byte offset {max(offset, 0)}{f' ({why})' if why else ''}; "
        f"pass the file's encoding, for example {hint}"
    )


def _open_file(path: str) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None


# ----------------------------------------------------------------------------------------- jsonl


def _jsonl_lines(spec: ReadSpec) -> Iterator[tuple[int, bytes]]:
    """(line number within the unit, raw line) pairs; compressed files are streamed."""
    raw = _open_file(spec.path)
    stream: IO[bytes] = raw
    if spec.format == "jsonl.gz":
        stream = gzip.GzipFile(fileobj=raw)
    elif spec.format == "jsonl.zst":
        stream = _zstd_reader(raw, spec.path)
    try:
        if spec.format == "jsonl":
            raw.seek(spec.start)
        position = spec.start
        reader = io.BufferedReader(stream, READ_BLOCK_BYTES) if stream is not raw else raw
        for number, line in enumerate(reader, start=1):
            yield number, line
            position += len(line)
            if spec.stop is not None and position >= spec.stop:
                return
    except (OSError, EOFError, zlib.error) as err:  # damaged gzip / zstd data
        raise DataError(
            f"{spec.path} is damaged ({one_line(err)}); replace the file or remove it from the corpus"
        ) from None
    except Exception as err:  # zstandard raises its own ZstdError
        if type(err).__name__ == "ZstdError":
            raise DataError(
                f"{spec.path} is damaged ({one_line(err)}); replace the file or remove it from the corpus"
            ) from None
        raise
    finally:
        stream.close()
        raw.close()


def _zstd_reader(raw: IO[bytes], path: str) -> IO[bytes]:
    try:
        import zstandard  # optional: only .jsonl.zst needs it
    except ImportError:
        raise DataError(f"{path}: reading .zst files needs zstandard (pip install 'nima[corpora]')") from None
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


def _jsonl_documents(spec: ReadSpec) -> Iterator[Document]:
    # Line numbers in messages count from the unit's first line; for a whole file, from the top.
    first_line_note = "" if spec.start == 0 else f" (counting from byte {spec.start})"
    for number, raw in _jsonl_lines(spec):
        where = f"{spec.path} line {number}{first_line_note}"
        try:
            line = raw.decode(spec.encoding)
        except UnicodeDecodeError as err:
            text = _bad(spec, f"{where} is not valid {spec.encoding} text ({err.reason}); pass --encoding")
        else:
            if not line.strip():
                continue
            text = _record_text(spec, line, where)
        if text:
            yield Document(iter((text,)), where=where)


def _record_text(spec: ReadSpec, line: str, where: str) -> str | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return _bad(spec, f"{where} is not valid JSON ({err.msg})")
    if not isinstance(record, dict) or spec.text_field not in record:
        keys = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
        return _bad(
            spec,
            f"{where} has no field {spec.text_field!r} (it has: {keys}); "
            "choose the field with --text_field NAME",
        )
    return _text_value(spec, record[spec.text_field], where)


def _text_value(spec: ReadSpec, value: Any, where: str) -> str | None:
    if value is None:
        return None  # an empty record: nothing to learn from, nothing wrong
    if not isinstance(value, str):
        return _bad(spec, f"{where}: field {spec.text_field!r} is a {type(value).__name__}, not text")
    return value


def _bad(spec: ReadSpec, message: str) -> None:
    if not spec.skip_bad_records:
        raise DataError(f"{message} (or pass --skip_bad_records to count and skip such records)")
    spec.bad.add(message)
    return None


# ---------------------------------------------------------------------------------------- tables


def _parquet_documents(spec: ReadSpec) -> Iterator[Document]:
    parquet_file = open_parquet(spec.path, spec.text_field)
    stop = parquet_file.metadata.num_row_groups if spec.stop is None else spec.stop
    groups = list(range(spec.start, stop))
    row = sum(parquet_file.metadata.row_group(g).num_rows for g in range(spec.start))
    try:
        batches = parquet_file.iter_batches(
            batch_size=TABLE_BATCH_ROWS, row_groups=groups, columns=[spec.text_field]
        )
        for batch in batches:
            for value in batch.column(0).to_pylist():
                row += 1
                text = _text_value(spec, value, f"{spec.path} row {row}")
                if text:
                    yield Document(iter((text,)), where=f"{spec.path} row {row}")
    except OSError as err:  # pyarrow's errors derive from OSError / ArrowException
        raise DataError(f"{spec.path} is damaged ({one_line(err)}); replace the file") from None


def open_parquet(path: str, text_field: str) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` whose schema has ``text_field`` (else a DataError)."""
    try:
        import pyarrow.parquet as pq  # optional: only parquet corpora need it
    except ImportError:
        raise DataError(
            f"{path}: reading .parquet files needs pyarrow (pip install 'nima[corpora]')"
        ) from None
    try:
        parquet_file = pq.ParquetFile(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid and friends
        raise DataError(f"{path} is not a readable parquet file ({one_line(err)})") from None
    names = parquet_file.schema_arrow.names
    if text_field not in names:
        raise DataError(
            f"{path} has no column {text_field!r} (it has: {', '.join(names)}); "
            "choose the column with --text_field NAME"
        )
    return parquet_file


def open_saved_dataset(path: str, split: str | None = None) -> Any:
    """A dataset written by ``datasets.Dataset.save_to_disk`` (one split of a DatasetDict)."""
    try:
        import datasets  # optional: only save_to_disk folders need it
    except ImportError:
        raise DataError(
            f"{path} is a Hugging Face datasets folder; reading it needs datasets "
            "(pip install 'nima[corpora]')"
        ) from None
    try:
        loaded = datasets.load_from_disk(path)
    except Exception as err:  # noqa: BLE001 - datasets raises many types for a damaged folder
        raise DataError(f"{path} is not a readable datasets folder ({one_line(err)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        return loaded if split is None else loaded[split]
    return loaded


def _datasets_documents(spec: ReadSpec) -> Iterator[Document]:
    dataset = open_saved_dataset(spec.path, spec.split)
    stop = len(dataset) if spec.stop is None else spec.stop
    for first in range(spec.start, stop, TABLE_BATCH_ROWS):
        values = dataset[first : min(first + TABLE_BATCH_ROWS, stop)][spec.text_field]
        for row, value in enumerate(values, start=first + 1):
            where = f"{spec.path} ({spec.split or 'rows'}) row {row}"
            text = _text_value(spec, value, where)
            if text:
                yield Document(iter((text,)), where=where)
