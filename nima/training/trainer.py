"""The Trainer: a short loop around components that each own one concern.

==================  =================================================================
``runtime``         process group, device, precision, DDP/FSDP2 and compile wrapping
``cursor``          epoch and batch position, the micro-batch windows, tokens seen
``train_step``      forward/backward over a window, clipping, loss scaling, optimizer
``meter``           loss since the last log, tokens/s, MFU, overhead, the nan/inf check
``validator``       when to evaluate, the validation loss, the best one so far
``checkpointer``    what to save when, atomic and background writes, loading
``memory_watch``    on a CPU: save and stop before the machine runs out of memory
callbacks           metrics.jsonl, the progress display, early stopping, your own hooks:
                    each gets a RunView (``view``), never the Trainer
==================  =================================================================

The parts are built by :func:`nima.training.assembly.assemble`; the Trainer holds them.
:meth:`Trainer.train` reads top to bottom: take a window, train on it, log / evaluate / save as
the step count says, close the epoch when it ends, stop when asked.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nima.checkpoint import newest_checkpoint
from nima.config import RunConfig, TrainingConfig
from nima.errors import ConfigError
from nima.memory import out_of_memory
from nima.memory.heap import release_freed_memory
from nima.models import ModelConfig
from nima.runtime import Runtime, unwrap_model
from nima.training.assembly import RunParts, assemble
from nima.training.console import start_lines
from nima.training.cursor import Window, batch_shape
from nima.training.meter import diverged_error
from nima.training.results import TrainResults


class Trainer:
    """Train ``model`` on batches from ``train_dataloader``.

    Batches are dicts with ``input_ids`` and ``labels`` (B, T) (labels already shifted, -100
    ignored) or ``(input_ids, labels)`` pairs; the model is called as ``model(input_ids,
    labels=labels)`` and must return an object with ``.loss`` (or the loss tensor itself).

    Args:
        model: the model (moved to the configured device; wrapped in DDP under torchrun). Its
            weights are kept as they are: seed before building it for a run you can repeat.
        config: a :class:`TrainingConfig` (defaults when None). ``config.seed`` and the rank
            seed the run's random streams (data order, dropout).
        train_dataloader: the training loader; under torchrun it should be sharded by rank
            (``create_dataloader(..., rank=, world_size=)``).
        eval_dataloader: optional validation loader; ``config.eval_batches`` batches per evaluation.
        tokenizer: optional tokenizer, recorded (identity and path) in checkpoints.
        callbacks: objects with ``on_*`` hooks (see :class:`nima.training.callbacks.Callback`).
        optimizer, scheduler: use these instead of building them from the config.
        runtime: the :class:`~nima.runtime.Runtime` to train with (default: decided from the
            config's device and precision).
        parts: a run already assembled (:func:`nima.training.assembly.assemble`); then no other
            argument is given.

    The run is built by :func:`~nima.training.assembly.assemble`, as ``nima train`` builds its
    own: before anything runs, the memory a step needs is planned against what the device has
    (:mod:`nima.memory`); a run that would not fit is refused with a ConfigError that gives the
    figures and the fixes.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        config: TrainingConfig | None = None,
        train_dataloader: Iterable | None = None,
        eval_dataloader: Iterable | None = None,
        tokenizer: Any = None,
        callbacks: Iterable[Any] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        runtime: Runtime | None = None,
        *,
        parts: RunParts | None = None,
    ) -> None:
        if parts is None:
            config = config if config is not None else TrainingConfig()
            if not isinstance(config, TrainingConfig):
                raise ConfigError(f"config must be a TrainingConfig, got {type(config).__name__}")
            if model is None or train_dataloader is None:
                raise ConfigError("Trainer needs a model and a train_dataloader (see create_dataloader)")
            model_config = getattr(unwrap_model(model), "config", None)
            run = RunConfig(
                model=model_config if isinstance(model_config, ModelConfig) else ModelConfig(),
                training=config,
            )
            parts = assemble(
                run,
                model=model,
                loaders=(train_dataloader, eval_dataloader),
                tokenizer=tokenizer,
                callbacks=callbacks or (),
                optimizer=optimizer,
                scheduler=scheduler,
                runtime=runtime,
            )
        self.parts = parts
        # The parts, by name (the loop reads them; tests and notebooks look at some).
        self.config = parts.config.training
        self.runtime = parts.runtime
        self.model, self.raw_model = parts.model, parts.raw_model
        self.tokenizer = parts.tokenizer
        self.train_dataloader, self.eval_dataloader = parts.train_loader, parts.eval_loader
        self.optimizer, self.scheduler = parts.optimizer, parts.scheduler
        self.cursor, self.train_step, self.meter = parts.cursor, parts.train_step, parts.meter
        self.validator, self.checkpointer = parts.validator, parts.checkpointer
        self.memory_plan, self.memory_watch = parts.memory_plan, parts.memory_watch
        self.callbacks, self.view = parts.callbacks, parts.view
        self.total_steps, self.steps_per_epoch = parts.total_steps, parts.steps_per_epoch
        self.output_dir = parts.folder.path
        self.checkpoint_dir = parts.folder.checkpoints
        self._state, self._stop, self._console = parts.state, parts.stop_signal, parts.console
        self._last_finite_step = 0

    # ------------------------------------------------------------------ the loop

    def train(self) -> TrainResults:
        """Train until ``max_steps`` (or ``num_epochs``), early stopping or a callback stops it.

        Returns :class:`TrainResults` (``results.best_val_loss`` or ``results["best_val_loss"]``):
        losses, steps, epochs, tokens, wall time, tokens/s with and without evaluation and
        checkpoints, precision, why it stopped, and the last checkpoint.

        SIGTERM (what schedulers send before preempting a job) or Ctrl-C (SIGINT) stops training
        at the next step boundary (under torchrun: at the next logging step, on all ranks
        together), saves ``step_N.pt`` and returns with ``stop_signal`` set; the run resumes from
        that checkpoint. A second Ctrl-C raises KeyboardInterrupt at once, saving nothing.
        A step whose gradients are nan or inf is never applied; with ``on_nonfinite: stop`` (the
        default), or a nan or inf loss, TrainingDivergedError is raised at the next logging or
        saving step, before anything from the broken steps is logged or saved. On a CPU whose
        free memory falls under a floor between steps, ``step_N.pt`` is saved and ConfigError
        raised (see nima/memory/watch.py): the run resumes from it.
        """
        start_step = self.step
        self._begin()
        completed = False
        try:
            while self.step < self.total_steps and not self._state.stop_requested:
                window = self.cursor.next_window()
                if window.batches:
                    self._train_on(window)
                    self._log_evaluate_save()
                    if self.memory_watch.running_out(self.step, self.config.log_every, self.device):
                        self._stop_for_memory()
                if window.ends_epoch:
                    self._end_epoch()
                    if self.config.max_steps is None and self.cursor.epoch >= self.config.num_epochs:
                        break
                if window.batches and self._stop.agreed(self.step, self.config.log_every, self.device):
                    self._state.stop_requested = True
                    self._state.stop_reason = (
                        f"stopped by {self._stop.name} at step {self.step}; resume from the checkpoint"
                    )
            self._finish(start_step)
            completed = True
        except KeyboardInterrupt:
            self._interrupted(start_step)
            raise
        except torch.OutOfMemoryError:  # a GPU that ran out raises (a CPU's process is killed)
            raise ConfigError(out_of_memory(self.step, self.memory_plan)) from None
        finally:
            self._stop.uninstall()
            with self.meter.overhead():
                self.checkpointer.close(raise_errors=completed)
            release_freed_memory()
        return self._results()

    def _train_on(self, window: Window) -> None:
        """One optimizer step, and the per-step bookkeeping (no host sync)."""
        output = self.train_step(window.batches)
        self.step += 1
        self.meter.record(output, window.tokens, self.step)
        self._call("on_step")

    def _log_evaluate_save(self) -> None:
        """Log, evaluate and save as the step count says."""
        step = self.step
        do_eval = self.validator.due(step)
        do_log = step % self.config.log_every == 0 or step >= self.total_steps or do_eval
        do_save = self.checkpointer.due(step) or self._state.save_requested
        if not (do_log or do_save):
            return
        self._check_numerics()
        record: dict[str, Any] = {}
        if do_log:
            record = self.meter.report().as_record(lr=self.train_step.learning_rate, epoch=self.cursor.epoch)
        if do_eval:
            record.update(self._validate())
        if do_log:
            self._log(record)
        if do_save:
            self._state.save_requested = False
            with self.meter.overhead():
                self.save_checkpoint(f"step_{step}")

    def _end_epoch(self) -> None:
        metrics: dict[str, Any] = {}
        if self.meter.last_loss is not None:
            metrics["train_loss"] = self.meter.last_loss
        if self.validator.last_val_loss is not None:
            metrics["val_loss"] = self.validator.last_val_loss
        self._call("on_epoch_end", self.cursor.epoch, metrics)
        if self.config.save_epoch_checkpoints:
            self._check_numerics()
            with self.meter.overhead():
                self.save_checkpoint(f"epoch_{self.cursor.epoch}")

    def _validate(self) -> dict[str, float]:
        """Evaluate now; a new best validation loss is saved as ``best_model.pt``."""
        with self.meter.overhead():
            metrics, improved = self.validator.validate(self.step)
            if improved:
                self.save_checkpoint("best_model")
            self._call("on_evaluate", metrics)
        return metrics

    def _finish(self, start_step: int) -> None:
        """The final evaluation (not when preempted: time is short) and checkpoint, unless this
        very step already had them."""
        trained = self.step > start_step
        evaluated_now = self.validator.last_step == self.step
        if self.validator.enabled and trained and not evaluated_now and not self._stop.signum:
            self._log(self._validate())  # the same figures as a mid-run evaluation
        if trained and self.checkpointer.last_saved_step != self.step:
            self._check_numerics()
            with self.meter.overhead():
                self.save_checkpoint(f"step_{self.step}")

    # ------------------------------------------------------------------ start, stop, results

    def _begin(self) -> None:
        self._state.stop_requested, self._state.stop_reason = False, None
        self._last_finite_step = self.step
        if self.is_main:  # a new run sets an earlier one aside; config.yaml
            parts = self.parts
            config = parts.config if parts.from_run_config else None
            parts.folder.begin(self.step, self._say, config, parts.command)
        n_params = sum(p.numel() for p in self.train_step.params)
        for line in start_lines(
            n_params, self.runtime, self.step, self.epoch, self.cursor.batch_in_epoch, self.config.compile,
            self.memory_plan, self.raw_model, self.validator.coverage,
        ):  # fmt: skip
            self._say(line)
        for leftover in self.checkpointer.remove_leftovers():
            self._say(f"removed {leftover.name}: a checkpoint that a killed run did not finish writing")
        self._call("on_train_begin")
        self.meter.start()
        self.raw_model.train()
        self._stop.install()  # uninstalled when train() ends

    def _stop_for_memory(self) -> None:
        """Save this step (in the foreground: a background save copies the state) and stop."""
        self._check_numerics()
        self.checkpointer.write_in_foreground()
        with self.meter.overhead():
            path = self.save_checkpoint(f"step_{self.step}")
        raise ConfigError(self.memory_watch.message(self.step, str(path)))

    def _interrupted(self, start_step: int) -> None:
        # A second Ctrl-C (the first stops at a step boundary and saves): the step under way may
        # be half applied, so nothing is saved; the last checkpoint written is intact.
        if self.step > start_step:
            last = newest_checkpoint(self.output_dir)
            where = f"resume from {last}" if last else "no step checkpoint was written yet"
            self._say(f"interrupted after step {self.step} without saving; {where}")

    def _results(self) -> TrainResults:
        meter, wall, last = self.meter, self.meter.wall_s, self.checkpointer.last_path
        results = TrainResults(
            final_val_loss=self.validator.last_val_loss,
            best_val_loss=self.validator.best,
            final_train_loss=meter.final_loss(),
            steps=self.step,
            epochs=self.cursor.epochs_done,
            tokens=meter.tokens,
            wall_time_s=wall,
            tokens_per_s=meter.tokens / wall if wall > 0 else 0.0,
            train_tokens_per_s=meter.tokens / max(wall - meter.overhead_s, 1e-9),
            precision=self.precision.name,
            stopped_early=self._state.stop_reason is not None,
            stop_reason=self._state.stop_reason,
            last_checkpoint=str(last) if last else None,
            output_dir=str(self.output_dir),
            stop_signal=self._stop.name,
            skipped_steps=self.meter.skipped_steps,
        )
        if self._state.stop_reason:
            self._say(self._state.stop_reason)
        self._call("on_train_end", results)
        return results

    def _check_numerics(self) -> None:
        """Stop with TrainingDivergedError if the loss since the last check is nan or inf on any
        process, or the guard's non-finite steps call for it (``training.on_nonfinite``), before
        anything is logged or saved: a diverged run never writes (or, through
        ``keep_last_checkpoints``, prunes away) a good checkpoint. Called where the loop reads the
        loss anyway (logging and saving steps); under torchrun every process calls it together."""
        loss_finite, guard = self.meter.check_numerics(self.device, self.dist.enabled)
        cfg = self.config
        stop_on_guard = cfg.on_nonfinite == "stop" and guard.nonfinite_steps > 0
        if not loss_finite or stop_on_guard or guard.longest_run >= cfg.max_consecutive_skips:
            raise diverged_error(self._last_finite_step, self.step, self.output_dir, cfg, guard, loss_finite)
        self._last_finite_step = self.step

    # ------------------------------------------------------------------ public pieces

    def forward_backward(self, window: list[Any]) -> torch.Tensor:
        """Forward and backward over one accumulation window (gradients left in ``.grad``);
        returns the window's loss (detached: the mean over all its labelled tokens)."""
        return self.train_step.forward_backward(window)

    def evaluate(self, max_batches: int | None = None) -> dict[str, float]:
        """Mean validation loss (per labelled token) over the first ``eval_batches`` batches,
        averaged over all processes under torchrun. Returns ``val_loss`` and ``val_perplexity``."""
        return self.validator.evaluate(max_batches)

    def save_checkpoint(self, name: str, all_ranks: bool = True) -> Path:
        """Write ``<output_dir>/checkpoints/<name>.pt`` atomically (rank 0 writes); returns the path.

        Under torchrun every rank must call it (each contributes its RNG state), unless
        ``all_ranks=False``: then only rank 0 calls it and resuming will not be exact.
        """
        path = self.checkpointer.save(name, self.step, all_ranks=all_ranks)
        if self.is_main:
            self._call("on_save", path)
        return path

    def checkpoint_state(self, gathered: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything needed to rebuild the model and continue training exactly (see
        :meth:`Checkpointer.state`)."""
        return self.checkpointer.state(gathered)

    def load_checkpoint(self, path: str | Path, weights_only_model: bool = False) -> dict[str, Any]:
        """Restore model, optimizer, schedule, scaler, step, data position and RNG from ``path``.

        Raises CheckpointError when the checkpoint's model config or tokenizer does not match
        this run. ``weights_only_model=True`` loads only the model weights (fine-tuning).
        """
        return self.checkpointer.load(path, weights_only_model=weights_only_model)

    def wait_for_checkpoint(self) -> None:
        """Block until a checkpoint being written in the background (``async_checkpoint``) is on
        disk; raises the error if writing it failed. ``train()`` does this before it returns."""
        self.checkpointer.wait()

    # ------------------------------------------------------------------ views

    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return self._state.step

    @step.setter
    def step(self, value: int) -> None:
        self._state.step = value

    @property
    def should_stop(self) -> bool:
        """Whether a stop was asked for (by a callback's ``run.request_stop()``, or a signal)."""
        return self._state.stop_requested

    @property
    def stop_reason(self) -> str | None:
        """Why the last ``train()`` stopped before its end (None when it ran to the end)."""
        return self._state.stop_reason

    @property
    def batch_size(self) -> int | None:
        """Sequences per micro-batch, as the train loader yields them."""
        return batch_shape(self.train_dataloader, self.raw_model)[0]

    @property
    def seq_len(self) -> int | None:
        """Tokens per sequence, as far as the loader and model tell."""
        return batch_shape(self.train_dataloader, self.raw_model)[1]

    device = property(lambda self: self.runtime.device, doc="The device training runs on.")
    precision = property(lambda self: self.runtime.precision, doc="The PrecisionChoice of this run.")
    dist = property(lambda self: self.runtime.dist, doc="This process's place in the torchrun job.")
    is_main = property(lambda self: self.runtime.is_main, doc="Rank 0: the process that logs and writes.")
    sharded = property(lambda self: self.checkpointer.sharded, doc="Whether FSDP2 shards the model.")
    epoch = property(lambda self: self.cursor.epoch, doc="Epochs completed.")
    batch_in_epoch = property(lambda self: self.cursor.batch_in_epoch, doc="Position in the epoch.")
    peak_flops = property(lambda self: self.meter.peak_flops, doc="The device's peak FLOP/s used for MFU.")
    tokens_seen = property(lambda self: self.cursor.tokens_seen, doc="Training tokens so far, all ranks.")
    best_val_loss = property(lambda self: self.validator.best_val_loss, doc="inf before any evaluation.")
    overhead_seconds = property(
        lambda self: self.meter.overhead_s,
        doc="Seconds the current (or last) ``train()`` has spent evaluating and saving checkpoints: "
        "the time that ``train_tokens_per_s`` leaves out.",
    )
    stop_signal = property(lambda self: self._stop.signum, doc="SIGTERM or SIGINT: what stopped train().")

    # ------------------------------------------------------------------ output

    def _log(self, record: dict[str, Any]) -> None:
        self._state.metrics = record
        self._call("on_log", record)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in (self.parts.metrics, self._console, *self.callbacks):
            method = getattr(callback, hook, None)
            if method is not None:
                method(self.view, *args)

    def _say(self, message: str) -> None:
        self._console.say(message)
