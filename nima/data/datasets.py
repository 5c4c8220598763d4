"""Map-style datasets over a memory-mapped token stream (one or several shards), and the guide's
``prepare_dataset``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from nima.data.documents import ALIGN_WINDOWS, aligned_window_starts, document_starts
from nima.data.preparation import prepare
from nima.data.prepared import PreparedData
from nima.data.shards import ShardedTokens
from nima.data.token_stream import WindowReader, as_stream, reopen, reopen_recipe
from nima.data.tokenizer import Tokenizer
from nima.errors import ConfigError, DataError


class StackedWindows(list):
    """The windows of one batch: the list of 1-D tensors a DataLoader's ``collate_fn`` expects,
    also held as one (B, T + 1) tensor (``stacked``) whose rows they are."""

    def __init__(self, stacked: torch.Tensor) -> None:
        super().__init__(stacked.unbind(0))
        self.stacked = stacked


class TokenWindowDataset(Dataset):
    """Windows of ``max_length + 1`` consecutive tokens; item ``i`` is a 1-D LongTensor.

    A window holds the inputs and, shifted by one, their targets; consecutive windows start
    ``max_length`` tokens apart, so that they share one token and every token is a target exactly
    once per epoch (an epoch is one pass over the tokens, not one pass over every start offset).

    Training (``random_offset=True``): each epoch starts the windows at a fresh offset, drawn from
    ``(seed, epoch)`` — call :meth:`set_epoch` — between 0 and the tokens left over by the windows
    (at least ``max_length - 1``, less than ``2 * max_length``), so that over epochs every position
    is trained, in every place of a window. ``len`` is the same for every epoch.

    Validation (``random_offset=False``): offset 0, and with ``include_partial`` a last, shorter
    window covers the tail so every token is evaluated (the collator pads it with ignored labels).

    ``align_windows="documents"`` (needs ``eos_token_id``): windows start where documents start
    (:mod:`nima.data.documents`), and every ``max_length`` tokens within a longer document; no
    random offset. The document starts are found once per dataset object, by a scan of the tokens.

    ``tokens`` is an array (e.g. ``np.memmap``), a :class:`~nima.data.shards.ShardedTokens` (shards
    read as one stream: windows may cross from one shard into the next), or the path of a ``.bin``
    file without a header, of ``dtype``. Memory-mapped files are not copied into DataLoader workers:
    each worker maps them again.
    """

    def __init__(
        self,
        tokens: np.ndarray | ShardedTokens | str | os.PathLike,
        max_length: int,
        *,
        dtype: np.dtype | str | None = None,
        seed: int = 0,
        random_offset: bool = True,
        include_partial: bool = False,
        tokenizer_identity: dict[str, Any] | None = None,
        prepared_path: str | os.PathLike | None = None,
        align_windows: str = "none",
        eos_token_id: int | None = None,
    ):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise DataError(f"max_length must be a positive integer, got {max_length!r}")
        if align_windows not in ALIGN_WINDOWS:
            raise ConfigError(
                f"data.align_windows must be one of {', '.join(ALIGN_WINDOWS)}, got {align_windows!r}"
            )
        if align_windows == "documents" and eos_token_id is None:
            raise ConfigError(
                "data.align_windows: documents needs a tokenizer with an end-of-text id, and this data's "
                "has none (a char tokenizer of one document has none); use data.align_windows: none, or "
                "data.tokenizer: byte or bpe"
            )
        self.max_length = max_length
        self.seed = int(seed)
        self.random_offset = random_offset
        self.include_partial = include_partial
        self.tokenizer_identity = tokenizer_identity
        self.prepared_path = Path(prepared_path) if prepared_path is not None else None
        self.align_windows = align_windows
        self.eos_token_id = eos_token_id
        self._stream: ShardedTokens | None = as_stream(tokens, dtype)
        self._reopen = reopen_recipe(self._stream)
        self.num_tokens = len(self._stream)
        self._doc_starts: np.ndarray | None = None  # where documents start (align_windows)
        self._starts: np.ndarray | None = None  # document-aligned window starts
        self._plan_windows()
        self.epoch = 0
        self.offset = 0
        self._rows: np.ndarray | None = None  # see _full_windows
        self._rows_offset = 0
        self._reader: WindowReader | None = None  # reads windows over several shards

    def _plan_windows(self) -> None:
        n, stride = self.num_tokens, self.max_length
        if n < 2:
            raise DataError(
                f"the token stream has {n} token(s); at least 2 are needed (one input, one target)"
            )
        if n < stride + 1 and (self.random_offset or self.align_windows == "documents"):
            raise DataError(
                f"the corpus has {n} tokens, shorter than one window of max_length + 1 = {stride + 1}; "
                f"use max_length <= {n - 1} or a larger corpus"
            )
        if self.align_windows == "documents":
            self._starts = aligned_window_starts(self.document_starts(), n, stride)
            self._length, self.max_offset = len(self._starts), 0
        elif self.random_offset:
            # One window fewer than would fit at offset 0 leaves room for offsets up to the whole
            # slack (>= stride - 1), so len() never changes and the tail gets trained too.
            self._length = max(1, (n - stride) // stride)
            self.max_offset = n - 1 - self._length * stride
        else:
            full = (n - 1) // stride
            partial = self.include_partial and (n - 1) % stride > 0
            self._length = full + int(partial)
            self.max_offset = 0
            if self._length == 0:
                raise DataError(
                    f"the corpus has {n} tokens, shorter than one window of max_length + 1 = {stride + 1}; "
                    f"use max_length <= {n - 1} or a larger corpus"
                )

    @property
    def tokens(self) -> ShardedTokens:
        """The token stream, its shards read as one (memory-mapped again on first use in a worker)."""
        if self._stream is None:
            self._stream = reopen(self._reopen)
        return self._stream

    def document_starts(self) -> np.ndarray:
        """Where the stream's documents start (:func:`nima.data.documents.document_starts`); the
        scan runs once per dataset object."""
        if self._doc_starts is None:
            if self.eos_token_id is None:
                raise ConfigError("document starts need the tokenizer's end-of-text id (eos_token_id)")
            self._doc_starts = document_starts(self.tokens, self.eos_token_id)
        return self._doc_starts

    def set_epoch(self, epoch: int) -> None:
        """Choose this epoch's window offset (deterministic from ``seed`` and ``epoch``)."""
        self.epoch = int(epoch)
        if self.random_offset and self.max_offset > 0:
            rng = np.random.default_rng([self.seed, self.epoch])
            self.offset = int(rng.integers(0, self.max_offset + 1))
        else:
            self.offset = 0

    def __len__(self) -> int:
        return self._length

    def window_starts(self, indices: np.ndarray) -> np.ndarray:
        """The stream positions where windows ``indices`` (non-negative, in range) start."""
        if self._starts is not None:
            return self._starts[indices]
        return self.offset + np.asarray(indices, dtype=np.int64) * self.max_length

    def __getitem__(self, index: int) -> torch.Tensor:
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"window {index} out of range for {self._length} windows")
        start = int(self.window_starts(np.array([index]))[0])
        window = self.tokens.read(start, self.max_length + 1)
        return torch.from_numpy(window.astype(np.int64))

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        """Windows ``indices`` with one gather instead of one slice per window (the DataLoader's
        batched fetch); the same tensors as ``[self[i] for i in indices]``. Full windows come as
        a :class:`StackedWindows`, which :class:`DataCollator` takes without stacking again.

        Training calls this once a step, between steps that have pushed its code out of the CPU's
        caches: it makes as few calls as it can (each costs tens of microseconds there).
        """
        if not indices:
            return []
        if self._starts is None and len(self.tokens.shards) == 1:
            rows = self._full_windows()
            if min(indices) < 0 or max(indices) >= len(rows):  # one by one: a short tail, or an error
                return [self[int(i)] for i in indices]
            return StackedWindows(torch.from_numpy(rows[indices].astype(np.int64)))
        full = self._length - int(self._starts is None and self._has_partial_tail())
        if min(indices) < 0 or max(indices) >= full:
            return [self[int(i)] for i in indices]
        if self._reader is None:
            self._reader = WindowReader(self.tokens, self.max_length + 1)
        starts = self.window_starts(np.asarray(indices, dtype=np.int64))
        return StackedWindows(torch.from_numpy(self._reader(starts)))

    def _has_partial_tail(self) -> bool:
        return self.offset + self._length * self.max_length + 1 > self.num_tokens

    def _full_windows(self) -> np.ndarray:
        """This epoch's full windows (of the dataset's ``len``) as the rows of a (windows,
        max_length + 1) view of a one-shard stream: no copy; made again when the offset changes."""
        if self._rows is None or self._rows_offset != self.offset:
            tokens = self.tokens.shards[0][self.offset :]
            count = min((len(tokens) - 1) // self.max_length, self._length)
            shape, step = (count, self.max_length + 1), tokens.strides[0]
            strides = (self.max_length * step, step)
            self._rows = np.lib.stride_tricks.as_strided(tokens, shape, strides, writeable=False)
            self._rows_offset = self.offset
        return self._rows

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._reopen is not None:
            state["_stream"] = None  # workers map the files themselves instead of copying them
        state["_rows"] = state["_reader"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"TokenWindowDataset(tokens={self.num_tokens}, max_length={self.max_length}, "
            f"windows={self._length}, random_offset={self.random_offset}, "
            f"align_windows={self.align_windows!r})"
        )

    @classmethod
    def from_prepared(
        cls, data: PreparedData, split: str, max_length: int, seed: int = 0, **kwargs: Any
    ) -> TokenWindowDataset:
        """The ``train`` (random offsets) or ``val`` (offset 0, tail included) split of ``data``,
        all its shards read as one stream. ``align_windows="documents"`` applies to ``train``
        only: validation keeps plain windows, so that its loss stays comparable."""
        if split not in ("train", "val"):
            raise DataError(f"split must be 'train' or 'val', got {split!r}")
        training = split == "train"
        kwargs.setdefault("random_offset", training)
        kwargs.setdefault("include_partial", not training)
        if not training:
            kwargs["align_windows"] = "none"
        try:
            return cls(
                data.tokens(split),
                max_length,
                seed=seed,
                tokenizer_identity=data.tokenizer.identity(),
                prepared_path=data.path,
                eos_token_id=data.tokenizer.eos_token_id,
                **kwargs,
            )
        except DataError as err:
            raise DataError(f"{split} split of {data.path}: {err}") from None


def prepare_dataset(
    dataset_name: str = "tiny_shakespeare",
    tokenizer_type: str = "char",
    max_length: int = 512,
    vocab_size: int | None = None,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    **prepare_options: Any,
) -> tuple[TokenWindowDataset, TokenWindowDataset, Tokenizer]:
    """Prepare (or reuse) a dataset and return ``(train_dataset, val_dataset, tokenizer)``.

    ``max_length`` is the model's context: each item holds ``max_length + 1`` tokens. Other
    keyword options (``encoding``, ``text_field``, ``val_fraction``, ``quiet``, ``force``) go to
    :func:`nima.data.preparation`.
    """
    data = prepare(dataset_name, tokenizer_type, vocab_size=vocab_size, data_dir=data_dir, **prepare_options)
    train = TokenWindowDataset.from_prepared(data, "train", max_length, seed=seed)
    val = TokenWindowDataset.from_prepared(data, "val", max_length, seed=seed)
    return train, val, data.tokenizer
