"""Preparation: a text source -> tokenizer + ``train.bin`` / ``val.bin`` token streams + ``meta.json``.

Output folder: ``<data_dir>/<dataset>/<tokenizer_tag>/`` (tag ``char``, ``byte`` or ``bpe-<N>``).
``train.bin`` / ``val.bin`` are flat little-endian ``uint16`` arrays (``uint32`` when the vocabulary
has more than 65536 ids), readable with ``numpy.memmap``.

How it works, and why:

- Streaming: the text is read in 1 MiB blocks and encoded block by block, so memory stays flat
  however large the corpus is. Two passes: a scan (size, hash, the char alphabet) then the encode
  (BPE adds one pass to train on the training split).
- The split is by position, as in nanoGPT: the first ``1 - val_fraction`` of the text is
  ``train``, the rest ``val``, cut at the first line break after that point (when one is near).
- Documents (files of a folder, lines of a jsonl) are separated by the end-of-text token, when the
  tokenizer has one; one text file is one document.
- BPE text is cut only where GPT-2's pre-tokenizer cuts anyway, so encoding piece by piece gives
  exactly the ids of encoding the whole text, and pieces are encoded on all cores
  (:mod:`nima.data.stream_encoders`). With ``tiktoken`` installed, BPE ids of corpora from 4 Mi
  characters on come from tiktoken built from the trained vocabulary (about 3x faster), checked
  against ``tokenizers`` on a sample of the corpus; on any difference the encoding starts again
  with ``tokenizers`` (one line says so).
  ``meta.json``'s ``encoder`` records which one made the ids.
- Safe on disk: everything is written into a temporary folder beside the target and renamed into
  place at the end; a failure removes the temporary folder and leaves any existing result intact.
- Reuse: a folder whose ``meta.json`` records the same settings and the same source (size and
  mtime, else sha256) is returned as is.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nima.data.chunking import iter_pieces
from nima.data.fast_bpe import FastBPE, FastBPEUnavailable, tiktoken_installed
from nima.data.sources import TextSource, resolve_source
from nima.data.stream_encoders import (
    FastPathMismatch,
    HFBPEStreamEncoder,
    StreamEncoder,
    encode_in_order,
    make_stream_encoder,
)
from nima.data.tokenizer import (
    BYTE_LEVEL,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    check_bpe_vocab_size,
    load_tokenizer,
)
from nima.errors import DataError
from nima.files import atomic_write_json, make_public

PREPARED_FORMAT = "nima-prepared-v1"
TOKENIZER_KINDS = ("char", "byte", "bpe")
DATA_DIR_ENV = "NIMA_DATA_DIR"
DEFAULT_DATA_DIR = Path("experiments") / "data"


def default_data_dir() -> Path:
    """``$NIMA_DATA_DIR`` if set, else ``experiments/data`` (relative to the working directory)."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else DEFAULT_DATA_DIR


def tokenizer_tag(tokenizer: str, vocab_size: int | None = None) -> str:
    """Folder name of a prepared dataset: ``char``, ``byte`` or ``bpe-<vocab_size>``."""
    return f"bpe-{vocab_size}" if tokenizer == "bpe" else tokenizer


def given_tokenizer(tokenizer: str | os.PathLike) -> Tokenizer | None:
    """The tokenizer saved at ``tokenizer`` (a tokenizer.json, or a folder holding one), or None
    when ``tokenizer`` names a kind (char, byte, bpe) instead."""
    if str(tokenizer) in TOKENIZER_KINDS:
        return None
    path = Path(tokenizer).expanduser()
    if not (path.is_file() or (path / "tokenizer.json").is_file()):
        raise DataError(
            f"unknown tokenizer {str(tokenizer)!r}: choose one of {', '.join(TOKENIZER_KINDS)}, "
            "or give the path of a tokenizer.json (for example one that nima import wrote)"
        )
    return load_tokenizer(path)


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


@dataclass
class PreparedData:
    """A prepared dataset folder: ``path``, its ``meta`` dict and its ``tokenizer``."""

    path: Path
    meta: dict[str, Any]
    tokenizer: Tokenizer
    reused: bool = False
    """True when :func:`prepare` found a matching earlier result instead of preparing anew."""

    @property
    def train_path(self) -> Path:
        return self.path / "train.bin"

    @property
    def val_path(self) -> Path:
        return self.path / "val.bin"

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    @property
    def train_tokens(self) -> int:
        return int(self.meta["train_tokens"])

    @property
    def val_tokens(self) -> int:
        return int(self.meta["val_tokens"])

    def tokens(self, split: str) -> np.ndarray:
        """The ``train`` or ``val`` token stream as a read-only memory map."""
        if split not in ("train", "val"):
            raise DataError(f"split must be 'train' or 'val', got {split!r}")
        return open_tokens(self.path / f"{split}.bin", self.dtype)


