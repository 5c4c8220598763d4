"""A token stream as the datasets read it: made from what the caller hands in, read as windows
(one gather per shard), and mapped again in DataLoader workers instead of copied into them.

A ``numpy.memmap`` pickles as a full copy of its data; a dataset sent to DataLoader workers would
copy the whole corpus into each of them. :func:`reopen_recipe` describes memory-mapped shards by
file, offset, dtype and length instead, and :func:`reopen` maps them again from that.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from nima.data.prepared import open_tokens
from nima.data.shards import ShardedTokens

Recipe = list[tuple[str, int, str, int]]
"""``(file, byte offset, dtype, tokens)`` per shard; file ``""`` for an empty shard."""


def as_stream(
    tokens: np.ndarray | ShardedTokens | str | os.PathLike, dtype: np.dtype | str | None
) -> ShardedTokens:
    """``tokens`` as a :class:`ShardedTokens`: a stream as it is, an array as a one-shard stream,
    a path as the memory map of a header-less token file of ``dtype`` (default uint16)."""
    if isinstance(tokens, ShardedTokens):
        return tokens
    if isinstance(tokens, (str, os.PathLike)):
        return ShardedTokens([open_tokens(Path(tokens), np.dtype(dtype or "<u2"))])
    return ShardedTokens([tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)])


def reopen_recipe(stream: ShardedTokens) -> Recipe | None:
    """How to map ``stream``'s shards again, or None when one of them is an array in memory (then
    the stream is pickled as it is)."""
    recipe: Recipe = []
    for shard in stream.shards:
        if len(shard) == 0:
            recipe.append(("", 0, shard.dtype.str, 0))
        elif isinstance(shard, np.memmap) and isinstance(shard.base, mmap.mmap) and shard.filename:
            # A whole map (its base is the mmap itself): a slice of one would need its own offset.
            recipe.append((shard.filename, int(shard.offset), shard.dtype.str, len(shard)))
        else:
            return None
    return recipe


def reopen(recipe: Recipe) -> ShardedTokens:
    """The stream that :func:`reopen_recipe` described, memory-mapped in this process."""
    shards = [
        np.memmap(file, dtype=np.dtype(dtype), mode="r", offset=offset, shape=(tokens,))
        if tokens
        else np.zeros(0, dtype=np.dtype(dtype))
        for file, offset, dtype, tokens in recipe
    ]
    return ShardedTokens(shards)


class WindowReader:
    """Windows of ``length`` tokens at any starts of ``stream``, as the rows of one int64 array:
    one gather per shard for the windows inside it (from a strided view of the shard, made once),
    and a copy across the boundary for the few that cross from one shard into the next."""

    def __init__(self, stream: ShardedTokens, length: int):
        self.stream, self.length = stream, length
        self.sizes = np.diff(stream.starts)
        self.views = [_windows_view(shard, length) for shard in stream.shards]

    def __call__(self, starts: np.ndarray) -> np.ndarray:
        starts = np.asarray(starts, dtype=np.int64)
        out = np.empty((len(starts), self.length), dtype=np.int64)
        shard_of = np.searchsorted(self.stream.starts, starts, side="right") - 1
        local = starts - self.stream.starts[shard_of]
        inside = local + self.length <= self.sizes[shard_of]
        for shard in np.unique(shard_of[inside]).tolist():
            rows = np.flatnonzero(inside & (shard_of == shard))
            out[rows] = self.views[shard][local[rows]]
        for row in np.flatnonzero(~inside).tolist():
            out[row] = self.stream.read(int(starts[row]), self.length)
        return out


def _windows_view(shard: np.ndarray, length: int) -> np.ndarray:
    """Row ``i`` is ``shard[i : i + length]``: a read-only view, no copy."""
    step = shard.strides[0] if shard.ndim else shard.itemsize
    rows = max(len(shard) - length + 1, 0)
    return np.lib.stride_tricks.as_strided(shard, (rows, length), (step, step), writeable=False)
