"""What a checkpoint records about its run besides the state: model config, tokenizer identity
(and where its tokenizer.json is), the prepared data and its identity, the training config.

Read once, when a run is assembled: the identity of the data it started on, even if the folder is
prepared anew while it trains (its memory map keeps reading the old files).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from nima.checkpoint.format import load_checkpoint_file
from nima.config.training import TrainingConfig
from nima.runtime.device import device_kind
from nima.runtime.precision import cpu_has_bf16


def run_metadata(
    model: nn.Module, config: TrainingConfig, loader: Iterable, tokenizer: Any
) -> dict[str, Any]:
    """The entries :func:`~nima.checkpoint.make_checkpoint` takes besides the state."""
    dataset = getattr(loader, "dataset", None)
    model_config = getattr(model, "config", None)
    return {
        "model_config": model_config.to_dict() if hasattr(model_config, "to_dict") else None,
        "tokenizer": tokenizer_identity(tokenizer, dataset),
        "prepared_path": getattr(dataset, "prepared_path", None),
        "data_identity": data_identity(dataset),
        "training_config": config.to_dict(),
    }


def data_identity(dataset: Any) -> dict[str, Any] | None:
    """``train_tokens``, ``val_tokens`` and ``sha256`` of the prepared data ``dataset`` reads, from
    its ``meta.json`` (no token file is read): the sha256 covers the source text's sha256, the
    tokenizer's, the token type and the counts, so data prepared from other text, or with other
    settings, has another. None for data that is not a whole prepared split (an array, a slice)."""
    prepared = getattr(dataset, "prepared_path", None)
    if prepared is None:
        return None
    try:
        meta = json.loads((Path(prepared) / "meta.json").read_text(encoding="utf-8"))
        train, val = int(meta["train_tokens"]), int(meta["val_tokens"])
        record = {
            "source_sha256": meta["source"]["sha256"],
            "tokenizer_sha256": meta["tokenizer"]["sha256"],
            "dtype": meta["dtype"],
            "train_tokens": train,
            "val_tokens": val,
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if getattr(dataset, "num_tokens", None) not in (train, val):
        return None  # a slice of the split, or other tokens: the record would not describe them
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()
    return {"train_tokens": train, "val_tokens": val, "sha256": digest}


def tokenizer_identity(tokenizer: Any, dataset: Any) -> dict[str, Any] | None:
    """The tokenizer's identity (kind, vocabulary size, sha256), with the path of the prepared
    folder's tokenizer.json where there is one."""
    identity = None
    if tokenizer is not None and hasattr(tokenizer, "identity"):
        identity = dict(tokenizer.identity())
    elif getattr(dataset, "tokenizer_identity", None):
        identity = dict(dataset.tokenizer_identity)
    prepared = getattr(dataset, "prepared_path", None)
    if identity is not None and prepared is not None and (Path(prepared) / "tokenizer.json").is_file():
        identity["path"] = str((Path(prepared) / "tokenizer.json").resolve())
    return identity


def resumed_precision(checkpoint: str | Path, requested: str, device: str) -> str | None:
    """The checkpoint's precision when a resumed run should keep it: with ``auto``, where this
    machine runs it well (a run should not change precision half-way because a micro-benchmark
    answered differently this time). None: choose as ``requested`` says."""
    if requested != "auto":
        return None
    saved = load_checkpoint_file(checkpoint, mmap=True).get("precision")
    on_gpu = device_kind(device) == "cuda"
    fast_here = {"fp32": True, "bf16": on_gpu or cpu_has_bf16(), "fp16": on_gpu}
    return saved if fast_here.get(saved, False) else None
