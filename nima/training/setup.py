"""What the Trainer learns and checks about its inputs before the first step.

Facts read from the loader and the model (batch shape, run length, what a checkpoint records
about the run) and the warnings for loaders that do not fit the config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
import warnings
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nima.distributed import DistributedContext
from nima.errors import ConfigError
from nima.models import LOSS_CHUNK_ROWS, ModelConfig
from nima.runtime import Runtime, bf16_faster_on_cpu
from nima.runtime.heap import keep_freed_memory
from nima.runtime.memory import MemoryPlan, available_memory, estimate_training_memory
from nima.training.config import TrainingConfig
from nima.training.optimizers import get_optimizer
from nima.training.schedulers import get_scheduler


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
    if config.batch_size == "auto":
        raise ConfigError(
            "training.batch_size: auto sizes the loaders that nima train builds; for a loader of your "
            "own, find the size with find_max_batch_size(model) and build the loader with it"
        )
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
        "data_identity": data_identity(dataset),
        "training_config": config.to_dict(),
    }


# The identity of each dataset's prepared data, read once: what the run started on, even if the
# folder is prepared anew while it trains (its memory map keeps reading the old files).
_DATA_IDENTITIES: weakref.WeakKeyDictionary[Any, dict[str, Any] | None] = weakref.WeakKeyDictionary()


def data_identity(dataset: Any) -> dict[str, Any] | None:
    """``train_tokens``, ``val_tokens`` and ``sha256`` of the prepared data ``dataset`` reads, from
    its ``meta.json`` (no token file is read): the sha256 covers the source text's sha256, the
    tokenizer's, the token type and the counts, so data prepared from other text, or with other
    settings, has another. None for data that is not a whole prepared split (an array, a slice)."""
    try:
        if dataset not in _DATA_IDENTITIES:
            _DATA_IDENTITIES[dataset] = _read_data_identity(dataset)
        return _DATA_IDENTITIES[dataset]
    except TypeError:  # not weak-referenceable (None, a list): read it every time
        return _read_data_identity(dataset)


def _read_data_identity(dataset: Any) -> dict[str, Any] | None:
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
    identity = None
    if tokenizer is not None and hasattr(tokenizer, "identity"):
        identity = dict(tokenizer.identity())
    elif getattr(dataset, "tokenizer_identity", None):
        identity = dict(dataset.tokenizer_identity)
    prepared = getattr(dataset, "prepared_path", None)
    if identity is not None and prepared is not None and (Path(prepared) / "tokenizer.json").is_file():
        identity["path"] = str((Path(prepared) / "tokenizer.json").resolve())
    return identity


def plan_memory(
    model: nn.Module, config: TrainingConfig, batch_size: int | None, seq_len: int | None, runtime: Runtime
) -> MemoryPlan | None:
    """The memory plan of one step (None for models Nima cannot estimate); ConfigError, with the
    figures and the fixes, when it does not fit in what the device has."""
    model_config = getattr(model, "config", None)
    if not isinstance(model_config, ModelConfig) or not batch_size or not seq_len:
        return None
    plan = estimate_for(model_config, batch_size, seq_len, runtime, config)
    if not plan.fits:
        raise ConfigError(memory_refusal(plan, model_config, config, runtime))
    if runtime.device.type == "cpu":  # where there is room, the steps keep every block they free
        alone = not runtime.dist.enabled  # torchrun's processes on one machine share its memory
        plan = dataclasses.replace(plan, keeps_every_block=alone and plan.room_to_keep_every_block)
        keep_freed_memory(large_blocks=plan.keeps_every_block)
    return plan


def estimate_for(
    model_config: ModelConfig, batch_size: int, seq_len: int, runtime: Runtime, config: TrainingConfig
) -> MemoryPlan:
    """:func:`estimate_training_memory` for this device, precision, model and training settings."""
    return estimate_training_memory(
        model_config,
        batch_size,
        seq_len,
        precision=runtime.precision.name,
        optimizer=config.optimizer_type,
        background_checkpoint=config.async_checkpoint,
        quadratic_attention=quadratic_attention(model_config, runtime),
        loss_chunk_rows=LOSS_CHUNK_ROWS,
        device=str(runtime.device),
        available=available_memory(runtime.device),
    )


def quadratic_attention(model_config: ModelConfig, runtime: Runtime) -> bool:
    """Whether attention keeps (T x T) scores: attention dropout without a fused kernel for it."""
    return model_config.attn_dropout > 0 and runtime.device.type != "cuda"


def memory_refusal(
    plan: MemoryPlan, model_config: ModelConfig, config: TrainingConfig, runtime: Runtime
) -> str:
    """One line: what the step needs, what there is, and settings that would fit."""
    accum = config.gradient_accumulation_steps
    fixes = []
    for micro in (m for m in (16, 8, 4, 2, 1) if m < plan.batch_size and plan.batch_size % m == 0):
        smaller = estimate_for(model_config, micro, plan.seq_len, runtime, config)
        if smaller.fits:
            steps = accum * plan.batch_size // micro
            fixes.append(
                f"training.batch_size: {micro} with training.gradient_accumulation_steps: {steps} "
                f"(the same sequences per step; {smaller.total / 2**30:.1f} GiB)"
            )
            break
    if not plan.gradient_checkpointing:
        checkpointed = estimate_for(
            dataclasses.replace(model_config, gradient_checkpointing=True), plan.batch_size, plan.seq_len,
            runtime, config,
        )  # fmt: skip
        if checkpointed.fits:
            fixes.append(f"model.gradient_checkpointing: true ({checkpointed.total / 2**30:.1f} GiB)")
    if plan.checkpoint_copy and plan.usable is not None and plan.total - plan.checkpoint_copy <= plan.usable:
        fixes.append(
            "training.async_checkpoint: false (saving then pauses training instead of copying the state)"
        )
    if quadratic_attention(model_config, runtime):
        fixes.append("model.attn_dropout: 0 (attention memory then grows linearly with the context)")
    fixes += ["training.batch_size: auto (measures what fits)", "a shorter model.max_seq_len"]
    return (
        f"this run will not fit in memory: one training step needs about {plan.total / 2**30:.1f} GiB "
        f"({plan.describe().removeprefix('memory plan: ')}), and {plan.usable / 2**30:.1f} GiB can be used; "
        f"fixes: {'; or '.join(fixes)}"
    )


def out_of_memory(step: int, plan: MemoryPlan | None) -> str:
    """The one-line message for a GPU that ran out of memory during training."""
    figures = f" (the plan: {plan.describe().removeprefix('memory plan: ')})" if plan is not None else ""
    return (
        f"the GPU ran out of memory at step {step + 1}{figures}; use a smaller training.batch_size with "
        "more training.gradient_accumulation_steps (or training.batch_size: auto), "
        "model.gradient_checkpointing: true, or a shorter model.max_seq_len"
    )


def largest_planned_batch(
    model_config: ModelConfig, upper: int, effective: int, runtime: Runtime, config: TrainingConfig
) -> int:
    """The largest divisor of ``effective`` up to ``upper`` whose memory plan fits (at least 1)."""
    for micro in range(upper, 0, -1):
        if effective % micro == 0:
            plan = estimate_for(model_config, micro, model_config.max_seq_len, runtime, config)
            if plan.fits:
                return micro
    return 1


def resumed_precision(checkpoint: str | Path, requested: str, device: str) -> str | None:
    """The checkpoint's precision when a resumed run should keep it: with ``auto``, where this
    machine runs it well (a run should not change precision half-way because a micro-benchmark
    answered differently this time). None: choose as ``requested`` says."""
    if requested != "auto":
        return None
    from nima.checkpoint import load_checkpoint_file
    from nima.runtime.device import device_kind
    from nima.runtime.precision import cpu_has_bf16

    saved = load_checkpoint_file(checkpoint, mmap=True).get("precision")
    on_gpu = device_kind(device) == "cuda"
    fast_here = {"fp32": True, "bf16": on_gpu or cpu_has_bf16(), "fp16": on_gpu}
    return saved if fast_here.get(saved, False) else None


def build_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """The optimizer ``config`` asks for (``optimizer_type`` and its settings)."""
    return get_optimizer(
        model,
        config.optimizer_type,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        betas=config.betas,
        eps=config.eps,
        momentum=config.momentum,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainingConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule ``config`` asks for, over ``total_steps`` optimizer steps."""
    return get_scheduler(
        optimizer,
        config.lr_scheduler_type,
        num_training_steps=total_steps,
        num_warmup_steps=config.warmup_steps,
        min_lr=config.min_lr,
        num_cycles=config.lr_num_cycles,
    )


def check_output_dir(output_dir: str | Path) -> None:
    """ConfigError unless the run can write under ``output_dir`` (its ``checkpoints/`` and ``logs/``
    folders are created, and a file is written and removed in each): found now, not at the first
    save, and not as a traceback."""
    for folder in (Path(output_dir) / "checkpoints", Path(output_dir) / "logs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            where = f" ({err.filename})" if err.filename and str(err.filename) != str(folder) else ""
            raise ConfigError(
                f"training.output_dir {output_dir} cannot be written: {folder}: "
                f"{err.strerror or err}{where}; choose a writable folder with --training.output_dir=DIR"
            ) from None