def open_tokens(path: Path, dtype: np.dtype) -> np.ndarray:
    """Memory-map a token file (an empty file gives an empty array: mmap cannot map 0 bytes)."""
    if Path(path).stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def prepare(
    dataset: str | os.PathLike = "tiny_shakespeare",
    tokenizer: str = "char",
    vocab_size: int | None = None,
    data_dir: str | os.PathLike | None = None,
    *,
    encoding: str = "utf-8",
    text_field: str = "text",
    val_fraction: float = 0.1,
    quiet: bool = True,
    force: bool = False,
) -> PreparedData:
    """Prepare ``dataset`` with a ``tokenizer`` ("char" | "byte" | "bpe"), or reuse an earlier result.

    ``tokenizer`` may also be the path of a saved tokenizer (``tokenizer.json``, or a folder with
    one): the text is then encoded with it as it is, for fine-tuning a model that uses it; the
    result goes to ``<dataset>/<kind>-<first 12 hex digits of its sha256>/``.
    ``dataset`` is a known name (``tiny_shakespeare``) or a path to a text file, a folder of
    ``.txt`` files or a ``.jsonl`` file (text in ``text_field``). ``vocab_size`` is required for
    BPE. ``quiet=False`` shows progress bars on stderr; ``force`` prepares anew even when a
    matching result exists. Raises :class:`~nima.errors.DataError` for bad input.
    """
    given = given_tokenizer(tokenizer)
    if given is not None:
        kind, vocab_size = "given", given.vocab_size
        tag = f"{given.kind}-{given.identity()['sha256'][:12]}"
    else:
        kind = _check_tokenizer_kind(tokenizer)
        # char and byte vocabularies are fixed by the text / by UTF-8
        vocab_size = check_bpe_vocab_size(vocab_size) if kind == "bpe" else None
        tag = tokenizer_tag(kind, vocab_size)
    val_fraction = _check_val_fraction(val_fraction)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    source = resolve_source(dataset, root, encoding=encoding, text_field=text_field)
    out = root / source.name / tag
    settings = {
        "tokenizer": kind,
        "vocab_size": vocab_size,
        "encoding": encoding,
        "text_field": text_field if source.kind == "jsonl" else None,
        "val_fraction": val_fraction,
        "format": PREPARED_FORMAT,
    }
    if given is not None:
        settings["tokenizer_sha256"] = given.identity()["sha256"]
    if not force:
        reused = _reuse(out, source, settings)
        if reused is not None:
            reused.reused = True
            return reused
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as err:
        raise DataError(
            f"cannot write prepared data under {out.parent}: {err.strerror or err}; choose another --data_dir"
        ) from None
    make_public(tmp, directory=True)
    try:
        meta = _build(tmp, source, settings, quiet=quiet, given=given)
        _install(tmp, out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):  # disk full, permissions, a source file that vanished
            raise DataError(f"preparing {source.location} into {out} failed: {err}") from None
        raise
    return PreparedData(path=out, meta=meta, tokenizer=load_tokenizer(out / "tokenizer.json"))


