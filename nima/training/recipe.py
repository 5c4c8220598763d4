"""Recipes: a whole training run built from a :class:`~nima.config.RunConfig`.

:func:`build_run` is the one way a run is assembled (the data prepared or reused, the vocabulary
fitted to the tokenizer, the loaders, the model, the Trainer, a resumed or fine-tuning start);
``nima train``, the benchmarks, the notebooks and the tests all go through it, and read the
outcome from :class:`TrainResults` rather than from printed text::

    from nima.config import RunConfig
    from nima.training.recipe import run_training

    run = run_training(RunConfig.from_yaml("configs/tiny_shakespeare_char.yaml"))
    print(run.results.best_val_loss, run.results.train_tokens_per_s)
"""

from __future__ import annotations

import dataclasses
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nima.config import RunConfig
from nima.distributed import init_distributed
from nima.errors import ConfigError, DataError
from nima.files import atomic_write_text
from nima.reporting.runs import write_run_config
from nima.runtime import Runtime, device_kind
from nima.training import setup
from nima.training.batch_fit import fit_batch
from nima.training.results import TrainResults
from nima.training.run_folder import set_aside_earlier_run
from nima.training.trainer import Trainer

# When tiny Shakespeare cannot be had (no network, no mirror) the quick test trains on Python
# standard-library sources instead: a corpus every machine has.
FALLBACK_NAME = "python_stdlib"
FALLBACK_BYTES = 1_200_000

Say = Callable[[str], Any]
KEPT_PRECISION = "kept from the checkpoint; training.precision: auto keeps a resumed run's precision"


@dataclass
class TrainingRun:
    """A run ready to train (or trained): its final config, data, and Trainer."""

    config: RunConfig
    """The config as built: vocab_size fitted to the tokenizer, or a fine-tuned model's config."""
    prepared: Any
    """The prepared data (``nima.data.PreparedData``: token files, tokenizer, metadata)."""
    trainer: Trainer
    results: TrainResults | None = None
    """Set by :meth:`train`."""

    @property
    def tokenizer(self) -> Any:
        return self.prepared.tokenizer

    def train(self) -> TrainResults:
        """Train; the results are also kept in ``self.results``."""
        self.results = self.trainer.train()
        return self.results


def build_run(
    config: RunConfig,
    *,
    callbacks: Iterable[Any] = (),
    checkpoint: str | Path | None = None,
    init_from: str | Path | None = None,
    allow_fallback: bool = False,
    say: Say | None = None,
    command: str | None = None,
) -> TrainingRun:
    """Everything ``nima train`` builds before its first step.

    ``checkpoint`` resumes a run; ``init_from`` starts a new run (fine-tuning) from a checkpoint's
    weights, with its model config. With both, the fine-tuning run resumes from ``checkpoint``.
    ``allow_fallback``: train on standard-library sources if tiny Shakespeare cannot be had.
    ``say`` prints the data and vocabulary notes (rank 0 only; default ``print``).
    The resolved config goes to ``<output_dir>/config.yaml`` (``command``, the command line that
    ran it, in a comment) and to ``trainer.run_config``.
    """
    from nima.models import create_model

    training = config.training
    ctx = init_distributed(device_kind(training.device))
    say = (say or print) if ctx.is_main else (lambda *a, **k: None)
    if ctx.is_main:  # before any work: a run that could not save would train for nothing
        setup.check_output_dir(training.output_dir)
    prepared = prepare_data_once_per_node(config, ctx, allow_fallback=allow_fallback, say=say)
    say(
        f"data: {prepared.path} ({prepared.meta.get('train_tokens', '?')} train tokens, "
        f"{prepared.tokenizer.kind} tokenizer, vocab {prepared.tokenizer.vocab_size})"
    )
    if init_from:  # a fine-tuning run: the model is the checkpoint's (its own, once resumed)
        config = model_config_from(config, checkpoint or init_from, prepared.tokenizer, say=say)
    else:
        config = fit_vocab_size(config, prepared.tokenizer, say=say)
    torch.manual_seed(training.seed)
    model = create_model(config.model)
    auto = training.batch_size == "auto"
    benchmark = setup.bf16_benchmark(model, None if auto else training.batch_size, config.model.max_seq_len)
    kept = setup.resumed_precision(checkpoint, training.precision, training.device) if checkpoint else None
    runtime = Runtime.for_training(
        training.device, kept or training.precision, training.use_mixed_precision, bf16_benchmark=benchmark
    )
    if kept:  # the start-up line gives the real reason, not "forced by training.precision"
        runtime = runtime.with_precision_reason(KEPT_PRECISION)
    if auto:
        config = fit_auto_batch(config, model, runtime, say)
    train_loader, val_loader = build_loaders(config, prepared, ctx.rank, ctx.world_size)
    trainer = Trainer(
        model,
        config.training,
        train_loader,
        val_loader,
        tokenizer=prepared.tokenizer,
        callbacks=callbacks,
        runtime=runtime,
    )
    trainer.run_config = config  # the whole run, for loggers and reports
    if checkpoint:
        trainer.load_checkpoint(checkpoint)
    elif init_from:
        trainer.load_checkpoint(init_from, weights_only_model=True)
    if trainer.is_main:
        if not checkpoint and (note := set_aside_earlier_run(trainer.output_dir)):
            say(note)  # before this run's config.yaml, which the Trainer would otherwise set aside
        write_run_config(trainer.output_dir, config, command)
    return TrainingRun(config, prepared, trainer)


