"""Document-aware windows: where documents start in a token stream, and window starts there.

A prepared stream ends every document with the tokenizer's end-of-text token (EOT). A document
*starts* at the EOT that precedes it, so that a window's first input is that EOT, acting as a
beginning-of-sequence token (as nanochat and modded-nanogpt train); the stream's first document,
which no EOT precedes, starts at 0.
"""

from __future__ import annotations

import numpy as np

from nima.data.shards import ShardedTokens

ALIGN_WINDOWS = ("none", "documents")
"""Where training windows start (``data.align_windows``): every ``max_length`` tokens from a random
offset, or at documents."""

SCAN_TOKENS = 1 << 24
"""Tokens compared per step of the scan (32 MiB of uint16): memory stays flat for any corpus."""


def document_starts(stream: ShardedTokens, eos_token_id: int, chunk_tokens: int = SCAN_TOKENS) -> np.ndarray:
    """Sorted int64 positions where the documents of ``stream`` start: 0, then every EOT that
    another token follows. Reads the shards in chunks of ``chunk_tokens``."""
    found = [np.zeros(1, dtype=np.int64)]
    for shard, base in zip(stream.shards, stream.starts[:-1].tolist(), strict=True):
        for at in range(0, len(shard), chunk_tokens):
            hits = np.flatnonzero(shard[at : at + chunk_tokens] == eos_token_id)
            if len(hits):
                found.append(hits.astype(np.int64) + (base + at))
    starts = np.concatenate(found)
    # An EOT in last place starts nothing; one in first place is the 0 already there.
    return np.unique(starts[starts < len(stream) - 1])


def aligned_window_starts(doc_starts: np.ndarray, num_tokens: int, max_length: int) -> np.ndarray:
    """Window starts for windows of ``max_length + 1`` tokens: each document's start, then every
    ``max_length`` tokens while the window's first target is still inside the document. A window
    may run past its document's end into the next one; windows that would run past the end of
    the stream are left out."""
    doc_starts = np.asarray(doc_starts, dtype=np.int64)
    ends = np.append(doc_starts[1:], num_tokens - 1)  # a document's targets end where the next starts
    counts = -(-(ends - doc_starts) // max_length)  # ceil: every target of the document once
    first = np.repeat(doc_starts, counts)
    within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    starts = first + within * max_length
    return starts[starts + max_length + 1 <= num_tokens]
