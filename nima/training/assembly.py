"""The assembler: a training run built once, in order, from a :class:`~nima.config.RunConfig`.

:func:`assemble` is the one place a run is put together; ``nima train``, ``nima sweep``, the
notebooks, the benchmarks and ``Trainer(model, config, train_dataloader, ...)`` from Python all
go through it. Each step runs exactly once, in this order, and the parts never build each other:

 1. distributed set-up           the torchrun process group, if any: everything after knows its rank
 2. run folder                   ``training.output_dir`` checked writable (an earlier run there is
                                 set aside when training begins at step 0: :mod:`.run_folder`)
 3. data                         the prepared corpus and its tokenizer, the vocabulary fitted to it
                                 (skipped for loaders handed in)
 4. seeding                      the run's random streams (data order, dropout, sampling) follow
                                 ``training.seed`` and the rank
 5. model                        built from ``config.model`` with ``training.seed`` (the same
                                 weights on every rank), unless one is handed in: that one keeps
                                 the weights it has
 6. runtime                      device and precision (a resumed run keeps its checkpoint's)
 7. memory                       ``batch_size: auto`` sized by real steps, then the memory plan:
                                 refused in one line when it does not fit
 8. loaders                      train and validation windows, sharded by rank (or checked, when
                                 handed in), and the run's length in steps
 9. model wrapping               DDP or FSDP2 and ``torch.compile``: before the optimizer, which
                                 must see FSDP2's sharded parameters
10. optimizer and schedule
11. step, meter, validator       the components around the loop; the validator's downstream
                                 tasks (``training.eval_tasks``) read and tokenized
12. checkpointer                 with every stateful part registered once; a resume or a
                                 fine-tuning start loads here
13. callbacks                    metrics.jsonl, the progress line, your callbacks, the loggers of
                                 ``report_to``, the run report, early stopping; and the view of the
                                 run they all receive

The result is a :class:`RunParts`; the Trainer only holds it and runs the loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nima.checkpoint.metadata import resumed_precision, run_metadata
from nima.config import RunConfig, TrainingConfig
from nima.distributed import DistributedContext, init_distributed
from nima.errors import ConfigError
from nima.memory import MemoryPlan, MemoryWatch, fit_batch, plan_memory
from nima.models import create_model
from nima.runtime import Runtime, bf16_faster_on_cpu, device_kind, seed_everything, unwrap_model
from nima.training.callbacks import EarlyStopping, MetricsTracker
from nima.training.checkpointer import Checkpointer
from nima.training.console import Console
from nima.training.cursor import DataCursor, batch_shape, check_loader, run_length
from nima.training.loggers import monitoring_callbacks
from nima.training.meter import Meter
from nima.training.mfu import peak_flops_for
from nima.training.optimizers import build_optimizer
from nima.training.preemption import StopSignal
from nima.training.run_data import build_loaders, model_config_from, prepare_data_once_per_node
from nima.training.run_folder import RunFolder
from nima.training.schedulers import build_scheduler
from nima.training.step import TrainStep
from nima.training.task_evaluator import TaskEvaluator
from nima.training.validator import Validator
from nima.training.view import RunState, RunView

Say = Callable[[str], Any]
KEPT_PRECISION = "kept from the checkpoint; training.precision: auto keeps a resumed run's precision"


@dataclass
class RunParts:
    """Everything a run is made of, built by :func:`assemble`."""

    config: RunConfig
    """The config as built: vocabulary fitted to the tokenizer, batch size chosen."""
    from_run_config: bool
    """Built from a whole RunConfig (``nima train``, recipes), not from a model and loaders."""
    command: str | None
    prepared: Any
    """The prepared data (``nima.data.PreparedData``), or None for loaders handed in."""
    tokenizer: Any
    runtime: Runtime
    raw_model: nn.Module
    model: nn.Module
    """The module the steps call: wrapped for DDP/FSDP2 and compiled, as asked."""
    memory_plan: MemoryPlan | None
    train_loader: Iterable
    eval_loader: Iterable | None
    steps_per_epoch: int | None
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    cursor: DataCursor
    train_step: TrainStep
    meter: Meter
    validator: Validator
    state: RunState
    folder: RunFolder
    checkpointer: Checkpointer
    early_stopping: EarlyStopping | None
    metrics: MetricsTracker
    """``logs/metrics.jsonl``: called first, then the console (the progress line), then ``callbacks``."""
    console: Console
    callbacks: list[Any]
    """Yours, then the loggers of ``report_to`` and the run report, then early stopping."""
    view: RunView
    stop_signal: StopSignal
    memory_watch: MemoryWatch


def assemble(
    config: RunConfig,
    *,
    model: nn.Module | None = None,
    loaders: tuple[Iterable, Iterable | None] | None = None,
    tokenizer: Any = None,
    callbacks: Iterable[Any] = (),
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    runtime: Runtime | None = None,
    checkpoint: str | Path | None = None,
    init_from: str | Path | None = None,
    allow_fallback: bool = False,
    say: Say | None = None,
    command: str | None = None,
) -> RunParts:
    """Build every part of a run, in the order of the module docstring.

    ``model`` and ``loaders`` (train, validation): use these instead of building them (the
    Python API); a model handed in is never re-initialised. ``checkpoint`` resumes a run;
    ``init_from`` starts a new run (fine-tuning) from a checkpoint's weights, with its model
    config (with both, the fine-tuning run resumes from ``checkpoint``). ``allow_fallback``:
    train on standard-library sources if tiny Shakespeare cannot be had. ``say`` prints the
    notes of assembly (rank 0 only; default ``print``). ``command``: the command line, written
    with the config to ``<output_dir>/config.yaml`` when training begins.
    """
    training = config.training
    from_run_config = loaders is None
    callbacks = list(callbacks)
    _refuse_old_hooks(callbacks)  # before any work: a renamed hook would silently never run

    # 1. distributed set-up
    dist = runtime.dist if runtime is not None else init_distributed(device_kind(training.device))
    say = (say or print) if dist.is_main else _quiet

    # 2. run folder
    folder = RunFolder.claim(training.output_dir)

    # 3. data
    prepared = None
    if loaders is None:
        start_from = (checkpoint or init_from) if init_from else None  # fine-tuning: its model config
        prepared, config = open_data(config, dist, start_from, allow_fallback, say)
        tokenizer = prepared.tokenizer
    else:
        check_loader(loaders[0], training, dist)

    # 4. seeding
    seed_everything(training.seed + dist.rank)

    # 5. model
    if model is None:
        model = build_model(config, training.seed)
    raw_model = unwrap_model(model)

    # 6. runtime, 7. memory: batch_size auto, then the plan
    config, runtime, batch_size, seq_len, memory_plan = _runtime_and_memory(
        config, dist, raw_model, loaders, runtime, checkpoint, say
    )
    training = config.training

    # 8. loaders and the run's length
    train_loader, eval_loader = loaders or build_loaders(config, prepared, dist.rank, dist.world_size)
    cursor = DataCursor(train_loader, training.gradient_accumulation_steps, dist.world_size)
    steps_per_epoch, total_steps = run_length(training, cursor.batches_per_epoch)

    # 9. model wrapping
    wrapped = runtime.prepare_model(raw_model, training.distributed_strategy, training.compile)

    # 10. optimizer and schedule
    optimizer = optimizer or build_optimizer(raw_model, training)
    scheduler = scheduler or build_scheduler(optimizer, training, total_steps)

    # 11. step, meter, validator
    params = [p for p in raw_model.parameters() if p.requires_grad]
    train_step = TrainStep(wrapped, optimizer, scheduler, runtime, training.gradient_clip, params)
    meter, validator = _meter_and_validator(
        config, raw_model, runtime, cursor, eval_loader, tokenizer, batch_size, seq_len
    )

    # 12. checkpointer, and a resume or fine-tuning start
    state = RunState()
    early_stopping = _early_stopping(
        callbacks, training.early_stopping_patience, training.early_stopping_min_delta
    )
    stateful = {"scheduler": scheduler, "scaler": train_step.scaler, "early_stopping": early_stopping}
    metadata = run_metadata(raw_model, training, train_loader, tokenizer)
    checkpointer = make_checkpointer(
        folder, raw_model, optimizer, runtime, training, metadata, (state, cursor, validator), stateful
    )
    if checkpoint:
        checkpointer.load(checkpoint)
    elif init_from:
        checkpointer.load(init_from, weights_only_model=True)

    # 13. callbacks, and the view of the run they receive
    console = Console(training, runtime.is_main, steps_per_epoch)
    callbacks = _callbacks(training, callbacks, early_stopping)
    metrics = MetricsTracker(folder.logs if runtime.is_main else None)
    view = RunView(
        state,
        cursor,
        meter,
        raw_model,
        tokenizer,
        runtime,
        folder.path,
        total_steps,
        config=_config_view(config, raw_model, from_run_config),
        sharded=checkpointer.sharded,
        prepared_path=getattr(getattr(train_loader, "dataset", None), "prepared_path", None),
    )
    return RunParts(
        config=config,
        from_run_config=from_run_config,
        command=command,
        prepared=prepared,
        tokenizer=tokenizer,
        runtime=runtime,
        raw_model=raw_model,
        model=wrapped,
        memory_plan=memory_plan,
        train_loader=train_loader,
        eval_loader=eval_loader,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        optimizer=optimizer,
        scheduler=scheduler,
        cursor=cursor,
        train_step=train_step,
        meter=meter,
        validator=validator,
        state=state,
        folder=folder,
        checkpointer=checkpointer,
        early_stopping=early_stopping,
        metrics=metrics,
        console=console,
        callbacks=callbacks,
        view=view,
        stop_signal=StopSignal(),
        memory_watch=MemoryWatch(runtime.device),
    )


# ---------------------------------------------------------------------------------- the steps' helpers


def _runtime_and_memory(
    config: RunConfig,
    dist: DistributedContext,
    raw_model: nn.Module,
    loaders: tuple[Iterable, Iterable | None] | None,
    runtime: Runtime | None,
    checkpoint: str | Path | None,
    say: Say,
) -> tuple[RunConfig, Runtime, int | None, int | None, MemoryPlan]:
    """Steps 6 and 7: the runtime (device, precision), ``batch_size: auto`` resolved (the run's
    config changes with it), and the memory plan. Returns the config, the runtime, the micro-batch
    and sequence length, and the plan."""
    training = config.training
    if loaders is not None:
        batch_size, seq_len = batch_shape(loaders[0], raw_model)
    else:
        batch_size, seq_len = training.batch_size, config.model.max_seq_len
    auto_batch = batch_size == "auto"
    if runtime is None:
        runtime = training_runtime(
            config, dist, raw_model, None if auto_batch else batch_size, seq_len, checkpoint
        )
    if auto_batch:
        fit = fit_batch(raw_model, config.model, training, runtime)
        say(fit.describe())
        training = dataclasses.replace(
            training, batch_size=fit.micro_batch, gradient_accumulation_steps=fit.accumulation
        )
        config = config.replace(training=training)
        batch_size = fit.micro_batch
    return (
        config,
        runtime,
        batch_size,
        seq_len,
        plan_memory(raw_model, training, batch_size, seq_len, runtime),
    )


def _meter_and_validator(
    config: RunConfig,
    raw_model: nn.Module,
    runtime: Runtime,
    cursor: DataCursor,
    eval_loader: Iterable | None,
    tokenizer: Any,
    batch_size: int | None,
    seq_len: int | None,
) -> tuple[Meter, Validator]:
    """Step 11's measuring parts: the throughput meter, and the validator with its tasks."""
    training = config.training
    flops = getattr(raw_model, "estimate_flops_per_token", None)
    flops_per_token = float(flops(seq_len)) if callable(flops) and seq_len else None
    peak_flops = peak_flops_for(runtime.device, runtime.precision.name, training.peak_flops)
    world = runtime.dist.world_size
    meter = Meter(flops_per_token, peak_flops, world, runtime.device, lambda: cursor.tokens_seen)
    window = getattr(getattr(raw_model, "config", None), "max_seq_len", None) or seq_len
    tasks = TaskEvaluator.build(
        training.eval_tasks, tokenizer, window, runtime, batch_size or 32, config.data.data_dir
    )
    validator = Validator(raw_model, eval_loader, runtime, training.eval_every, training.eval_batches, tasks)
    return meter, validator


