"""Recipes: a whole training run from a :class:`~nima.config.RunConfig`, ready to train.

:func:`build_run` is :func:`nima.training.assembly.assemble` (the one assembler: data, model,
runtime, memory, loaders, optimizer, components, checkpointer, callbacks) handed to a Trainer;
``nima train``, ``nima sweep``, the benchmarks, the notebooks and the tests all go through it, and
read the outcome from :class:`TrainResults` rather than from printed text::

    from nima.config import RunConfig
    from nima.training.recipe import run_training

    run = run_training(RunConfig.from_yaml("configs/tiny_shakespeare_char.yaml"))
    print(run.results.best_val_loss, run.results.train_tokens_per_s)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nima.config import RunConfig
from nima.distributed import cleanup
from nima.training.assembly import Say, assemble
from nima.training.results import TrainResults
from nima.training.trainer import Trainer


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
    """Everything ``nima train`` builds before its first step (:func:`~nima.training.assembly.assemble`
    with the same options): ``checkpoint`` resumes a run; ``init_from`` starts a new run (fine-tuning)
    from a checkpoint's weights, with its model config. The resolved config goes to
    ``<output_dir>/config.yaml`` when training begins (``command``, the command line, in a comment).
    """
    parts = assemble(
        config,
        callbacks=callbacks,
        checkpoint=checkpoint,
        init_from=init_from,
        allow_fallback=allow_fallback,
        say=say,
        command=command,
    )
    return TrainingRun(parts.config, parts.prepared, Trainer(parts=parts))


def run_training(config: RunConfig, **options: Any) -> TrainingRun:
    """:func:`build_run` (same options), train, and leave the torchrun process group (if any)."""
    try:
        run = build_run(config, **options)
        run.train()
        return run
    finally:
        cleanup()