def fit_auto_batch(config: RunConfig, model: Any, runtime: Runtime, say: Say) -> RunConfig:
    """``batch_size: auto``: the largest micro-batch that fits (the smallest any process found),
    with the accumulation that keeps the effective batch."""
    training, optimizer = config.training, config.training.optimizer_type
    target = training.effective_batch_size
    fit = fit_batch(model, target, config.model.max_seq_len, runtime.device, runtime.precision, optimizer)
    planned = setup.largest_planned_batch(config.model, fit.micro_batch, target, runtime, training)
    if planned < fit.micro_batch:  # the plan is the more careful of the two: follow it
        fit = dataclasses.replace(fit, micro_batch=planned, accumulation=target // planned)
    if runtime.dist.enabled:  # every process must take the same micro-batch
        micro = torch.tensor([fit.micro_batch], device=runtime.device)
        torch.distributed.all_reduce(micro, op=torch.distributed.ReduceOp.MIN)
        fit = dataclasses.replace(fit, micro_batch=int(micro), accumulation=target // int(micro))
    say(fit.describe())
    chosen = dataclasses.replace(
        training, batch_size=fit.micro_batch, gradient_accumulation_steps=fit.accumulation
    )
    return config.replace(training=chosen)


def run_training(config: RunConfig, **options: Any) -> TrainingRun:
    """:func:`build_run` (same options), train, and leave the torchrun process group (if any)."""
    from nima.distributed import cleanup

    try:
        run = build_run(config, **options)
        run.train()
        return run
    finally:
        cleanup()


def stdlib_corpus(data_dir: Path) -> Path:
    """A text file made of Python standard-library sources: a corpus every machine has."""
    target = data_dir / FALLBACK_NAME / f"{FALLBACK_NAME}.txt"
    if target.is_file() and target.stat().st_size > 0:
        return target
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(stdlib.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        size += len(text)
        if size >= FALLBACK_BYTES:
            break
    if not parts:
        raise DataError(f"no Python standard-library sources found under {stdlib} for the fallback corpus")
    return atomic_write_text(target, "\n".join(parts)[:FALLBACK_BYTES])


def prepare_data(run: RunConfig, allow_fallback: bool, say=print):
    """Prepare (or reuse) the run's data; with ``allow_fallback``, use the stdlib corpus if tiny
    Shakespeare cannot be had. Returns ``PreparedData``."""
    from nima.data import default_data_dir, prepare

    data = run.data
    vocab_size = run.model.vocab_size if data.tokenizer == "bpe" else None
    kwargs = {
        "data_dir": data.data_dir,
        "encoding": data.encoding,
        "text_field": data.text_field,
        "val_fraction": data.val_fraction,
    }
    try:
        return prepare(data.dataset, data.tokenizer, vocab_size=vocab_size, **kwargs)
    except DataError as err:
        if not (allow_fallback and data.dataset == "tiny_shakespeare"):
            raise
        say(f"note: tiny Shakespeare is not available ({err})")
        root = Path(data.data_dir) if data.data_dir else default_data_dir()
        corpus = stdlib_corpus(root)
        say(
            f"note: FALLBACK CORPUS: training on Python standard-library source text ({corpus}) instead "
            "of tiny Shakespeare; losses and samples are not comparable"
        )
        return prepare(str(corpus), data.tokenizer, vocab_size=vocab_size, **kwargs)


def prepare_data_once_per_node(run: RunConfig, ctx: Any, allow_fallback: bool, say=print):
    """:func:`prepare_data` under torchrun without duplicated work: rank 0 prepares first; then the
    first process of every other node (which reuses rank 0's result on a shared file system, and
    prepares its own copy otherwise); then everyone else reuses their node's."""
    from nima.distributed import barrier

    prepared = None
    for turn in (ctx.is_main, ctx.local_rank == 0 and not ctx.is_main, ctx.local_rank != 0):
        if turn:
            prepared = prepare_data(run, allow_fallback=allow_fallback, say=say)
        barrier()
    return prepared


def model_config_from(run: RunConfig, init_from: str | Path, tokenizer: Any, say=print) -> RunConfig:
    """The run with the model config of checkpoint ``init_from`` (the run's own dropout and
    gradient checkpointing kept: they change training, not the weights)."""
    from nima.checkpoint import load_checkpoint_file
    from nima.models import ModelConfig

    saved = load_checkpoint_file(init_from, mmap=True).get("model_config")  # the Trainer reads the weights
    if not isinstance(saved, dict):
        raise ConfigError(f"--init_from {init_from} has no model_config to start from")
    model = ModelConfig.from_dict(
        {**saved, "dropout": run.model.dropout, "gradient_checkpointing": run.model.gradient_checkpointing}
    )
    if tokenizer.vocab_size > model.vocab_size:
        raise ConfigError(
            f"the data's tokenizer has {tokenizer.vocab_size} ids but the model of {init_from} only "
            f"{model.vocab_size}; prepare the data with its tokenizer (data.tokenizer: <its tokenizer.json>)"
        )
    say(f"fine-tuning from {init_from}: model config taken from it (the config's model: section is ignored)")
    return run.replace(model=model)


def fit_vocab_size(run: RunConfig, tokenizer: Any, say=print) -> RunConfig:
    """Make model.vocab_size match the tokenizer (with one warning when it did not)."""
    if run.model.vocab_size == tokenizer.vocab_size:
        return run
    if run.data.tokenizer == "bpe" and tokenizer.vocab_size < run.model.vocab_size:
        why = "the corpus gave fewer BPE merges than asked"
    else:
        why = f"the {run.data.tokenizer} vocabulary comes from the tokenizer"
    say(f"warning: model.vocab_size={run.model.vocab_size} changed to {tokenizer.vocab_size} ({why})")
    return run.replace(model=dataclasses.replace(run.model, vocab_size=tokenizer.vocab_size))


def build_loaders(run: RunConfig, prepared: Any, rank: int, world_size: int):
    """Train and validation loaders over windows of model.max_seq_len tokens, sharded by rank."""
    from nima.data import DataCollator, TokenWindowDataset, create_dataloader

    seed = run.training.seed
    context = run.model.max_seq_len
    train_ds = TokenWindowDataset.from_prepared(prepared, "train", context, seed=seed)
    val_ds = TokenWindowDataset.from_prepared(prepared, "val", context, seed=seed)
    if len(train_ds) == 0:
        raise DataError(
            f"the training split of {prepared.path} is shorter than one window of "
            f"model.max_seq_len={context} tokens; use a smaller max_seq_len or more text"
        )
    for split, dataset in (("train", train_ds), ("val", val_ds)):
        check_token_ids(dataset.tokens, prepared.path / f"{split}.bin", run.model.vocab_size)
    collator = DataCollator(prepared.tokenizer)
    workers = run.data.num_workers
    common = {
        "collate_fn": collator,
        "seed": seed,
        "num_workers": workers,
        "pin_memory": run.data.pin_memory,
        "rank": rank,
        "world_size": world_size,
    }
    train = create_dataloader(train_ds, run.training.batch_size, shuffle=True, **common)
    val = create_dataloader(val_ds, run.training.batch_size, shuffle=False, **common) if len(val_ds) else None
    return train, val


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
