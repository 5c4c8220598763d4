"""Benchmark: loading prepared corpora: document-aligned windows and reads over shards (not a test).

Reports, for ``docs/data.md``'s "Loading prepared corpora":

- the token cost of ``data.align_windows: documents`` on tiny Shakespeare cut into documents
  (each speech one document, then 20 speeches per document), byte tokenizer: windows per epoch
  against plain windows, and the share of trained targets that lie in the window's own document;
- the scan for document starts: seconds per 10^8 tokens (uint16, documents of ~1000 tokens, four
  shards), first with the shards evicted from the page cache, then warm;
- one batched fetch (64 windows of 1025 tokens) from one shard and from four, pages warm.

Everything is written under a temporary folder that is removed at the end.

    python benchmarks/window_loading.py
    python benchmarks/window_loading.py --tokens 20000000   # a smaller scan
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import find_tiny_shakespeare, machine, utc_now

from nima.data import TokenWindowDataset
from nima.data.documents import document_starts
from nima.data.shards import ShardedTokens, ShardWriter

EOT = 256  # the byte tokenizer's end-of-text id


def byte_stream(documents: list[str]) -> np.ndarray:
    """The documents in bytes, each ended by EOT, as preparation writes them."""
    parts = [np.append(np.frombuffer(d.encode(), dtype=np.uint8).astype("<u2"), EOT) for d in documents]
    return np.concatenate(parts).astype("<u2")


def alignment_cost(stream: np.ndarray, max_length: int) -> tuple[float, float]:
    """(aligned windows / plain windows, share of the aligned windows' targets in their own document)."""
    plain = TokenWindowDataset(stream, max_length)
    aligned = TokenWindowDataset(stream, max_length, align_windows="documents", eos_token_id=EOT)
    starts, docs = aligned.window_starts(np.arange(len(aligned))), aligned.document_starts()
    next_doc = np.append(docs, len(stream) - 1)[np.searchsorted(docs, starts, side="right")]
    own = np.minimum(starts + max_length, next_doc) - starts
    return len(aligned) / len(plain), float(own.sum()) / (len(aligned) * max_length)


def evict(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def fetch_us(dataset: TokenWindowDataset, batches: int = 300) -> float:
    rng = np.random.default_rng(1)
    picks = [rng.integers(0, len(dataset), 64).tolist() for _ in range(batches)]
    for indices in picks:  # pages warm
        dataset.__getitems__(indices)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for indices in picks:
            dataset.__getitems__(indices)
        best = min(best, (time.perf_counter() - start) / batches * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000_000, help="tokens in the scanned shards")
    args = parser.parse_args()
    print(f"{utc_now()}  {machine()}")

    text = find_tiny_shakespeare()
    if text is None:
        print("tiny Shakespeare not found: token cost skipped")
    else:
        speeches = [s for s in text.read_text(encoding="utf-8").split("\n\n") if s.strip()]
        for name, documents in (
            ("speeches", speeches),
            ("20 speeches", ["\n\n".join(speeches[i : i + 20]) for i in range(0, len(speeches), 20)]),
        ):
            stream = byte_stream(documents)
            mean = len(stream) / len(documents)
            for max_length in (64, 256, 1024):
                ratio, own = alignment_cost(stream, max_length)
                print(
                    f"documents of {name} ({len(documents)}, mean {mean:.0f} tokens), max_length "
                    f"{max_length}: {ratio:.2f}x the windows of plain windows, {own:.1%} of targets in "
                    "their own document"
                )

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        writer = ShardWriter(Path(tmp), np.dtype("<u2"), shard_tokens=args.tokens // 4, eot=50256)
        for at in range(0, args.tokens, 10_000_000):
            block = rng.integers(0, 50_000, size=min(10_000_000, args.tokens - at), dtype=np.uint16)
            block[rng.random(len(block)) < 1 / 1000] = 50256
            writer.write(block)
        writer.close()
        paths = sorted(Path(tmp).glob("0*.bin"))
        evict(paths)
        stream = ShardedTokens.open(paths)
        per = 1e8 / len(stream)
        for state in ("evicted from the page cache", "warm"):
            start = time.perf_counter()
            found = len(document_starts(stream, 50256))
            seconds = time.perf_counter() - start
            print(f"document scan, {state}: {seconds * per:.2f} s per 10^8 tokens ({found:,} documents)")
        four = TokenWindowDataset(stream, 1024, seed=0)
        one = TokenWindowDataset(ShardedTokens([stream.shards[0]]), 1024, seed=0)
        one_us, four_us = fetch_us(one), fetch_us(four)
        print(f"fetch of 64 windows of 1025 tokens: one shard {one_us:.0f} us, four shards {four_us:.0f} us")
        del stream, four, one


if __name__ == "__main__":
    main()
