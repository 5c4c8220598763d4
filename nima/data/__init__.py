"""Text -> tokens on disk -> batches.

- :mod:`~nima.data.sources`: known datasets (tiny Shakespeare), text files, folders, jsonl.
- :mod:`~nima.data.tokenizer`: char, byte and byte-level BPE tokenizers (JSON on disk).
- :mod:`~nima.data.preparation`: streaming preparation into ``train.bin`` / ``val.bin`` + ``meta.json``.
- :mod:`~nima.data.stream_encoders`: text stream -> token ids on all cores (used by preparation).
- :mod:`~nima.data.fast_bpe`: optional ``tiktoken`` fast path for BPE, checked against ``tokenizers``.
- :mod:`~nima.data.datasets`: ``TokenWindowDataset`` and the guide's ``prepare_dataset``.
- :mod:`~nima.data.loader`: ``DataCollator``, ``ResumableSampler``, ``create_dataloader``.

Names are imported on first use, so that ``nima prepare`` starts without importing PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

# Which module defines each public name (imported on first use).
_MODULE_OF = {
    **dict.fromkeys(["DataConfig"], "nima.data.config"),
    **dict.fromkeys(["TokenWindowDataset", "prepare_dataset"], "nima.data.datasets"),
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
    **dict.fromkeys(
        ["PreparedData", "default_data_dir", "load_prepared", "prepare", "tokenizer_tag"],
        "nima.data.preparation",
    ),
    **dict.fromkeys(["KNOWN_DATASETS"], "nima.data.sources"),
    **dict.fromkeys(
        [
            "EOT_TEXT",
            "BPETokenizer",
            "ByteTokenizer",
            "CharTokenizer",
            "StreamDecoder",
            "Tokenizer",
            "load_tokenizer",
        ],
        "nima.data.tokenizer",
    ),
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'nima.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers see the names directly
    from nima.data.config import DataConfig  # noqa: F401
    from nima.data.datasets import TokenWindowDataset, prepare_dataset  # noqa: F401
    from nima.data.loader import (  # noqa: F401
        IGNORE_INDEX,
        DataCollator,
        EpochAwareDataLoader,
        ResumableSampler,
        create_dataloader,
        set_loader_epoch,
    )
    from nima.data.preparation import (  # noqa: F401
        PreparedData,
        default_data_dir,
        load_prepared,
        prepare,
        tokenizer_tag,
    )
    from nima.data.sources import KNOWN_DATASETS  # noqa: F401
    from nima.data.tokenizer import (  # noqa: F401
        EOT_TEXT,
        BPETokenizer,
        ByteTokenizer,
        CharTokenizer,
        StreamDecoder,
        Tokenizer,
        load_tokenizer,
    )
