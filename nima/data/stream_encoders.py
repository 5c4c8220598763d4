"""Stream encoders: the text of a corpus, part by part -> arrays of token ids, for preparation.

An encoder cuts each document part into units (``cut``) and turns each unit into ids
(``encode``); :func:`encode_in_order` runs ``encode`` on ``workers`` threads, keeping the order, so
that reading, cutting and writing in the calling thread overlap with encoding.

- char / byte: whole 1 MiB blocks at C speed (``bytes.translate``, ``numpy``), in the calling thread.
- BPE with ``tokenizers``: 256 KiB units of ~1 KiB pieces per ``encode_batch_fast`` call (its
  fastest input size), which runs on all cores by itself; one helper thread.
- BPE with ``tiktoken`` (:mod:`nima.data.fast_bpe`, when installed): 64 KiB units on one thread
  per core (tiktoken releases the GIL), each checked against ``tokenizers`` for the first
  512 KiB and then one unit in 256; a difference raises :class:`FastPathMismatch` and preparation
  encodes again with ``tokenizers``.

BPE units are cut only where GPT-2's pre-tokenizer cuts anyway (:mod:`nima.data.chunking`), so
encoding unit by unit gives the ids of encoding each document whole.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from nima.data.chunking import iter_pieces
from nima.data.fast_bpe import FastBPE
from nima.data.tokenizer import BPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer

K = TypeVar("K")

HF_UNIT_CHARS = 1 << 18
"""Text per ``encode_batch_fast`` call (~256 pieces of ~1 KiB)."""
HF_PIECE_CHARS = 1024
FAST_UNIT_CHARS = 1 << 16
"""tiktoken unit: long enough that per-call overhead vanishes, short enough to keep cores busy."""
CHECK_FIRST_CHARS = 1 << 19
"""The fast path's ids are compared with ``tokenizers`` on all of the first 512 KiB..."""
CHECK_EVERY = 256
"""...and then on one unit in this many (under 1% of the text more, spread over the corpus)."""


class FastPathMismatch(Exception):
    """``tiktoken`` and ``tokenizers`` gave different ids on the corpus: use ``tokenizers``."""


