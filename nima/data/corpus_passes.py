"""The passes over a text source that preparation makes, each streaming in blocks.

- :func:`scan_source`: the first pass: character and document counts, sha256, the char alphabet.
- :func:`split_documents`: cuts the documents into a train part and a val part by position.
- :func:`make_tokenizer`: the char / byte tokenizer, or BPE trained on the train part.
- :func:`encode_pass`: every document part -> ``train.bin`` / ``val.bin`` via a stream encoder.

:mod:`nima.data.preparation` runs them in order into a temporary folder and owns the result
(``meta.json``, reuse, the atomic install).
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nima.data.chunking import iter_pieces
from nima.data.sources import TextSource
from nima.data.stream_encoders import StreamEncoder, encode_in_order
from nima.data.tokenizer import MIN_BPE_VOCAB, BPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer


@dataclass
class Scan:
    """What the first pass learnt about a source."""

    chars: int
    documents: int
    sha256: str
    alphabet: list[str] | None


class MemoryTrimmer:
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


def progress_bar(total: int, description: str, quiet: bool):
    """A tqdm bar counting characters on stderr (disabled when ``quiet``)."""
    return tqdm(
        total=total,
        desc=description,
        unit="char",
        unit_scale=True,
        disable=quiet,
        leave=False,
        dynamic_ncols=True,
    )


def scan_source(source: TextSource, want_alphabet: bool, quiet: bool) -> Scan:
    """First pass: character count, sha256 and (for char) the alphabet, without holding the text."""
    hasher = hashlib.sha256()
    chars = documents = 0
    seen: set[str] = set()
    seen_ascii = b""  # the ASCII characters seen so far, as bytes (for bytes.translate)
    trimmer = MemoryTrimmer()
    with progress_bar(source.total_bytes(), "scan", quiet) as bar:
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
    return Scan(chars=chars, documents=documents, sha256=sha, alphabet=alphabet)


def make_tokenizer(
    source: TextSource, settings: dict[str, Any], scan: Scan, train_chars: int, window: int, quiet: bool
) -> Tokenizer:
    """The tokenizer ``settings`` ask for: char (the corpus's alphabet), byte, or BPE trained on
    the train part of ``source``."""
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
    # Each merge needs a pair of tokens in the text: no more ids than characters can come out, and
    # the trainer reserves room for the size it is given.
    return BPETokenizer.train(training_text(), min(settings["vocab_size"], MIN_BPE_VOCAB + train_chars))


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


class TokenFile:
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


def encode_pass(
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

    files = {side: TokenFile(folder / f"{side}.bin", dtype, eot) for side in ("train", "val")}
    trimmer = MemoryTrimmer()
    try:
        with progress_bar(total_chars, "encode", quiet) as bar:
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
