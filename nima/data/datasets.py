"""Map-style datasets over a memory-mapped token stream, and the guide's ``prepare_dataset``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from nima.data.preparation import PreparedData, open_tokens, prepare
from nima.data.tokenizer import Tokenizer
from nima.errors import DataError


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

    ``tokens`` is an array (e.g. ``np.memmap``) or the path of a ``.bin`` file with ``dtype``.
    The memory map is opened lazily in each process, so DataLoader workers do not copy the data.
    """

    def __init__(
        self,
        tokens: np.ndarray | str | os.PathLike,
        max_length: int,
        *,
        dtype: np.dtype | str | None = None,
        seed: int = 0,
        random_offset: bool = True,
        include_partial: bool = False,
        tokenizer_identity: dict[str, Any] | None = None,
        prepared_path: str | os.PathLike | None = None,
    ):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise DataError(f"max_length must be a positive integer, got {max_length!r}")
        self.max_length = max_length
        self.seed = int(seed)
        self.random_offset = random_offset
        self.include_partial = include_partial
        self.tokenizer_identity = tokenizer_identity
        self.prepared_path = Path(prepared_path) if prepared_path is not None else None
        if isinstance(tokens, (str, os.PathLike)):
            self._path: Path | None = Path(tokens)
            self._dtype = np.dtype(dtype or "<u2")
            self._tokens: np.ndarray | None = None
            self.num_tokens = self._path.stat().st_size // self._dtype.itemsize
        else:
            self._path, self._tokens = None, np.asarray(tokens)
            self._dtype = self._tokens.dtype
            self.num_tokens = len(self._tokens)
        self._plan_windows()
        self.epoch = 0
        self.offset = 0
        self._rows: np.ndarray | None = None  # see _full_windows
        self._rows_offset = 0

    def _plan_windows(self) -> None:
        n, stride = self.num_tokens, self.max_length
        if n < 2:
            raise DataError(
                f"the token stream has {n} token(s); at least 2 are needed (one input, one target)"
            )
        if self.random_offset:
            if n < stride + 1:
                raise DataError(
                    f"the corpus has {n} tokens, shorter than one window of max_length + 1 = {stride + 1}; "
                    f"use max_length <= {n - 1} or a larger corpus"
                )
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
    def tokens(self) -> np.ndarray:
        """The token stream (memory-mapped on first use in this process)."""
        if self._tokens is None:
            assert self._path is not None
            self._tokens = open_tokens(self._path, self._dtype)
        return self._tokens

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

    def __getitem__(self, index: int) -> torch.Tensor:
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"window {index} out of range for {self._length} windows")
        start = self.offset + index * self.max_length
        window = self.tokens[start : start + self.max_length + 1]
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
        rows = self._full_windows()
        if min(indices) < 0 or max(indices) >= len(rows):  # one by one: a short tail, or an error
            return [self[int(i)] for i in indices]
        return StackedWindows(torch.from_numpy(rows[indices].astype(np.int64)))

    def _full_windows(self) -> np.ndarray:
        """This epoch's full windows (of the dataset's ``len``) as the rows of a (windows,
        max_length + 1) view of the tokens: no copy; made again when the offset changes."""
        if self._rows is None or self._rows_offset != self.offset:
            tokens = self.tokens[self.offset :]
            count = min((len(tokens) - 1) // self.max_length, self._length)
            shape, step = (count, self.max_length + 1), tokens.strides[0]
            strides = (self.max_length * step, step)
            self._rows = np.lib.stride_tricks.as_strided(tokens, shape, strides, writeable=False)
            self._rows_offset = self.offset
        return self._rows

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._path is not None:
            state["_tokens"] = None  # workers map the file themselves instead of copying it
        state["_rows"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"TokenWindowDataset(tokens={self.num_tokens}, max_length={self.max_length}, "
            f"windows={self._length}, random_offset={self.random_offset})"
        )

    @classmethod
    def from_prepared(
        cls, data: PreparedData, split: str, max_length: int, seed: int = 0, **kwargs: Any
    ) -> TokenWindowDataset:
        """The ``train`` (random offsets) or ``val`` (offset 0, tail included) split of ``data``."""
        if split not in ("train", "val"):
            raise DataError(f"split must be 'train' or 'val', got {split!r}")
        training = split == "train"
        kwargs.setdefault("random_offset", training)
        kwargs.setdefault("include_partial", not training)
        try:
            return cls(
                data.path / f"{split}.bin",
                max_length,
                dtype=data.dtype,
                seed=seed,
                tokenizer_identity=data.tokenizer.identity(),
                prepared_path=data.path,
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
