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

The passes over the text (scan, split, tokenizer training, encoding into token files) live in
:mod:`nima.data.corpus_passes`; this module runs them and owns the result folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nima.data.corpus_passes import encode_pass, make_tokenizer, scan_source, split_documents
from nima.data.fast_bpe import FastBPE, FastBPEUnavailable, tiktoken_installed
from nima.data.sources import TextSource, resolve_source
from nima.data.stream_encoders import FastPathMismatch, HFBPEStreamEncoder, make_stream_encoder
from nima.data.tokenizer import BYTE_LEVEL, BPETokenizer, Tokenizer, check_bpe_vocab_size, load_tokenizer
from nima.errors import DataError
from nima.files import atomic_write_json, make_public, why_unwritable

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_DATA_DIR",
    "FAST_BPE_MIN_CHARS",
    "PREPARED_FORMAT",
    "TOKENIZER_KINDS",
    "PreparedData",
    "check_token_ids",
    "default_data_dir",
    "given_tokenizer",
    "load_prepared",
    "open_tokens",
    "prepare",
    "split_documents",
    "token_dtype",
    "tokenizer_tag",
]

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

    def tokens(self, split: str, vocab_size: int | None = None) -> np.ndarray:
        """The ``train`` or ``val`` token stream as a read-only memory map; with ``vocab_size``,
        checked to hold only ids below it (:func:`check_token_ids`)."""
        if split not in ("train", "val"):
            raise DataError(f"split must be 'train' or 'val', got {split!r}")
        tokens = open_tokens(self.path / f"{split}.bin", self.dtype)
        if vocab_size is not None:
            check_token_ids(tokens, self.path / f"{split}.bin", vocab_size)
        return tokens


def check_token_ids(tokens: np.ndarray, path: Path, vocab_size: int) -> None:
    """DataError unless every id in ``tokens`` (a memory map of ``path``) is below ``vocab_size``:
    an id the model has no embedding for would fail deep inside the first step that reads it."""
    if len(tokens) == 0:
        return
    largest = int(np.max(tokens))
    if largest >= vocab_size:
        raise DataError(
            f"{path} holds token id {largest}, but the vocabulary size is {vocab_size} "
            f"(ids 0 to {vocab_size - 1}): the file was not written with this tokenizer; prepare the "
            "data again (nima prepare --force, or delete the folder) or fix the tool that wrote it"
        )


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
        reused = _reuse(out, source, settings) or _reuse_smaller_bpe(out, source, settings)
        if reused is not None:
            reused.reused = True
            return reused
    why = why_unwritable(out.parent)  # before any work
    if why is not None:
        raise DataError(f"cannot write prepared data under {out.parent}: {why}; choose another --data_dir")
    created = _missing_folders(out.parent)  # removed again if preparing fails: no empty folders left
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as err:
        _remove_empty(created)
        raise DataError(
            f"cannot write prepared data under {out.parent}: {err.strerror or err}; choose another --data_dir"
        ) from None
    make_public(tmp, directory=True)
    try:
        meta = _build(tmp, source, settings, quiet=quiet, given=given)
        out = _true_bpe_name(out, meta, settings)
        _install(tmp, out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        if isinstance(err, OSError):  # disk full, permissions, a source file that vanished
            raise DataError(f"preparing {source.location} into {out} failed: {err}") from None
        raise
    return PreparedData(path=out, meta=meta, tokenizer=load_tokenizer(out / "tokenizer.json"))


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those above it that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; one that holds anything (another writer's) stays
        try:
            folder.rmdir()
        except OSError:
            return


def _true_bpe_name(out: Path, meta: dict[str, Any], settings: dict[str, Any]) -> Path:
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


def _reuse_smaller_bpe(out: Path, source: TextSource, settings: dict[str, Any]) -> PreparedData | None:
    """An earlier BPE result for these settings that came out smaller than asked (see
    :func:`_true_bpe_name`): ``bpe-<N>`` beside ``out`` with N below the size asked."""
    if settings["tokenizer"] != "bpe" or not out.parent.is_dir():
        return None
    for folder in sorted(out.parent.glob("bpe-*")):
        size = folder.name[len("bpe-") :]
        if size.isdigit() and int(size) < settings["vocab_size"]:
            found = _reuse(folder, source, settings)
            if found is not None:
                return found
    return None


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
        except (KeyError, TypeError, ValueError, OverflowError) as err:
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


def _build(
    folder: Path, source: TextSource, settings: dict[str, Any], quiet: bool, given: Tokenizer | None = None
) -> dict[str, Any]:
    timings: dict[str, float] = {}
    kind = settings["tokenizer"]

    # Wall and CPU time (all threads) per phase: on a shared machine CPU time shows the work done.
    start, cpu = time.perf_counter(), time.process_time()
    scan = scan_source(source, want_alphabet=(kind == "char"), quiet=quiet)
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
    tokenizer = given or make_tokenizer(source, settings, scan, train_chars, window, quiet)
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
        counts = encode_pass(
            folder, source, encoder, dtype, tokenizer.eos_token_id, train_chars, window, total_chars, quiet
        )
    except FastPathMismatch as err:
        print(f"note: {err}; encoding again with tokenizers (slower)", file=sys.stderr)
        encoder = HFBPEStreamEncoder(tokenizer)
        counts = encode_pass(
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
