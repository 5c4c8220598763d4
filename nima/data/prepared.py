"""A prepared corpus on disk: ``PreparedData`` and ``load_prepared``.

A prepared folder ``<data_dir>/<dataset>/<tokenizer tag>/`` holds ``meta.json`` (the index: the
shards of each split with their token and document counts, the token type, the tokenizer's
identity, the source files, the settings), ``tokenizer.json`` and the token shards
``train/00000.bin, ...`` and ``val/00000.bin, ...`` (:mod:`nima.data.shards`). Folders prepared
before shards (``nima-prepared-v1``: one header-less ``train.bin`` / ``val.bin``) still load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nima.data.shards import ShardedTokens, read_header, token_dtype
from nima.data.tokenizer import Tokenizer, load_tokenizer
from nima.errors import DataError

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_DATA_DIR",
    "LEGACY_FORMAT",
    "PREPARED_FORMAT",
    "PreparedData",
    "check_token_ids",
    "default_data_dir",
    "load_prepared",
    "open_tokens",
    "token_dtype",
    "tokenizer_tag",
]

PREPARED_FORMAT = "nima-prepared-v2"
LEGACY_FORMAT = "nima-prepared-v1"
DATA_DIR_ENV = "NIMA_DATA_DIR"
DEFAULT_DATA_DIR = Path("experiments") / "data"


def default_data_dir() -> Path:
    """``$NIMA_DATA_DIR`` if set, else ``experiments/data`` (relative to the working directory)."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else DEFAULT_DATA_DIR


def tokenizer_tag(tokenizer: str, vocab_size: int | None = None) -> str:
    """Folder name of a prepared dataset: ``char``, ``byte`` or ``bpe-<vocab_size>``."""
    return f"bpe-{vocab_size}" if tokenizer == "bpe" else tokenizer


@dataclass
class PreparedData:
    """A prepared dataset folder: ``path``, its ``meta`` dict and its ``tokenizer``."""

    path: Path
    meta: dict[str, Any]
    tokenizer: Tokenizer
    reused: bool = False
    """True when :func:`prepare` found a matching earlier result instead of preparing anew."""

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

    @property
    def eos_token_id(self) -> int | None:
        """The end-of-text id that ends each document, or None when the tokenizer has none."""
        return self.tokenizer.eos_token_id

    def shard_paths(self, split: str) -> list[Path]:
        """The files of ``split`` in order: ``<split>/00000.bin, ...`` (one ``<split>.bin``
        without a header in folders prepared before shards, format ``nima-prepared-v1``)."""
        _check_split(split)
        if self.meta.get("format") == LEGACY_FORMAT:
            return [self.path / f"{split}.bin"]
        return [self.path / split / shard["file"] for shard in self.meta["splits"][split]["shards"]]

    def tokens(self, split: str, vocab_size: int | None = None) -> ShardedTokens:
        """The ``train`` or ``val`` token stream, its shards memory-mapped and read as one; with
        ``vocab_size``, checked to hold only ids below it (:func:`check_token_ids`)."""
        paths = self.shard_paths(split)
        if self.meta.get("format") == LEGACY_FORMAT:
            tokens = ShardedTokens([open_tokens(paths[0], self.dtype)])
        else:
            tokens = ShardedTokens.open(paths)
        if vocab_size is not None:
            for path, shard in zip(paths, tokens.shards, strict=True):
                check_token_ids(shard, path, vocab_size)
        return tokens


def _check_split(split: str) -> None:
    if split not in ("train", "val"):
        raise DataError(f"split must be 'train' or 'val', got {split!r}")


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
    if not isinstance(meta, dict) or meta.get("format") not in (PREPARED_FORMAT, LEGACY_FORMAT):
        raise DataError(f"{meta_path} is not a Nima prepared dataset (format {PREPARED_FORMAT!r})")
    data = PreparedData(path=path, meta=meta, tokenizer=load_tokenizer(path / "tokenizer.json"))
    try:
        for split in ("train", "val"):
            if meta["format"] == LEGACY_FORMAT:
                _check_legacy_split(data, split)
            else:
                _check_shards(data, split)
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise DataError(f"{meta_path} is damaged (bad {err}); prepare the dataset again") from None
    return data


def _check_shards(data: PreparedData, split: str) -> None:
    """Every shard of ``split`` is complete and holds the tokens the index says (headers only)."""
    listed = data.meta["splits"][split]
    total = 0
    for path, shard in zip(data.shard_paths(split), listed["shards"], strict=True):
        if not path.is_file():
            raise DataError(f"{path} is missing; prepare the dataset again")
        dtype, tokens, _ = read_header(path)
        if dtype != data.dtype or tokens != int(shard["tokens"]):
            raise DataError(f"{path} does not match {data.path / 'meta.json'}; prepare the dataset again")
        total += tokens
    if total != int(data.meta[f"{split}_tokens"]):
        raise DataError(f"{data.path / 'meta.json'} is damaged (token counts); prepare the dataset again")


def _check_legacy_split(data: PreparedData, split: str) -> None:
    expected = int(data.meta[f"{split}_tokens"]) * data.dtype.itemsize
    file = data.path / f"{split}.bin"
    if not file.is_file() or file.stat().st_size != expected:
        raise DataError(
            f"{file} is missing or truncated (expected {expected} bytes); prepare the dataset again"
        )
