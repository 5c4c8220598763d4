"""``DataConfig``: the ``data:`` section of a run config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nima.config_fields import ConfigSection, check_types, suggest
from nima.data.sources import check_encoding
from nima.errors import ConfigError, DataError

TOKENIZERS = ("char", "byte", "bpe")


@dataclass
class DataConfig(ConfigSection, section="data"):
    """Which text to train on and how to tokenize and load it (the data order is seeded by
    ``training.seed``)."""

    dataset: str = "tiny_shakespeare"
    """A known dataset name (tiny_shakespeare) or a path: a .txt file, a folder of .txt files, a .jsonl."""
    tokenizer: str = "char"
    """char | byte | bpe (BPE's vocabulary size is model.vocab_size), or the path of a saved
    tokenizer.json to encode with as it is (fine-tuning a model that uses it)."""
    data_dir: str | None = None
    """Where raw and prepared data live; None: $NIMA_DATA_DIR, else experiments/data."""
    text_field: str = "text"
    """The field that holds the text in each line of a .jsonl dataset."""
    encoding: str = "utf-8"
    """Text encoding of the source files."""
    val_fraction: float = 0.1
    """Share of the text, taken from its end, kept for validation."""
    num_workers: int = 0
    """DataLoader worker processes (0: load in the training process)."""
    pin_memory: bool = False
    """Pin batches in page-locked memory (faster copies to a GPU)."""

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
        try:
            check_encoding(self.encoding, option="data.encoding")
        except DataError as err:  # a config value: found with the others, before any work
            raise ConfigError(str(err)) from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