class StreamEncoder:
    """Cuts document parts into units and encodes each unit; see the module docstring."""

    description = ""
    """How ids are made, for ``meta.json`` (e.g. ``"tiktoken (checked against tokenizers)"``)."""
    workers = 0
    """Encoding threads (0: encode in the calling thread)."""

    def cut(self, blocks: Iterable[str]) -> Iterator[str]:
        """Units of one document part; they join back to exactly its text."""
        return iter(blocks)

    def encode(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release threads (safe to call twice)."""


def cpu_count() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def encode_in_order(
    encoder: StreamEncoder, units: Iterable[tuple[K, str | None]]
) -> Iterator[tuple[K, str | None, np.ndarray | None]]:
    """``(key, text)`` -> ``(key, text, ids)`` in the same order; ``text=None`` passes through.

    At most ``2 * workers`` units are in flight, so memory stays bounded.
    """
    if encoder.workers == 0:
        for key, text in units:
            yield key, text, None if text is None else encoder.encode(text)
        return
    pending: deque[tuple[K, str | None, Future | None]] = deque()
    limit = 2 * encoder.workers
    with ThreadPoolExecutor(max_workers=encoder.workers, thread_name_prefix="nima-encode") as pool:
        try:
            for key, text in units:
                future = None if text is None else pool.submit(encoder.encode, text)
                pending.append((key, text, future))
                if len(pending) > limit:
                    key0, text0, future0 = pending.popleft()
                    yield key0, text0, None if future0 is None else future0.result()
            while pending:
                key0, text0, future0 = pending.popleft()
                yield key0, text0, None if future0 is None else future0.result()
        finally:
            for _, _, future in pending:
                if future is not None:
                    future.cancel()


class CharStreamEncoder(StreamEncoder):
    """Char ids by table lookup; an unknown character is a DataError naming it."""

    description = "char table"

    def __init__(self, tokenizer: CharTokenizer):
        self._tokenizer = tokenizer
        # code point -> id, -1 for characters outside the vocabulary.
        table = np.full(max(ord(c) for c in tokenizer.chars) + 1, -1, dtype=np.int32)
        for i, c in enumerate(tokenizer.chars):
            table[ord(c)] = i
        self._table = table
        # ASCII sorts first, so ASCII characters have ids < 128: a bytes.translate table maps a
        # whole ASCII block at C speed, with 0xFF marking characters outside the vocabulary.
        self._ascii_ids = bytes(
            int(table[b]) if b < len(table) and table[b] >= 0 else 0xFF for b in range(256)
        )

    def encode(self, text: str) -> np.ndarray:
        if text.isascii():
            mapped = text.encode("ascii").translate(self._ascii_ids)
            if b"\xff" in mapped:
                self._tokenizer.encode(text[mapped.index(b"\xff")])  # raises a DataError naming it
            return np.frombuffer(mapped, dtype=np.uint8)
        codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")
        if int(codes.max()) >= len(self._table):
            self._tokenizer.encode(text)  # raises a DataError naming the unknown character
        ids = self._table[codes]
        if int(ids.min()) < 0:
            self._tokenizer.encode(text[int(np.argmax(ids < 0))])  # raises a DataError naming it
        return ids


class ByteStreamEncoder(StreamEncoder):
    """UTF-8 bytes are the ids."""

    description = "utf-8 bytes"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8", errors="surrogatepass"), dtype=np.uint8)


class HFBPEStreamEncoder(StreamEncoder):
    """BPE with ``tokenizers``' batch encoding (all cores), fed from one helper thread.

    SentencePiece-style tokenizers (Llama 2) put a space before every text they encode: only the
    first piece of a document gets that; the others go through the tokenizer's continuation copy.
    """

    description = "tokenizers"
    workers = 1

    def __init__(self, tokenizer: BPETokenizer):
        self._hf = tokenizer.hf_tokenizer
        self._continuation = tokenizer.continuation_tokenizer()

    def cut(self, blocks: Iterable[str]) -> Iterator[str]:
        units = iter_pieces(blocks, piece_chars=HF_UNIT_CHARS)
        first = next(units, None)
        if first is not None:
            yield _DocumentStart(first)
        yield from units

    def encode(self, text: str) -> np.ndarray:
        pieces = list(iter_pieces([text], piece_chars=HF_PIECE_CHARS))
        encodings = []
        if pieces and isinstance(text, _DocumentStart):
            encodings = self._hf.encode_batch_fast(pieces[:1], add_special_tokens=False)
            pieces = pieces[1:]
        encodings += self._continuation.encode_batch_fast(pieces, add_special_tokens=False)
        if not encodings:
            return np.zeros(0, dtype=np.uint32)
        return np.concatenate([np.asarray(e.ids, dtype=np.uint32) for e in encodings])


class _DocumentStart(str):
    """The first unit of a document part."""

    __slots__ = ()


class FastBPEStreamEncoder(StreamEncoder):
    """BPE with ``tiktoken`` on every core, checked against ``tokenizers`` on a sample as it goes."""

    def __init__(self, fast: FastBPE, workers: int | None = None, check_first: bool = True):
        self._fast = fast
        self.workers = workers or cpu_count()
        self._units = 0
        self._checked_chars = 0
        self._check_first = check_first
        """Compare the whole first CHECK_FIRST_CHARS (a corpus' first work unit does; the others
        only one unit in CHECK_EVERY, or a corpus of small files would be checked mostly whole)."""
        self.description = "tiktoken (checked against tokenizers)"

    @property
    def checked_chars(self) -> int:
        """Characters on which both encoders were compared so far."""
        return self._checked_chars

    def cut(self, blocks: Iterable[str]) -> Iterator[str]:
        for unit in iter_pieces(blocks, piece_chars=FAST_UNIT_CHARS):
            # Decided here, in the calling thread, so the sample is the same on every run.
            first = self._check_first and self._checked_chars < CHECK_FIRST_CHARS
            check = first or self._units % CHECK_EVERY == 0
            self._units += 1
            if check:
                self._checked_chars += len(unit)
                yield _Checked(unit)
            else:
                yield unit

    def encode(self, text: str) -> np.ndarray:
        ids = self._fast.encode(text)
        if isinstance(text, _Checked) and not np.array_equal(ids, self._fast.reference(text)):
            raise FastPathMismatch(f"tiktoken and tokenizers give different BPE ids on {str(text)[:40]!r}...")
        return ids


class _Checked(str):
    """A unit whose fast-path ids must be compared with the reference."""

    __slots__ = ()


def make_stream_encoder(tokenizer: Tokenizer, fast_bpe: FastBPE | None = None) -> StreamEncoder:
    """The encoder for ``tokenizer``; BPE uses ``fast_bpe`` when one is given, else ``tokenizers``."""
    if isinstance(tokenizer, CharTokenizer):
        return CharStreamEncoder(tokenizer)
    if isinstance(tokenizer, ByteTokenizer):
        return ByteStreamEncoder()
    assert isinstance(tokenizer, BPETokenizer)
    if fast_bpe is not None:
        return FastBPEStreamEncoder(fast_bpe)
    return HFBPEStreamEncoder(tokenizer)
