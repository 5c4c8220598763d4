"""Token shards on disk: flat token files with a 1 KiB header, written atomically, read as memory maps.

A prepared split (``train`` or ``val``) is a folder of shards ``00000.bin``, ``00001.bin``, ...;
read in order they are one token stream. Each shard is::

    bytes 0..1023   header: magic b"NIMATOKS", then little-endian uint32 version, uint32 bytes per
                    token (2 or 4), uint64 tokens, uint64 documents that end in the shard; zeros
    bytes 1024..    the tokens, little-endian uint16 or uint32

The header lets a reader check a shard on its own (a shard whose size disagrees with its header is
damaged), and ``numpy.memmap(path, dtype, mode="r", offset=1024)`` reads it from any tool.
A shard is written under a temporary name and renamed when complete, so a shard with its final
name is never half-written.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nima.errors import DataError

SHARD_MAGIC = b"NIMATOKS"
SHARD_VERSION = 1
HEADER_BYTES = 1024
_HEADER = struct.Struct("<8sIIQQ")  # magic, version, bytes per token, tokens, documents

DEFAULT_SHARD_TOKENS = 100_000_000
"""About 10^8 tokens (200 MB in uint16) per shard, as modded-nanogpt's FineWeb shards."""


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def shard_name(index: int) -> str:
    return f"{index:05d}.bin"


def write_header(file, dtype: np.dtype, tokens: int, documents: int) -> None:
    header = _HEADER.pack(SHARD_MAGIC, SHARD_VERSION, np.dtype(dtype).itemsize, tokens, documents)
    file.write(header.ljust(HEADER_BYTES, b"\0"))


def read_header(path: str | os.PathLike) -> tuple[np.dtype, int, int]:
    """(dtype, tokens, documents) of a shard; DataError when it is not a complete Nima shard."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(_HEADER.size)
        size = path.stat().st_size
    except OSError as err:
        raise DataError(f"cannot read token shard {path}: {err.strerror or err}") from None
    if len(raw) < _HEADER.size:
        raise DataError(f"{path} is not a Nima token shard (too short); prepare the data again")
    magic, version, itemsize, tokens, documents = _HEADER.unpack(raw)
    if magic != SHARD_MAGIC or version != SHARD_VERSION or itemsize not in (2, 4):
        raise DataError(f"{path} is not a Nima token shard (bad header); prepare the data again")
    if size != HEADER_BYTES + tokens * itemsize:
        raise DataError(
            f"{path} is truncated or damaged ({size} bytes, its header says "
            f"{HEADER_BYTES + tokens * itemsize}); prepare the data again"
        )
    return np.dtype(f"<u{itemsize}"), tokens, documents


def open_shard(path: str | os.PathLike) -> np.ndarray:
    """A shard's tokens as a read-only memory map (checked against its header)."""
    dtype, tokens, _ = read_header(path)
    if tokens == 0:
        return np.zeros(0, dtype=dtype)  # mmap cannot map 0 bytes
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(tokens,))


class ShardWriter:
    """Appends token arrays to a split folder, cutting them into shards of ``shard_tokens``.

    Where a shard ends depends only on the token stream and ``shard_tokens``, never on how the
    arrays arrive. Each shard is written as ``.<name>.tmp`` and renamed when complete. A header's
    document count is the number of ``eot`` ids in the shard (0 without one).
    """

    def __init__(
        self, folder: Path, dtype: np.dtype, shard_tokens: int = DEFAULT_SHARD_TOKENS, eot: int | None = None
    ):
        if shard_tokens < 1:
            raise DataError(f"--shard_tokens must be at least 1, got {shard_tokens}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self.shard_tokens = int(shard_tokens)
        self.eot = eot
        self.shards: list[dict[str, int | str]] = []
        self.tokens = 0
        self._file = None
        self._in_shard = 0
        self._docs_in_shard = 0

    def write(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids)
        while len(ids):
            if self._file is None:
                self._open()
            room = self.shard_tokens - self._in_shard
            part, ids = ids[:room], ids[room:]
            part.astype(self.dtype, copy=False).tofile(self._file)
            if self.eot is not None:
                self._docs_in_shard += int(np.count_nonzero(part == self.eot))
            self._in_shard += len(part)
            self.tokens += len(part)
            if self._in_shard == self.shard_tokens:
                self._close_shard()

    def close(self) -> list[dict[str, int | str]]:
        """Finish the last shard; returns ``[{"file", "tokens", "documents"}, ...]``."""
        if self._file is not None:
            self._close_shard()
        return self.shards

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            Path(self._file.name).unlink(missing_ok=True)
            self._file = None

    def _open(self) -> None:
        name = shard_name(len(self.shards))
        self._file = open(self.folder / f".{name}.tmp", "wb")
        write_header(self._file, self.dtype, 0, 0)  # rewritten when the shard is complete
        self._in_shard = 0
        self._docs_in_shard = 0

    def _close_shard(self) -> None:
        assert self._file is not None
        name = shard_name(len(self.shards))
        self._file.seek(0)
        write_header(self._file, self.dtype, self._in_shard, self._docs_in_shard)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.folder / f".{name}.tmp", self.folder / name)
        self.shards.append({"file": name, "tokens": self._in_shard, "documents": self._docs_in_shard})
        self._file = None
        self._docs_in_shard = 0


class ShardedTokens:
    """Several token arrays read as one stream: ``len``, ``[i]`` and ``[a:b]`` slices across shards.

    Slices return NumPy arrays (a view when inside one shard, a copy when crossing shards).
    """

    def __init__(self, shards: Sequence[np.ndarray]):
        self.shards = list(shards)
        lengths = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.dtype = self.shards[0].dtype if self.shards else np.dtype("<u2")

    @classmethod
    def open(cls, paths: Sequence[Path]) -> ShardedTokens:
        return cls([open_shard(Path(p)) for p in paths])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("ShardedTokens supports contiguous slices only")
            return self.read(start, max(stop - start, 0))
        index = int(key) + (len(self) if key < 0 else 0)
        if not 0 <= index < len(self):
            raise IndexError(f"token {key} out of range for {len(self)} tokens")
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.shards[shard][index - self.starts[shard]]

    def head(self, count: int) -> ShardedTokens:
        """The first ``count`` tokens, as a stream of views (nothing is read)."""
        views, left = [], max(0, count)
        for shard in self.shards:
            if left <= 0:
                break
            views.append(shard[:left])
            left -= len(views[-1])
        return ShardedTokens(views or [np.zeros(0, dtype=self.dtype)])

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        """The whole stream in memory (``np.asarray(tokens)``): for small corpora and tests."""
        whole = self.read(0, len(self))
        return whole if dtype is None else whole.astype(dtype)

    def read(self, start: int, count: int) -> np.ndarray:
        """``count`` tokens from ``start`` (fewer at the end of the stream)."""
        count = max(0, min(count, len(self) - start))
        if count == 0:
            return np.zeros(0, dtype=self.dtype)
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        local = start - int(self.starts[first])
        if local + count <= len(self.shards[first]):
            return self.shards[first][local : local + count]
        parts, shard = [], first
        while count > 0:
            piece = self.shards[shard][local : local + count]
            parts.append(piece)
            count -= len(piece)
            shard, local = shard + 1, 0
        return np.concatenate(parts)
