"""Text -> tokens on disk -> batches.

- :mod:`~nima.data.sources`: ``--dataset`` -> the corpus' files (known datasets, files, folders, globs).
- :mod:`~nima.data.readers`: documents out of text, jsonl(.gz/.zst), parquet and datasets folders.
- :mod:`~nima.data.tokenizer`: char, byte and BPE tokenizers (JSON on disk); ``pretrained``: gpt2.
- :mod:`~nima.data.preparation`: corpus -> token shards + ``meta.json`` on every core; it plans
  work units (``units``), fits the tokenizer (``tokenizer_fit``), encodes units in processes
  (``unit_encoding``) and writes shards (``shards``); ``prepared`` opens the result.
- :mod:`~nima.data.stream_encoders`: document text -> token ids (used by unit encoding).
- :mod:`~nima.data.fast_bpe`: optional ``tiktoken`` fast path for BPE, checked against ``tokenizers``.
- :mod:`~nima.data.datasets`: ``TokenWindowDataset`` and the guide's ``prepare_dataset``; windows
  read across shards (``token_stream``), optionally aligned to documents (``documents``);
  ``mixture``: several corpora by weight.
- :mod:`~nima.data.loader`: ``DataCollator``, ``ResumableSampler``, ``create_dataloader``.

The torch-free modules are imported here. ``TokenWindowDataset``, ``prepare_dataset`` and the
loader names need PyTorch: they are imported on first use, so that ``nima prepare`` starts without
importing it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nima.data.config import DataConfig
from nima.data.preparation import PreparedData, default_data_dir, load_prepared, prepare, tokenizer_tag
from nima.data.sources import KNOWN_DATASETS
from nima.data.tokenizer import (
    EOT_TEXT,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    StreamDecoder,
    Tokenizer,
    load_tokenizer,
)

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "DataCollator",
    "DataConfig",
    "EOT_TEXT",
    "EpochAwareDataLoader",
    "IGNORE_INDEX",
    "KNOWN_DATASETS",
    "MixtureDataset",
    "PreparedData",
    "ResumableSampler",
    "StreamDecoder",
    "TokenWindowDataset",
    "Tokenizer",
    "create_dataloader",
    "default_data_dir",
    "load_prepared",
    "load_tokenizer",
    "prepare",
    "prepare_dataset",
    "set_loader_epoch",
    "tokenizer_tag",
]

# The PyTorch-backed names and their modules, imported on first use (lazy: nima prepare needs no torch).
_TORCH_MODULE_OF = {
    **dict.fromkeys(["TokenWindowDataset", "prepare_dataset"], "nima.data.datasets"),
    "MixtureDataset": "nima.data.mixture",
    **dict.fromkeys(
        [
            "IGNORE_INDEX",
            "DataCollator",
            "EpochAwareDataLoader",
            "ResumableSampler",
            "create_dataloader",
            "set_loader_epoch",
        ],
        "nima.data.loader",
    ),
}


def __getattr__(name: str) -> Any:
    module = _TORCH_MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'nima.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers see the lazy names directly
    from nima.data.datasets import TokenWindowDataset, prepare_dataset  # noqa: F401
    from nima.data.loader import (  # noqa: F401
        IGNORE_INDEX,
        DataCollator,
        EpochAwareDataLoader,
        ResumableSampler,
        create_dataloader,
        set_loader_epoch,
    )
    from nima.data.mixture import MixtureDataset  # noqa: F401