def load_prepared(path: str | os.PathLike) -> PreparedData:
    """Open a prepared dataset folder (as written by :func:`prepare`)."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise DataError(
            f"no prepared dataset at {path} (meta.json missing); run `nima prepare --dataset ...` first"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{meta_path} is damaged ({err}); prepare the dataset again") from None
    if not isinstance(meta, dict) or meta.get("format") != PREPARED_FORMAT:
        raise DataError(f"{meta_path} is not a Nima prepared dataset (format {PREPARED_FORMAT!r})")
    data = PreparedData(path=path, meta=meta, tokenizer=load_tokenizer(path / "tokenizer.json"))
    for split in ("train", "val"):
        try:
            expected = int(meta[f"{split}_tokens"]) * data.dtype.itemsize
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{meta_path} is damaged (bad {err}); prepare the dataset again") from None
        file = path / f"{split}.bin"
        if not file.is_file() or file.stat().st_size != expected:
            raise DataError(
                f"{file} is missing or truncated (expected {expected} bytes); prepare the dataset again"
            )
    return data


def _check_tokenizer_kind(tokenizer: str) -> str:
    if tokenizer not in TOKENIZER_KINDS:
        raise DataError(f"unknown tokenizer {tokenizer!r}; choose one of: {', '.join(TOKENIZER_KINDS)}")
    return tokenizer


def _check_val_fraction(val_fraction: float) -> float:
    try:
        value = float(val_fraction)
    except (TypeError, ValueError):
        raise DataError(f"--val_fraction must be a number between 0 and 1, got {val_fraction!r}") from None
    if not 0.0 < value < 1.0:
        raise DataError(f"--val_fraction must be between 0 and 1 (exclusive), got {val_fraction}; try 0.1")
    return value


# ---------------------------------------------------------------------------------------- reuse


def _reuse(out: Path, source: TextSource, settings: dict[str, Any]) -> PreparedData | None:
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
    if _source_sha256(source) != meta["source"].get("sha256"):
        return None
    meta["source"]["fingerprint"] = fingerprint
    atomic_write_json(out / "meta.json", meta)
    return data


def _source_sha256(source: TextSource) -> str:
    if source.known_sha256:
        return source.known_sha256  # verified when it was fetched
    hasher = hashlib.sha256()
    for document in source.documents(hasher):
        for _ in document:
            pass
    return hasher.hexdigest()


STALE_AFTER_S = 24 * 3600


def _remove_stale_temporaries(out: Path) -> None:
    """Delete temporary folders left by preparations that were killed (older than a day)."""
    now = time.time()
    for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*"):
        for folder in out.parent.glob(pattern):
            try:
                if now - folder.stat().st_mtime > STALE_AFTER_S:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass  # another process removed it


def _install(tmp: Path, out: Path) -> None:
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


# ---------------------------------------------------------------------------------------- build


@dataclass
class _Scan:
    chars: int
    documents: int
    sha256: str
    alphabet: list[str] | None


def _build(
    folder: Path, source: TextSource, settings: dict[str, Any], quiet: bool, given: Tokenizer | None = None
) -> dict[str, Any]:
    timings: dict[str, float] = {}
    kind = settings["tokenizer"]

    # Wall and CPU time (all threads) per phase: on a shared machine CPU time shows the work done.
    start, cpu = time.perf_counter(), time.process_time()
    scan = _scan(source, want_alphabet=(kind == "char"), quiet=quiet)
    timings["scan_s"], timings["scan_cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
    if scan.chars == 0:
        raise DataError(f"--dataset {source.location} contains no text")
    train_chars = int(scan.chars * (1.0 - settings["val_fraction"]))
    if train_chars < 1 or train_chars >= scan.chars:
        raise DataError(
            f"--dataset {source.location} has only {scan.chars} characters: too few to split into "
            f"train and val with --val_fraction {settings['val_fraction']}"
        )
    window = max(1, (scan.chars - train_chars) // 2)

    start, cpu = time.perf_counter(), time.process_time()
    tokenizer = given or _make_tokenizer(source, settings, scan, train_chars, window, quiet)
    timings["tokenizer_s"], timings["tokenizer_cpu_s"] = (
        time.perf_counter() - start,
        time.process_time() - cpu,
    )
    tokenizer.save(folder / "tokenizer.json")

    start, cpu = time.perf_counter(), time.process_time()
    dtype = token_dtype(tokenizer.vocab_size)
    counts = _encode_to_files(folder, source, tokenizer, dtype, train_chars, window, scan.chars, quiet)
    timings["encode_s"], timings["encode_cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
    if counts["val"] == 0 or counts["train"] == 0:
        empty = "val" if counts["val"] == 0 else "train"
        raise DataError(
            f"--dataset {source.location} is too small: the {empty} split came out empty "
            f"({scan.chars} characters in all); add text or change --val_fraction"
        )

    meta = {
        "format": PREPARED_FORMAT,
        "dataset": source.name,
        "source": {
            "kind": source.kind,
            "location": str(source.location),
            "sha256": scan.sha256,
            "bytes": source.total_bytes(),
            "characters": scan.chars,
            "documents": scan.documents,
            "fingerprint": source.fingerprint(),
        },
        "tokenizer": {**tokenizer.identity(), "eos_token_id": tokenizer.eos_token_id},
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype.str,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "split": {
            "method": "by position: the first (1 - val_fraction) of the text is train, cut at a line break",
            "val_fraction": settings["val_fraction"],
            "train_characters": counts["train_chars"],
            "val_characters": counts["val_chars"],
        },
        "settings": settings,
        "encoder": counts["encoder"],
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(folder / "meta.json", meta)
    return meta


class _MemoryTrimmer:
    """Hands freed heap memory back to the OS every ``every`` blocks (glibc only).

    glibc raises its mmap threshold whenever a large buffer is freed, so the 1-4 MB block buffers
    soon come from the heap, which fragments and keeps growing with the corpus (measured: peak RSS
    102 MB at 50 MB of text, 130 MB at 200 MB). ``malloc_trim`` keeps the peak flat without
    changing allocator settings for the rest of the process (e.g. a training run).
    """

    def __init__(self, every: int = 32):
        self._every = every
        self._count = 0
        self._trim = None
        if sys.platform.startswith("linux"):
            try:
                self._trim = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass

    def tick(self) -> None:
        self._count += 1
        if self._trim is not None and self._count % self._every == 0:
            self._trim(0)


def _progress(total: int, description: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=description,
        unit="char",
        unit_scale=True,
        disable=quiet,
        leave=False,
        dynamic_ncols=True,
    )


def _scan(source: TextSource, want_alphabet: bool, quiet: bool) -> _Scan:
    """First pass: character count, sha256 and (for char) the alphabet, without holding the text."""
    hasher = hashlib.sha256()
    chars = documents = 0
    seen: set[str] = set()
    seen_ascii = b""  # the ASCII characters seen so far, as bytes (for bytes.translate)
    trimmer = _MemoryTrimmer()
    with _progress(source.total_bytes(), "scan", quiet) as bar:
        for document in source.documents(hasher):
            documents += 1
            for block in document:
                trimmer.tick()
                chars += len(block)
                bar.update(len(block))  # characters against a total in bytes: close enough for a bar
                if not want_alphabet:
                    continue
                # Deleting the known ASCII bytes from the UTF-8 leaves the new ASCII characters and
                # the (usually few) non-ASCII ones, still valid UTF-8: C speed, no per-char work.
                rest = block.encode("utf-8", errors="surrogatepass").translate(None, seen_ascii)
                if rest:
                    seen.update(rest.decode("utf-8", errors="surrogatepass"))
                    seen_ascii = "".join(sorted(c for c in seen if c.isascii())).encode("ascii")
    alphabet = sorted(seen) if want_alphabet else None
    sha = source.known_sha256 or hasher.hexdigest()
    return _Scan(chars=chars, documents=documents, sha256=sha, alphabet=alphabet)


def _make_tokenizer(
    source: TextSource, settings: dict[str, Any], scan: _Scan, train_chars: int, window: int, quiet: bool
) -> Tokenizer:
    kind = settings["tokenizer"]
    if kind == "char":
        # The alphabet of the whole corpus, so that val never has an unknown character.
        return CharTokenizer(scan.alphabet or [], with_eot=source.multi_document)
    if kind == "byte":
        return ByteTokenizer(with_eot=True)

    def training_text() -> Iterator[str]:
        for side, blocks in split_documents(source.documents(), train_chars, window):
            if side != "train":
                return
            yield from iter_pieces(blocks, piece_chars=1 << 16)

    if not quiet:
        print(
            f"training BPE ({settings['vocab_size']} ids) on {train_chars:,} characters...", file=sys.stderr
        )
    return BPETokenizer.train(training_text(), settings["vocab_size"])


def split_documents(
    documents: Iterable[Iterable[str]], train_chars: int, window: int
) -> Iterator[tuple[str, Iterator[str]]]:
    """Yield ``(side, blocks)`` per document part: the first ``train_chars`` characters are train.

    The cut moves forward to just after the next line break if one is within ``window`` characters
    (in the same block); the document that holds the cut gives one train part and one val part.
    Consume each part before asking for the next.
    """
    remaining = train_chars
    for document in documents:
        blocks = iter(document)
        if remaining <= 0:
            yield "val", blocks
            continue
        leftover: list[str] = []

        def train_part(blocks: Iterator[str] = blocks, leftover: list[str] = leftover) -> Iterator[str]:
            nonlocal remaining
            for block in blocks:
                if len(block) < remaining:
                    remaining -= len(block)
                    yield block
                    continue
                newline = block.find("\n", remaining - 1, remaining - 1 + window)
                cut = newline + 1 if newline >= 0 else remaining
                remaining = 0
                if cut:
                    yield block[:cut]
                if cut < len(block):
                    leftover.append(block[cut:])
                return

        yield "train", train_part()
        if leftover:
            yield "val", itertools.chain(leftover, blocks)


class _TokenFile:
    """Appends token ids to a flat binary file, counting them."""

    def __init__(self, path: Path, dtype: np.dtype, eot: int | None):
        self._file = open(path, "wb")
        self.dtype = dtype
        self.tokens = 0
        self.chars = 0
        self.parts = 0
        self._eot = eot
        self._needs_separator = False

    def start_document(self) -> None:
        # The separator is written lazily, so empty documents never leave two in a row.
        self._needs_separator = self.tokens > 0 and self._eot is not None

    def write(self, ids: np.ndarray, chars: int) -> None:
        if len(ids) == 0:
            return
        if self._needs_separator:
            np.array([self._eot], dtype=self.dtype).tofile(self._file)
            self.tokens += 1
            self._needs_separator = False
        np.asarray(ids).astype(self.dtype, copy=False).tofile(self._file)
        self.tokens += len(ids)
        self.chars += chars

    def close(self) -> None:
        self._file.close()


def _encode_to_files(
    folder: Path,
    source: TextSource,
    tokenizer: Tokenizer,
    dtype: np.dtype,
    train_chars: int,
    window: int,
    total_chars: int,
    quiet: bool,
) -> dict[str, Any]:
    encoder = make_stream_encoder(tokenizer, fast_bpe=_fast_bpe(tokenizer, total_chars, quiet))
    try:
        counts = _encode_pass(
            folder, source, encoder, dtype, tokenizer.eos_token_id, train_chars, window, total_chars, quiet
        )
    except FastPathMismatch as err:
        print(f"note: {err}; encoding again with tokenizers (slower)", file=sys.stderr)
        encoder = HFBPEStreamEncoder(tokenizer)
        counts = _encode_pass(
            folder, source, encoder, dtype, tokenizer.eos_token_id, train_chars, window, total_chars, quiet
        )
        counts["encoder"] = "tokenizers (tiktoken disagreed on this corpus)"
    return counts


FAST_BPE_MIN_CHARS = 1 << 22
"""Below this much text, building and checking the fast encoder costs more than it saves."""


def _fast_bpe(tokenizer: Tokenizer, total_chars: int, quiet: bool) -> FastBPE | None:
    """tiktoken built from ``tokenizer`` when it is BPE and the fast path applies, else None."""
    if not isinstance(tokenizer, BPETokenizer) or total_chars < FAST_BPE_MIN_CHARS:
        return None
    if tokenizer.style != BYTE_LEVEL:  # tiktoken speaks GPT-2's byte-level BPE only
        return None
    if not tiktoken_installed():
        if not quiet:
            print(
                "BPE encoding with tokenizers; `pip install tiktoken` makes it about 3x faster "
                "(same ids, checked)",
                file=sys.stderr,
            )
        return None
    try:
        return FastBPE(tokenizer)
    except FastBPEUnavailable as err:
        print(f"note: fast BPE encoding (tiktoken) not used: {err}; using tokenizers", file=sys.stderr)
        return None


def _encode_pass(
    folder: Path,
    source: TextSource,
    encoder: StreamEncoder,
    dtype: np.dtype,
    eot: int | None,
    train_chars: int,
    window: int,
    total_chars: int,
    quiet: bool,
) -> dict[str, Any]:
    """Encode every document part into ``train.bin`` / ``val.bin`` (overwriting them)."""

    def units() -> Iterator[tuple[str, str | None]]:
        for side, blocks in split_documents(source.documents(), train_chars, window):
            yield side, None  # a document (part) starts
            for unit in encoder.cut(blocks):
                yield side, unit

    files = {side: _TokenFile(folder / f"{side}.bin", dtype, eot) for side in ("train", "val")}
    trimmer = _MemoryTrimmer()
    try:
        with _progress(total_chars, "encode", quiet) as bar:
            for side, text, ids in encode_in_order(encoder, units()):
                out = files[side]
                if text is None:
                    out.start_document()
                    continue
                out.write(ids, len(text))
                bar.update(len(text))
                trimmer.tick()
    finally:
        encoder.close()
        for f in files.values():
            f.close()
    return {
        "train": files["train"].tokens,
        "val": files["val"].tokens,
        "train_chars": files["train"].chars,
        "val_chars": files["val"].chars,
        "encoder": encoder.description,
    }