def _callbacks(training: TrainingConfig, callbacks: list[Any], early_stopping: Any) -> list[Any]:
    """Yours, then the loggers of ``report_to`` (loss.png, report.md), then early stopping."""
    user_callbacks = [cb for cb in callbacks if cb is not early_stopping]
    loggers = monitoring_callbacks(training, user_callbacks)
    return [*user_callbacks, *loggers, *([early_stopping] if early_stopping else [])]


def open_data(
    config: RunConfig, dist: DistributedContext, init_from: str | Path | None, allow_fallback: bool, say: Say
) -> tuple[Any, RunConfig]:
    """The prepared data (once per node) and the config fitted to its tokenizer; a fine-tuning
    run (``init_from``) takes the model config of that checkpoint."""
    prepared = prepare_data_once_per_node(config, dist, allow_fallback=allow_fallback, say=say)
    tokenizer = prepared.tokenizer
    say(
        f"data: {prepared.path} ({prepared.meta.get('train_tokens', '?')} train tokens, "
        f"{tokenizer.kind} tokenizer, vocab {tokenizer.vocab_size})"
    )
    if init_from:
        return prepared, model_config_from(config, init_from, tokenizer, say=say)
    return prepared, config.fit_vocab_size(tokenizer, say=say)


def make_checkpointer(
    folder: RunFolder,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    training: Any,
    metadata: dict[str, Any],
    merged: tuple[Any, ...],
    keyed: dict[str, Any],
) -> Checkpointer:
    """The checkpointer, with every stateful part registered once: ``merged`` at the checkpoint's
    top level (the step, the data cursor, the validator), ``keyed`` under their names."""
    checkpointer = Checkpointer(
        folder.checkpoints,
        model,
        optimizer,
        runtime,
        save_every=training.save_every,
        keep_last=training.keep_last_checkpoints,
        async_write=training.async_checkpoint,
        metadata=metadata,
    )
    for component in merged:
        checkpointer.register(component)
    for key, component in keyed.items():
        checkpointer.register(component, key)
    return checkpointer


