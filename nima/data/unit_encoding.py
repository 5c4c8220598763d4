"""Encoding work units into token files, on every core.

:func:`run_units` runs a function over work units in ``workers`` processes (spawned: the caller
may hold threads, e.g. PyTorch's, that a fork would copy half-way) or, for one worker, in this
process. :func:`encode_unit` is the function that matters: it reads one unit
(:mod:`nima.data.readers`), sends each document to its split, encodes it with the stream encoder
of :mod:`nima.data.stream_encoders` and appends the ids, each document followed by the
end-of-text id, to ``<work>/<unit>.train.bin`` / ``.val.bin``. A ``<unit>.json`` written last
(atomically) marks the unit done: an interrupted preparation keeps the units it finished.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from nima.data.chunking import iter_pieces
from nima.data.fast_bpe import FastBPE, FastBPEUnavailable, tiktoken_installed
from nima.data.readers import BadRecords, Document, read_unit
from nima.data.stream_encoders import (
    FastBPEStreamEncoder,
    FastPathMismatch,
    HFBPEStreamEncoder,
    StreamEncoder,
    encode_in_order,
    make_stream_encoder,
)
from nima.data.tokenizer import BYTE_LEVEL, BPETokenizer, Tokenizer, load_tokenizer
from nima.data.units import Unit, val_side
from nima.errors import DataError
from nima.files import atomic_write_json

R = TypeVar("R")


@dataclass(frozen=True)
class EncodeSettings:
    """What every worker needs besides its unit (plain values: it crosses process boundaries)."""

    tokenizer_path: str
    tokenizer_sha256: str
    """Of the tokenizer file: what worker processes cache it by (a path may hold a new one)."""
    dtype: str
    val_fraction: float
    work: str
    fast_bpe: bool


def unit_files(work: Path, index: int) -> dict[str, Path]:
    stem = f"{index:06d}"
    return {
        "train": work / f"{stem}.train.bin",
        "val": work / f"{stem}.val.bin",
        "done": work / f"{stem}.json",
    }


def run_units(
    fn: Callable[..., R], units: Sequence[Unit], workers: int, *args: Any, on_done: Callable | None = None
) -> list[R]:
    """``[fn(unit, *args) for unit in units]`` on ``workers`` processes, results in unit order;
    ``on_done(unit, result)`` is called as each finishes (in completion order)."""
    results: dict[int, R] = {}
    if workers <= 1 or len(units) <= 1:
        for unit in units:
            results[unit.index] = fn(unit, *args)
            if on_done:
                on_done(unit, results[unit.index])
        return [results[u.index] for u in units]
    context = get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_quiet_worker) as pool:
        pending: dict[Future, Unit] = {}
        queue = iter(units)
        try:
            for unit in itertools.islice(queue, 2 * workers):  # a bounded queue: memory stays flat
                pending[pool.submit(fn, unit, *args)] = unit
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    unit = pending.pop(future)
                    results[unit.index] = future.result()
                    if on_done:
                        on_done(unit, results[unit.index])
                    following = next(queue, None)
                    if following is not None:
                        pending[pool.submit(fn, following, *args)] = following
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return [results[u.index] for u in units]


def _quiet_worker() -> None:
    # One process per core already: the tokenizers library must not start a thread per core in
    # each of them too. Ctrl-C reaches the parent, which stops the pool.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ------------------------------------------------------------------------------------- documents


def document_parts(unit: Unit, val_fraction: float) -> Iterator[tuple[str, Iterator[str], Document]]:
    """``(side, blocks, document)`` for each document part of ``unit``, in order."""
    for document in read_unit(unit.read):
        if unit.val_from_char is not None:
            train, val = _split_at(document.blocks, unit.val_from_char)
            yield "train", train, Document(iter(()), ends=False, where=document.where)
            yield "val", val, document
            continue
        if unit.side is not None:
            yield unit.side, document.blocks, document
            continue
        text = "".join(document.blocks)  # a record: one string already
        yield val_side(text, val_fraction), iter((text,)), document


def _split_at(blocks: Iterator[str], cut: int) -> tuple[Iterator[str], Iterator[str]]:
    """The first ``cut`` characters of ``blocks``, then the rest (consume the first one first)."""
    leftover: list[str] = []

    def first() -> Iterator[str]:
        remaining = cut
        for block in blocks:
            if len(block) < remaining:
                remaining -= len(block)
                yield block
                continue
            if remaining:
                yield block[:remaining]
            if remaining < len(block):
                leftover.append(block[remaining:])
            return

    def rest() -> Iterator[str]:
        yield from leftover
        yield from blocks

    return first(), rest()


# -------------------------------------------------------------------------------------- encoding


@lru_cache(maxsize=2)
def _tokenizer(path: str, sha256: str) -> Tokenizer:
    return load_tokenizer(path)


@lru_cache(maxsize=2)
def _fast_bpe(path: str, sha256: str) -> FastBPE | None:
    tokenizer = _tokenizer(path, sha256)
    if not isinstance(tokenizer, BPETokenizer) or tokenizer.style != BYTE_LEVEL or not tiktoken_installed():
        return None
    try:
        return FastBPE(tokenizer)
    except FastBPEUnavailable:
        return None


def fast_bpe_available(tokenizer_path: str, sha256: str) -> bool:
    return _fast_bpe(tokenizer_path, sha256) is not None


def encode_unit(unit: Unit, settings: EncodeSettings) -> dict[str, Any]:
    """Encode ``unit`` into its token files (see the module docstring); returns its counts."""
    tokenizer = _tokenizer(settings.tokenizer_path, settings.tokenizer_sha256)
    fast = _fast_bpe(settings.tokenizer_path, settings.tokenizer_sha256) if settings.fast_bpe else None
    encoder = make_stream_encoder(tokenizer, fast_bpe=fast)
    if isinstance(encoder, FastBPEStreamEncoder):  # checked whole at the corpus' start only
        encoder = FastBPEStreamEncoder(fast, workers=1, check_first=unit.index == 0)
    try:
        counts = _encode(unit, settings, tokenizer, encoder)
    except FastPathMismatch:
        counts = _encode(unit, settings, tokenizer, HFBPEStreamEncoder(tokenizer))
        counts["encoder"] = "tokenizers (tiktoken disagreed on this unit)"
    atomic_write_json(unit_files(Path(settings.work), unit.index)["done"], counts)
    return counts


def _encode(
    unit: Unit, settings: EncodeSettings, tokenizer: Tokenizer, encoder: StreamEncoder
) -> dict[str, Any]:
    encoder.workers = 0  # one process per core already: encode in this thread
    paths = unit_files(Path(settings.work), unit.index)
    dtype = np.dtype(settings.dtype)
    limit = min(tokenizer.vocab_size, 1 << (8 * dtype.itemsize))
    eot = tokenizer.eos_token_id
    counts = {side: {"tokens": 0, "documents": 0, "characters": 0} for side in ("train", "val")}
    bad = BadRecords()
    files = {side: open(f"{paths[side]}.tmp", "wb") for side in ("train", "val")}
    try:
        for side, blocks, document in document_parts(unit, settings.val_fraction):
            out, count = files[side], counts[side]
            units = ((side, text) for text in encoder.cut(blocks))
            for _, text, ids in encode_in_order(encoder, units):
                if len(ids) and int(ids.max()) >= limit:
                    raise DataError(
                        f"{document.where}: the tokenizer gave id {int(ids.max())}, which does not fit "
                        f"its vocabulary of {tokenizer.vocab_size} ({dtype.name} shards); "
                        "use another tokenizer"
                    )
                ids.astype(dtype, copy=False).tofile(out)
                count["tokens"] += len(ids)
                count["characters"] += len(text)
            if document.ends:
                count["documents"] += 1
                if eot is not None:
                    np.array([eot], dtype=dtype).tofile(out)
                    count["tokens"] += 1
        bad.merge(unit.read.bad)
    finally:
        encoder.close()
        for f in files.values():
            f.close()
    for side in ("train", "val"):
        os.replace(f"{paths[side]}.tmp", paths[side])
    return {
        **counts,
        "tokenizer": settings.tokenizer_sha256,
        "bytes": unit.bytes,
        "bad_records": {"count": bad.count, "first": bad.first},
        "encoder": encoder.description,
    }


# ------------------------------------------------------------------------------------ tokenizers


def unit_alphabet(unit: Unit) -> str:
    """Every character in ``unit`` (for a char tokenizer), as one sorted string."""
    seen: set[str] = set()
    for document in read_unit(unit.read):
        for block in document.blocks:
            seen.update(block)
    return "".join(sorted(seen))


def training_sample(units: Sequence[Unit], val_fraction: float, budget_chars: int) -> Iterator[str]:
    """Text of the train split to train a tokenizer on: at most ``budget_chars``, taken evenly
    from every unit (its first train documents), in ~64 KiB pieces."""
    per_unit = max(1, budget_chars // max(1, len(units)))
    for unit in units:
        left = per_unit
        for side, blocks, _ in document_parts(unit, val_fraction):
            if side != "train":
                continue
            for piece in iter_pieces(blocks, piece_chars=1 << 16):
                yield piece[:left]
                left -= len(piece)
                if left <= 0:
                    break
            if left <= 0:
                break
