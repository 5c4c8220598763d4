"""``DataConfig``: the ``data:`` section of a run config."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nima.config_fields import ConfigSection, check_types, suggest
from nima.data.documents import ALIGN_WINDOWS
from nima.data.sources import check_encoding
from nima.errors import ConfigError, DataError

TOKENIZERS = ("char", "byte", "bpe", "gpt2")


@dataclass
class DataConfig(ConfigSection, section="data"):
    """Which text to train on and how to tokenize and load it (the data order is seeded by
    ``training.seed``)."""

    dataset: str = "tiny_shakespeare"
    """A known dataset name (tiny_shakespeare) or a path: a file, a folder (searched recursively) or
    a glob of .txt, .md, .jsonl, .jsonl.gz, .jsonl.zst and .parquet files, or a folder written by
    Hugging Face ``datasets.Dataset.save_to_disk``."""
    tokenizer: str = "char"
    """char | byte | bpe (BPE's vocabulary size is model.vocab_size) | gpt2 (GPT-2's own BPE), or
    the path of a saved tokenizer.json to encode with as it is (fine-tuning a model that uses it)."""
    data_dir: str | None = None
    """Where raw and prepared data live; None: $NIMA_DATA_DIR, else experiments/data."""
    text_field: str = "text"
    """The field that holds the text in each line of a .jsonl dataset."""
    encoding: str = "utf-8"
    """Text encoding of the source files."""
    val_fraction: float = 0.1
    """Share kept for validation: of the documents (whole ones, chosen by a hash of their text),
    or, for a corpus that is one document, of its text, from the end."""
    val_files: str | None = None
    """A glob of the dataset's files that are the validation split (instead of val_fraction)."""
    prepare_workers: int | None = None
    """Processes that encode the corpus when it is prepared; None: every core."""
    shard_tokens: int = 100_000_000
    """Tokens per shard file of the prepared corpus."""
    tokenizer_sample_bytes: int = 1_000_000_000
    """At most this much text (spread over the corpus) trains a BPE tokenizer."""
    num_workers: int = 0
    """DataLoader worker processes (0: load in the training process)."""
    pin_memory: bool = False
    """Pin batches in page-locked memory (faster copies to a GPU)."""
    align_windows: str = "none"
    """Where training windows start: ``none``, every max_seq_len tokens from a random offset each
    epoch (every token a target once per epoch); ``documents``, at each document's start (its
    end-of-text token, as BOS) and every max_seq_len tokens within a longer one. ``documents``
    needs a tokenizer with an end-of-text id; validation windows stay plain."""
    mixture: list[dict[str, Any]] | None = None
    """Several corpora trained on together: ``[{dataset: <prepared folder, or a dataset as in
    data.dataset>, weight: 0.7}, ...]`` (then data.dataset is not used). They share one tokenizer:
    the first entry's (data.tokenizer) encodes the others."""

    def __post_init__(self) -> None:
        need = check_types(self)
        need.that(bool(self.dataset), "dataset", "a dataset name or a path")
        tokenizer = self.tokenizer
        need.that(
            tokenizer in TOKENIZERS or (bool(tokenizer) and Path(tokenizer).expanduser().exists()),
            "tokenizer",
            "char, byte, bpe or the path of an existing tokenizer.json",
            suggest(tokenizer, TOKENIZERS),
        )
        need("in (0, 1)", "val_fraction")
        need(">= 0", "num_workers")
        need.one_of("align_windows", ALIGN_WINDOWS)
        if self.mixture is not None:
            _check_mixture(self.mixture)
        need(">= 1", "shard_tokens", "tokenizer_sample_bytes", "prepare_workers")
        try:
            check_encoding(self.encoding, option="data.encoding")
        except DataError as err:  # a config value: found with the others, before any work
            raise ConfigError(str(err)) from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MIXTURE_KEYS = ("dataset", "weight")


def _check_mixture(mixture: list[dict[str, Any]]) -> None:
    if not mixture:
        raise ConfigError("data.mixture must list at least one {dataset: ..., weight: ...}, or be null")
    for i, item in enumerate(mixture):
        where = f"data.mixture[{i}]"
        for key in item:
            if key not in MIXTURE_KEYS:
                raise ConfigError(
                    f"unknown key {where}.{key}{suggest(str(key), MIXTURE_KEYS)}; it takes dataset and weight"
                )
        dataset, weight = item.get("dataset"), item.get("weight")
        if not isinstance(dataset, str) or not dataset:
            raise ConfigError(f"{where}.dataset must be a prepared folder or a dataset, got {dataset!r}")
        number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
        if not (number and math.isfinite(weight) and weight > 0):
            raise ConfigError(f"{where}.weight must be a number > 0, got {weight!r}")
