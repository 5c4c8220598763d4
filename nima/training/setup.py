"""What the Trainer learns and checks about its inputs before the first step.

Facts read from the loader and the model (batch shape, run length, what a checkpoint records
about the run) and the warnings for loaders that do not fit the config.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nima.distributed import DistributedContext
from nima.errors import ConfigError
from nima.runtime import bf16_faster_on_cpu
from nima.training.config import TrainingConfig


def batch_shape(loader: Iterable, model: nn.Module) -> tuple[int | None, int | None]:
    """(sequences per batch, tokens per sequence) as far as the loader and model tell."""
    seq_len = getattr(getattr(loader, "dataset", None), "max_length", None)
    if seq_len is None:
        seq_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    return getattr(loader, "batch_size", None), seq_len


def bf16_benchmark(model: nn.Module, batch_size: int | None, seq_len: int | None) -> Callable[[], bool]:
    """The CPU micro-benchmark that decides ``precision: auto``, at this model's MLP shapes."""
    cfg = getattr(model, "config", None)
    d_model = getattr(cfg, "d_model", 512)
    d_ff = getattr(cfg, "ff_dim", None) or getattr(cfg, "d_ff", None) or 4 * d_model
    rows = (batch_size or 8) * (seq_len or 256)

    def run() -> bool:
        with torch.random.fork_rng(devices=[]):  # its random inputs stay out of training's stream
            return bf16_faster_on_cpu(rows, d_model, d_ff)

    return run


def warn_about_loader(
    loader: Iterable, config: TrainingConfig, batch_size: int | None, dist: DistributedContext
) -> None:
    """Warn when the loader's batches disagree with the config or are not sharded by rank."""
    if batch_size is not None and batch_size != config.batch_size:
        warnings.warn(
            f"TrainingConfig.batch_size={config.batch_size} but the train loader yields batches of "
            f"{batch_size}; the Trainer uses the loader's batches (batch_size only sizes "
            "the loaders that scripts/train.py builds)",
            stacklevel=4,
        )
    sampler = getattr(loader, "sampler", None)
    shards = getattr(sampler, "world_size", getattr(sampler, "num_replicas", 1))
    if dist.enabled and shards != dist.world_size:
        warnings.warn(
            "running on several processes but the train loader is not sharded by rank: every "
            "process sees the same batches; build it with create_dataloader(rank=, world_size=)",
            stacklevel=4,
        )


def steps_per_epoch(batches_per_epoch: int | None, accumulation: int) -> int | None:
    return math.ceil(batches_per_epoch / accumulation) if batches_per_epoch else None


def total_steps(config: TrainingConfig, per_epoch: int | None) -> int:
    """``max_steps``, else ``num_epochs`` x steps per epoch."""
    if config.max_steps is not None:
        return config.max_steps
    if per_epoch:
        return config.num_epochs * per_epoch
    raise ConfigError("the train loader has no length; set training.max_steps")


def run_metadata(
    model: nn.Module, config: TrainingConfig, loader: Iterable, tokenizer: Any
) -> dict[str, Any]:
    """What a checkpoint records about the run besides its state: model config, tokenizer
    identity (and where its tokenizer.json is), prepared data, training config."""
    dataset = getattr(loader, "dataset", None)
    model_config = getattr(model, "config", None)
    return {
        "model_config": model_config.to_dict() if hasattr(model_config, "to_dict") else None,
        "tokenizer": tokenizer_identity(tokenizer, dataset),
        "prepared_path": getattr(dataset, "prepared_path", None),
        "training_config": config.to_dict(),
    }


def tokenizer_identity(tokenizer: Any, dataset: Any) -> dict[str, Any] | None:
    identity = None
    if tokenizer is not None and hasattr(tokenizer, "identity"):
        identity = dict(tokenizer.identity())
    elif getattr(dataset, "tokenizer_identity", None):
        identity = dict(dataset.tokenizer_identity)
    prepared = getattr(dataset, "prepared_path", None)
    if identity is not None and prepared is not None and (Path(prepared) / "tokenizer.json").is_file():
        identity["path"] = str((Path(prepared) / "tokenizer.json").resolve())
    return identity
