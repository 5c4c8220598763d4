"""``DataConfig``: the ``data:`` section of a run config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from nima.errors import ConfigError


@dataclass
class DataConfig:
    """Which text to train on and how to tokenize and load it."""

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
    seed: int | None = None
    """Seed of the window offsets and batch order; None: the training seed."""

    def __post_init__(self) -> None:
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            raise ConfigError("data.tokenizer must be char, byte, bpe or the path of a tokenizer.json")
        if self.tokenizer not in ("char", "byte", "bpe") and not Path(self.tokenizer).expanduser().exists():
            raise ConfigError(
                f"data.tokenizer={self.tokenizer!r} is not one of: char, byte, bpe (nor an existing "
                "tokenizer.json path)"
            )
        if not isinstance(self.val_fraction, (int, float)) or not 0.0 < float(self.val_fraction) < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction!r} must be between 0 and 1 (exclusive)")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers!r} must be an integer >= 0")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError("data.dataset must be a dataset name or a path")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataConfig:
        """Build from a dict (a YAML section); an unknown key is a ConfigError naming it."""
        import difflib

        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean data.{close[0]}?)" if close else f"; valid keys: {', '.join(known)}"
                raise ConfigError(f"unknown key data.{key}{hint}")
        return cls(**values)