def build_model(config: RunConfig, seed: int) -> nn.Module:
    """The model of ``config.model``, initialised from ``seed`` alone: the same weights on every
    rank, and the run's own random streams (seeded before) left as they were."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(config.model)


def training_runtime(
    config: RunConfig,
    dist: DistributedContext,
    model: nn.Module,
    batch_size: int | None,
    seq_len: int | None,
    checkpoint: str | Path | None,
) -> Runtime:
    """The device and precision; a resumed run keeps its checkpoint's precision where this
    machine runs it well (``precision: auto``), and says so."""
    training = config.training
    kept = resumed_precision(checkpoint, training.precision, training.device) if checkpoint else None
    runtime = Runtime.for_training(
        dist,
        training.device,
        kept or training.precision,
        training.use_mixed_precision,
        bf16_benchmark=bf16_benchmark(model, batch_size, seq_len),
    )
    return runtime.with_precision_reason(KEPT_PRECISION) if kept else runtime


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


def _early_stopping(callbacks: list[Any], patience: int | None, min_delta: float) -> EarlyStopping | None:
    """The run's EarlyStopping: one handed in, else one for ``early_stopping_patience``."""
    found = next((cb for cb in callbacks if isinstance(cb, EarlyStopping)), None)
    if found is None and patience:
        found = EarlyStopping(patience, min_delta)
    return found


def _refuse_old_hooks(callbacks: list[Any]) -> None:
    for callback in callbacks:
        if callable(getattr(callback, "on_step_end", None)):
            raise ConfigError(
                f"{type(callback).__name__}.on_step_end: this hook is now on_log(run, metrics), called "
                "with every logged record (logging steps and the final evaluation); rename it"
            )


def _config_view(config: RunConfig, model: nn.Module, whole: bool) -> Callable[[], dict[str, Any]]:
    """The run's config for loggers: the whole RunConfig when the run was built from one, else
    the model's config and the training config (the only sections a Python-API run has)."""

    def as_dict() -> dict[str, Any]:
        if whole:
            return config.to_dict()
        out: dict[str, Any] = {}
        model_config = getattr(model, "config", None)
        if hasattr(model_config, "to_dict"):
            out["model"] = model_config.to_dict()
        out["training"] = config.training.to_dict()
        return out

    return as_dict


def _quiet(*args: Any, **kwargs: Any) -> None:
    return None
