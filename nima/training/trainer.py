"""The Trainer: a lean training loop with accumulation, mixed precision, evaluation and exact resume.

The loop is split into named steps: ``_train_step`` (forward/backward over one accumulation
window, clip, optimizer and schedule), ``_after_step`` (log, evaluate, checkpoint), and
``evaluate``. The hot path avoids host-device syncs: losses stay tensors and are read only at
logging steps.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nima.distributed import DistributedContext, all_reduce_sum, init_distributed, no_sync, wrap_model
from nima.distributed.fsdp import (
    full_state_dicts,
    is_sharded,
    load_full_model_state,
    load_full_optimizer_state,
)
from nima.errors import CheckpointError, ConfigError, TrainingDivergedError
from nima.training.background_save import BackgroundSaver
from nima.training.callbacks import EarlyStopping, MetricsTracker, ProgressPrinter
from nima.training.checkpoint import (
    FORMAT,
    atomic_save,
    capture_rng_state,
    clean_state_dict,
    gather_rank_rng_states,
    load_checkpoint_file,
    model_config_mismatches,
    newest_checkpoint,
    prune_checkpoints,
    remove_partial_checkpoints,
    restore_rank_rng_state,
    restore_rng_state,
    tokenizer_mismatches,
    unwrap_model,
)
from nima.training.compilation import compile_model
from nima.training.config import TrainingConfig
from nima.training.mfu import mfu, peak_flops_for
from nima.training.optimizers import get_optimizer
from nima.training.precision import PrecisionChoice, bf16_faster_on_cpu, choose_precision
from nima.training.preemption import StopSignal
from nima.training.schedulers import get_scheduler

IGNORE_INDEX = -100


def resolve_device(name: str, ctx: DistributedContext | None = None) -> torch.device:
    """``auto`` -> CUDA (this process's GPU under torchrun), else MPS, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device={name} but no CUDA GPU is available; use device: auto or cpu")
    if name == "cuda" and ctx is not None and ctx.enabled:
        name = f"cuda:{ctx.local_rank}"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Train ``model`` on batches from ``train_dataloader``.

    Batches are dicts with ``input_ids`` and ``labels`` (B, T) (labels already shifted, -100
    ignored) or ``(input_ids, labels)`` pairs; the model is called as ``model(input_ids,
    labels=labels)`` and must return an object with ``.loss`` (or the loss tensor itself).

    Args:
        model: the model (moved to the configured device; wrapped in DDP under torchrun).
        config: a :class:`TrainingConfig` (defaults when None).
        train_dataloader: the training loader; under torchrun it should be sharded by rank
            (``create_dataloader(..., rank=, world_size=)``).
        eval_dataloader: optional validation loader; ``config.eval_batches`` batches per evaluation.
        tokenizer: optional tokenizer, recorded (identity and path) in checkpoints.
        callbacks: objects with ``on_*`` hooks (see :class:`nima.training.callbacks.Callback`).
        optimizer, scheduler: use these instead of building them from the config.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainingConfig | None = None,
        train_dataloader: Iterable | None = None,
        eval_dataloader: Iterable | None = None,
        tokenizer: Any = None,
        callbacks: Iterable[Any] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> None:
        self.config = config = config if config is not None else TrainingConfig()
        if not isinstance(config, TrainingConfig):
            raise ConfigError(f"config must be a TrainingConfig, got {type(config).__name__}")
        if train_dataloader is None:
            raise ConfigError("Trainer needs a train_dataloader (see create_dataloader)")
        self.train_dataloader = train_dataloader
        self.eval_dataloader = eval_dataloader
        self.tokenizer = tokenizer

        requested = config.device
        guess = (
            "cuda"
            if requested.startswith("cuda") or (requested == "auto" and torch.cuda.is_available())
            else "cpu"
        )
        self.dist = init_distributed(guess)
        self.device = resolve_device(requested, self.dist)
        self.is_main = self.dist.is_main
        seed_everything(config.seed + self.dist.rank)

        self.raw_model = unwrap_model(model).to(self.device)
        self._set_gradient_checkpointing(config.gradient_checkpointing)
        self.batch_size, self.seq_len = self._peek_batch_shape()
        self._check_batch_size()
        self._check_sharding()
        self.precision: PrecisionChoice = choose_precision(
            config.precision, config.use_mixed_precision, self.device, bf16_benchmark=self._bf16_benchmark
        )
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision(self.precision.float32_matmul_precision)

        if config.distributed_strategy == "fsdp":
            # FSDP2 shards the module in place; compile (if asked) then wraps the sharded module.
            # In bf16 the parameters are gathered in bf16 (half the traffic); fp16 keeps fp32
            # parameters under autocast, where its gradient scaler is known to work.
            param_dtype = torch.bfloat16 if self.precision.name == "bf16" else None
            wrap_model(self.raw_model, self.dist, self.device, "fsdp", param_dtype=param_dtype)
            self.model = compile_model(self.raw_model, self.device) if config.compile else self.raw_model
        else:
            model_to_run = compile_model(self.raw_model, self.device) if config.compile else self.raw_model
            self.model = wrap_model(model_to_run, self.dist, self.device, "ddp")
        self.sharded = is_sharded(self.raw_model)

        self.batches_per_epoch = self._loader_length()
        if self.batches_per_epoch == 0:
            raise ConfigError(
                "the train loader yields no batches; is the dataset smaller than one batch "
                "(check max_length, batch_size and drop_last)?"
            )
        accum = config.gradient_accumulation_steps
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / accum) if self.batches_per_epoch else None
        if config.max_steps is not None:
            self.total_steps = config.max_steps
        elif self.steps_per_epoch:
            self.total_steps = config.num_epochs * self.steps_per_epoch
        else:
            raise ConfigError("the train loader has no length; set training.max_steps")

        self.optimizer = optimizer or get_optimizer(
            self.raw_model,
            config.optimizer_type,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            betas=config.betas,
            eps=config.eps,
            momentum=config.momentum,
        )
        self.scheduler = scheduler or get_scheduler(
            self.optimizer,
            config.lr_scheduler_type,
            num_training_steps=self.total_steps,
            num_warmup_steps=config.warmup_steps,
            min_lr=config.min_lr,
            num_cycles=config.lr_num_cycles,
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.needs_grad_scaler else None
        self._params = [p for p in self.raw_model.parameters() if p.requires_grad]

        self.output_dir = Path(config.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.log_dir = self.output_dir / "logs"
        self.metrics = MetricsTracker(self.log_dir if self.is_main else None)
        self.callbacks: list[Any] = list(callbacks or [])
        self.early_stopping: EarlyStopping | None = next(
            (cb for cb in self.callbacks if isinstance(cb, EarlyStopping)), None
        )
        if self.early_stopping is None and config.early_stopping_patience:
            self.early_stopping = EarlyStopping(
                config.early_stopping_patience, config.early_stopping_min_delta
            )
            self.callbacks.append(self.early_stopping)

        flops = getattr(self.raw_model, "estimate_flops_per_token", None)
        self.flops_per_token = float(flops(self.seq_len)) if callable(flops) and self.seq_len else None
        self.peak_flops = peak_flops_for(self.device, self.precision.name, config.peak_flops)

        # Training state (all of it goes into checkpoints).
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.tokens_seen = 0
        self.best_val_loss = math.inf
        self.last_val_loss: float | None = None
        self.should_stop = False
        self.stop_reason: str | None = None
        self._stop = StopSignal()
        self._saver = BackgroundSaver()
        self.progress: ProgressPrinter | None = None
        self._iter: Iterator | None = None
        self._exhausted = False
        self._announced = False
        self._last_grad_norm: torch.Tensor | None = None
        self._overhead_s = 0.0
        self._last_finite_step = 0
        self._interval: dict[str, Any] = {
            "t": time.perf_counter(),
            "overhead": 0.0,
            "tokens": 0,
            "loss_sum": None,
            "steps": 0,
        }

    # ------------------------------------------------------------------ set-up helpers

    def _set_gradient_checkpointing(self, enabled: bool) -> None:
        model_config = getattr(self.raw_model, "config", None)
        if enabled and not hasattr(model_config, "gradient_checkpointing"):
            warnings.warn(
                "training.gradient_checkpointing is on but this model does not support it; ignored",
                stacklevel=3,
            )
        elif enabled:
            model_config.gradient_checkpointing = True

    def _peek_batch_shape(self) -> tuple[int | None, int | None]:
        loader = self.train_dataloader
        batch_size = getattr(loader, "batch_size", None)
        dataset = getattr(loader, "dataset", None)
        seq_len = getattr(dataset, "max_length", None)
        if seq_len is None:
            model_config = getattr(self.raw_model, "config", None)
            seq_len = getattr(model_config, "max_seq_len", None)
        return batch_size, seq_len

    def _check_batch_size(self) -> None:
        if self.batch_size is not None and self.batch_size != self.config.batch_size:
            warnings.warn(
                f"TrainingConfig.batch_size={self.config.batch_size} but the train loader yields batches of "
                f"{self.batch_size}; the Trainer uses the loader's batches (batch_size only sizes "
                "the loaders that scripts/train.py builds)",
                stacklevel=3,
            )

    def _check_sharding(self) -> None:
        if not self.dist.enabled:
            return
        sampler = getattr(self.train_dataloader, "sampler", None)
        if getattr(sampler, "world_size", getattr(sampler, "num_replicas", 1)) != self.dist.world_size:
            warnings.warn(
                "running on several processes but the train loader is not sharded by rank: every "
                "process sees the same batches; build it with create_dataloader(rank=, world_size=)",
                stacklevel=3,
            )

    def _bf16_benchmark(self) -> bool:
        cfg = getattr(self.raw_model, "config", None)
        d_model = getattr(cfg, "d_model", 512)
        d_ff = getattr(cfg, "ff_dim", None) or getattr(cfg, "d_ff", None) or 4 * d_model
        rows = (self.batch_size or 8) * (self.seq_len or 256)
        return bf16_faster_on_cpu(rows, d_model, d_ff)

    def _loader_length(self) -> int | None:
        try:
            with self._quiet_rng():
                self._set_loader_epoch(self.train_dataloader, 0, 0)
            return len(self.train_dataloader)
        except TypeError:
            return None

    @staticmethod
    @contextlib.contextmanager
    def _quiet_rng():
        # DataLoader draws its base seed from the global torch RNG when an iterator is created;
        # shield the training RNG stream from it so resuming mid-epoch stays bit-exact.
        with torch.random.fork_rng(devices=[]):
            yield

    @staticmethod
    def _set_loader_epoch(loader: Any, epoch: int, start_batch: int) -> int:
        """Position ``loader`` at (epoch, start_batch); returns batches still to skip by hand."""
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_start"):
            from nima.data import set_loader_epoch

            set_loader_epoch(loader, epoch, start_batch=start_batch)
            return 0
        for obj in (getattr(loader, "dataset", None), sampler):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        return start_batch

    def _open_epoch(self) -> Iterator:
        with self._quiet_rng():
            skip = self._set_loader_epoch(self.train_dataloader, self.epoch, self.batch_in_epoch)
            iterator = iter(self.train_dataloader)
        for _ in range(skip):
            next(iterator, None)
        self._exhausted = False
        return iterator

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict[str, Any]:
        """Train until ``max_steps`` (or ``num_epochs``), early stopping or a callback stops it.

        Returns ``final_val_loss``, ``best_val_loss``, ``final_train_loss``, ``steps``,
        ``epochs``, ``tokens``, ``wall_time_s``, ``tokens_per_s`` (over the whole run, evaluation
        included), ``train_tokens_per_s`` (training steps only), ``precision``, ``stopped_early``,
        ``last_checkpoint``, ``output_dir`` and ``stop_signal``.

        SIGTERM (what schedulers send before preempting a job) or Ctrl-C (SIGINT) stops training
        at the next step boundary (under torchrun: at the next logging step, on all ranks
        together), saves ``step_N.pt`` and returns with ``stop_signal`` set; the run resumes from
        that checkpoint. A second Ctrl-C raises KeyboardInterrupt at once, saving nothing.
        A nan or inf loss raises TrainingDivergedError at the next logging or saving step, before
        anything from the broken steps is logged or saved.
        """
        cfg = self.config
        self.should_stop = False
        self.stop_reason = None
        start_step, start_tokens = self.step, self.tokens_seen
        self._last_finite_step = self.step
        self.progress = self._make_progress()
        self._announce()
        if self.is_main:
            for leftover in remove_partial_checkpoints(self.checkpoint_dir):
                self._say(f"removed {leftover.name}: a checkpoint that a killed run did not finish writing")
        self._call("on_train_begin", self)
        wall_start = time.perf_counter()
        self._overhead_s = 0.0  # evaluation + checkpoint time, excluded from tokens/s
        self._interval = {
            "t": time.perf_counter(),
            "overhead": 0.0,
            "tokens": 0,
            "loss_sum": None,
            "steps": 0,
        }
        last_checkpoint: Path | None = None
        last_saved_step, last_eval_step = -1, -1
        train_loss = None
        self.raw_model.train()
        self._stop.install()  # uninstalled in the finally below
        completed = False
        try:
            while self.step < self.total_steps and not self.should_stop:
                if self._iter is None:
                    self._iter = self._open_epoch()
                window = self._next_window()
                if window:
                    self._train_step(window)
                epoch_done = self._exhausted or (
                    self.batches_per_epoch is not None and self.batch_in_epoch >= self.batches_per_epoch
                )
                if epoch_done:
                    if not window and self.batch_in_epoch == 0:
                        raise ConfigError(
                            "the train loader yielded no batches; is the dataset smaller than "
                            "one batch (check max_length, batch_size and drop_last)?"
                        )
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    self._iter = None
                if not window:  # an iterable loader ran out exactly at a step boundary
                    if epoch_done:
                        last_checkpoint = self._end_epoch(train_loss) or last_checkpoint
                        if cfg.max_steps is None and self.epoch >= cfg.num_epochs:
                            break
                    continue
                record = self._after_step()
                if record is not None:
                    train_loss = record.get("loss", train_loss)
                    if "val_loss" in record:
                        last_eval_step = self.step
                    if record.get("checkpoint"):
                        last_checkpoint, last_saved_step = Path(record["checkpoint"]), self.step
                if epoch_done:
                    saved = self._end_epoch(train_loss)
                    last_checkpoint = saved or last_checkpoint
                    if cfg.max_steps is None and self.epoch >= cfg.num_epochs:
                        break
                if self._stop.agreed(self.step, cfg.log_every, self.device):
                    self.should_stop = True
                    self.stop_reason = (
                        f"stopped by {self._stop.name} at step {self.step}; resume from the checkpoint"
                    )
            # Final evaluation (not when preempted: time is short) and checkpoint, unless this very
            # step already had them.
            if (
                self.eval_dataloader is not None
                and last_eval_step != self.step
                and self.step > start_step
                and self._stop.signum is None
            ):
                t0 = time.perf_counter()
                val = self.evaluate()
                self._note_val(val)
                self.metrics.log({"val_loss": val["val_loss"]}, self.step)
                self._call("on_evaluate", self, val)
                self._overhead_s += time.perf_counter() - t0
            if last_saved_step != self.step and self.step > start_step:
                self._check_loss_is_finite()
                t0 = time.perf_counter()
                last_checkpoint = self.save_checkpoint(f"step_{self.step}")
                self._overhead_s += time.perf_counter() - t0
            completed = True
        except KeyboardInterrupt:
            # A second Ctrl-C (the first stops at a step boundary and saves): the step under way may
            # be half applied, so nothing is saved; the last checkpoint written is intact.
            if self.step > start_step:
                last = newest_checkpoint(self.output_dir)
                where = f"resume from {last}" if last else "no step checkpoint was written yet"
                self._say(f"interrupted after step {self.step} without saving; {where}")
            raise
        finally:
            self._stop.uninstall()
            self._finish_background_save(raise_errors=completed)
            wall = time.perf_counter() - wall_start
        tokens = self.tokens_seen - start_tokens
        train_s = max(wall - self._overhead_s, 1e-9)
        if train_loss is None and self._interval["loss_sum"] is not None:
            train_loss = float(self._interval["loss_sum"]) / max(1, self._interval["steps"])
        results = {
            "final_val_loss": self.last_val_loss,
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "final_train_loss": train_loss,
            "steps": self.step,
            "epochs": self.epoch
            + (self.batch_in_epoch / self.batches_per_epoch if self.batches_per_epoch else 0),
            "tokens": tokens,
            "wall_time_s": wall,
            "tokens_per_s": tokens / wall if wall > 0 else 0.0,
            "train_tokens_per_s": tokens / train_s,
            "precision": self.precision.name,
            "stopped_early": self.stop_reason is not None,
            "stop_reason": self.stop_reason,
            "last_checkpoint": str(last_checkpoint) if last_checkpoint else None,
            "output_dir": str(self.output_dir),
            "stop_signal": self._stop.name,
        }
        if self.stop_reason:
            self._say(self.stop_reason)
        self._call("on_train_end", self, results)
        self.metrics.close()
        if self.progress is not None:
            self.progress.close()
        return results

    @property
    def overhead_seconds(self) -> float:
        """Seconds the current (or last) ``train()`` has spent evaluating and saving checkpoints:
        the time that ``train_tokens_per_s`` leaves out."""
        return self._overhead_s

    @property
    def stop_signal(self) -> int | None:
        """The signal (``signal.SIGTERM`` or ``signal.SIGINT``) that stopped the last ``train()``."""
        return self._stop.signum

    def _next_window(self) -> list[Any]:
        """Up to gradient_accumulation_steps micro-batches, never crossing an epoch boundary."""
        window: list[Any] = []
        accum = self.config.gradient_accumulation_steps
        while len(window) < accum:
            if (
                self.batches_per_epoch is not None
                and self.batch_in_epoch + len(window) >= self.batches_per_epoch
            ):
                break
            try:
                window.append(next(self._iter))
            except StopIteration:
                self._exhausted = True
                break
        return window

    @staticmethod
    def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, dict):
            return batch["input_ids"], batch["labels"]
        input_ids, labels = batch
        return input_ids, labels

    @staticmethod
    def _loss_of(output: Any) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.loss

    def forward_backward(self, window: list[Any]) -> torch.Tensor:
        """Forward and backward over one accumulation window; gradients are left in ``.grad``.

        Returns the window's loss (a detached tensor: the mean over all its labelled tokens).
        """
        pairs = [self._unpack(b) for b in window]
        if len(pairs) > 1:
            # The model returns a mean over non-ignored labels; weighting each micro-batch by its
            # share of the window's labelled tokens makes the sum the mean over the whole window.
            counts = [int((labels != IGNORE_INDEX).sum()) for _, labels in pairs]
            total = max(1, sum(counts))
            weights = [c / total for c in counts]
        else:
            weights = [1.0]
        device, non_blocking = self.device, self.device.type == "cuda"
        window_loss = None
        last = len(pairs) - 1
        for i, (input_ids, labels) in enumerate(pairs):
            input_ids = input_ids.to(device, non_blocking=non_blocking)
            labels = labels.to(device, non_blocking=non_blocking)
            with no_sync(self.model, skip=i < last):
                with self.precision.autocast():
                    loss = self._loss_of(self.model(input_ids, labels=labels))
                if weights[i] != 1.0:
                    loss = loss * weights[i]
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            detached = loss.detach()
            window_loss = detached if window_loss is None else window_loss + detached
            tokens = input_ids.numel() * self.dist.world_size
            self.tokens_seen += tokens
            self._interval["tokens"] += tokens
        return window_loss

    def optimizer_step(self) -> torch.Tensor | None:
        """Unscale (fp16), clip, step the optimizer and the schedule, clear gradients; returns the
        gradient norm before clipping (a tensor; None when neither clipping nor logging needs it)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = self.config.gradient_clip
        grad_norm = None
        if clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(self._params, clip, foreach=True)
        elif (self.step + 1) % self.config.log_every == 0:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self._params if p.grad is not None])
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _train_step(self, window: list[Any]) -> None:
        """One optimizer step over ``window``, and the bookkeeping that goes with it."""
        step_loss = self.forward_backward(window)
        grad_norm = self.optimizer_step()
        self.step += 1
        self.batch_in_epoch += len(window)
        interval = self._interval
        interval["loss_sum"] = step_loss if interval["loss_sum"] is None else interval["loss_sum"] + step_loss
        interval["steps"] += 1
        self._last_grad_norm = grad_norm
        if self.progress is not None and self.progress.use_bar:
            self.progress.advance(self.step)

    def _after_step(self) -> dict[str, Any] | None:
        """Log, evaluate and save as the step count says; returns what was logged (or None)."""
        cfg, step = self.config, self.step
        is_last = step >= self.total_steps
        do_eval = self.eval_dataloader is not None and cfg.eval_every and step % cfg.eval_every == 0
        do_log = step % cfg.log_every == 0 or is_last or do_eval
        do_save = cfg.save_every and step % cfg.save_every == 0
        if not (do_log or do_save):
            return None
        self._check_loss_is_finite()
        record: dict[str, Any] = {}
        if do_log:
            record.update(self._step_metrics())
        if do_eval:
            t0 = time.perf_counter()
            val = self.evaluate()
            self._note_val(val)
            record.update(val)
            self._call("on_evaluate", self, val)
            self._spent(time.perf_counter() - t0)
        if do_log:
            self.metrics.log({k: v for k, v in record.items() if k != "checkpoint"}, step)
            if self.progress is not None:
                self.progress.print_step(step, record)
            self._call("on_step_end", self, record)
        if do_save:
            t0 = time.perf_counter()
            record["checkpoint"] = str(self.save_checkpoint(f"step_{step}"))
            self._spent(time.perf_counter() - t0)
        return record

    def _check_loss_is_finite(self) -> None:
        """Stop with TrainingDivergedError if the loss since the last check is nan or inf on any
        process, before anything is logged or saved: a diverged run never writes (or, through
        ``keep_last_checkpoints``, prunes away) a good checkpoint. Called where the loop reads the
        loss anyway (logging and saving steps); under torchrun every process calls it together."""
        loss_sum = self._interval["loss_sum"]
        diverged = loss_sum is not None and not math.isfinite(float(loss_sum))
        if self.dist.enabled:
            flag = torch.tensor(float(diverged), device=self.device)
            diverged = bool(all_reduce_sum(flag).item())
        if not diverged:
            self._last_finite_step = self.step
            return
        last = newest_checkpoint(self.output_dir)
        resume = f"resume from {last}" if last else "start again"
        clip = "" if self.config.gradient_clip else ", training.gradient_clip: 1.0"
        raise TrainingDivergedError(
            f"training diverged: the loss became nan or inf between steps {self._last_finite_step} and "
            f"{self.step}, and nothing was saved after step {self._last_finite_step}; {resume} with a "
            f"lower training.learning_rate (now {self.config.learning_rate:g}){clip} or more warmup_steps"
        )

    def _spent(self, seconds: float) -> None:
        self._overhead_s += seconds
        self._interval["overhead"] += seconds

    def _step_metrics(self) -> dict[str, float]:
        """Loss averaged since the last log, lr, grad norm, tokens/s (and MFU): one host sync."""
        interval = self._interval
        now = time.perf_counter()
        elapsed = max(now - interval["t"] - interval["overhead"], 1e-9)
        loss = (
            float(interval["loss_sum"]) / max(1, interval["steps"])
            if interval["loss_sum"] is not None
            else None
        )
        tokens_per_s = interval["tokens"] / elapsed
        metrics: dict[str, float] = {
            "loss": loss,
            "lr": self.scheduler.get_last_lr()[0],
            "tokens_per_s": tokens_per_s,
            "epoch": self.epoch,
        }
        if self._last_grad_norm is not None:
            metrics["grad_norm"] = float(self._last_grad_norm)
        if self.flops_per_token and self.peak_flops:
            metrics["mfu"] = mfu(tokens_per_s, self.flops_per_token, self.peak_flops, self.dist.world_size)
        self._interval = {"t": now, "overhead": 0.0, "tokens": 0, "loss_sum": None, "steps": 0}
        return metrics

    def _note_val(self, val: dict[str, float]) -> None:
        self.last_val_loss = val["val_loss"]
        if val["val_loss"] < self.best_val_loss:
            self.best_val_loss = val["val_loss"]
            self.save_checkpoint("best_model")

    def _end_epoch(self, train_loss: float | None) -> Path | None:
        metrics: dict[str, Any] = {}
        if train_loss is not None:
            metrics["train_loss"] = train_loss
        if self.last_val_loss is not None:
            metrics["val_loss"] = self.last_val_loss
        if (
            self.progress is not None
            and self.is_main
            and self.steps_per_epoch
            and self.total_steps > self.steps_per_epoch
        ):
            self.progress.print_epoch_end(self.epoch, metrics)
        self._call("on_epoch_end", self, self.epoch, metrics)
        if self.config.save_epoch_checkpoints:
            self._check_loss_is_finite()
            t0 = time.perf_counter()
            path = self.save_checkpoint(f"epoch_{self.epoch}")
            self._spent(time.perf_counter() - t0)
            return path
        return None

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, max_batches: int | None = None) -> dict[str, float]:
        """Mean validation loss (per labelled token) over the first ``eval_batches`` batches.

        Averaged over all processes under torchrun. Returns ``val_loss`` and ``val_perplexity``.
        """
        if self.eval_dataloader is None:
            raise ConfigError("no eval_dataloader was given to the Trainer")
        max_batches = max_batches or self.config.eval_batches
        model = self.raw_model
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        with self._quiet_rng():
            self._set_loader_epoch(self.eval_dataloader, 0, 0)
            iterator = iter(self.eval_dataloader)
        for _, batch in zip(range(max_batches), iterator, strict=False):
            input_ids, labels = self._unpack(batch)
            input_ids, labels = input_ids.to(self.device), labels.to(self.device)
            with self.precision.autocast():
                loss = self._loss_of(model(input_ids, labels=labels))
            n = (labels != IGNORE_INDEX).sum()
            loss_sum += loss.double() * n
            count += n
        all_reduce_sum(loss_sum)
        all_reduce_sum(count)
        model.train(was_training)
        if float(count) == 0:
            raise ConfigError("the validation loader yielded no labelled tokens")
        val_loss = float(loss_sum / count)
        return {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50.0))}

    # ------------------------------------------------------------------ checkpoints

    def _tokenizer_identity(self) -> dict[str, Any] | None:
        dataset = getattr(self.train_dataloader, "dataset", None)
        identity = None
        if self.tokenizer is not None and hasattr(self.tokenizer, "identity"):
            identity = dict(self.tokenizer.identity())
        elif getattr(dataset, "tokenizer_identity", None):
            identity = dict(dataset.tokenizer_identity)
        if identity is None:
            return None
        prepared = getattr(dataset, "prepared_path", None)
        if prepared is not None and (Path(prepared) / "tokenizer.json").is_file():
            identity["path"] = str((Path(prepared) / "tokenizer.json").resolve())
        return identity

    def checkpoint_state(self, gathered: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything needed to rebuild the model and continue training exactly.

        ``gathered``: what the ranks collected together for this checkpoint (see
        :meth:`_gather_for_checkpoint`): every process's RNG state and, for a sharded (FSDP)
        model, the full model and optimizer states. Single-process runs need none of it.
        """
        gathered = gathered or {}
        dataset = getattr(self.train_dataloader, "dataset", None)
        prepared = getattr(dataset, "prepared_path", None)
        model_config = getattr(self.raw_model, "config", None)
        state = {
            "format": FORMAT,
            "model": gathered.get("model") or clean_state_dict(self.raw_model.state_dict()),
            "model_config": model_config.to_dict() if hasattr(model_config, "to_dict") else None,
            "tokenizer": self._tokenizer_identity(),
            "data": {"prepared_path": str(prepared) if prepared is not None else None},
            "training_config": self.config.to_dict(),
            "optimizer": gathered.get("optimizer") or self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "last_val_loss": self.last_val_loss,
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping else None,
            "precision": self.precision.name,
            "world_size": self.dist.world_size,
            "rng": capture_rng_state(),
            "rng_by_rank": gathered.get("rng_by_rank"),
        }
        return state

    def save_checkpoint(self, name: str, all_ranks: bool = True) -> Path:
        """Write ``<output_dir>/checkpoints/<name>.pt`` atomically (rank 0 writes); returns the path.

        Under torchrun every rank must call it (each contributes its RNG state), unless
        ``all_ranks=False``: then only rank 0 calls it and resuming will not be exact.
        """
        path = Path(name)
        if path.suffix != ".pt":
            path = path.with_name(path.name + ".pt")
        if not path.is_absolute() and path.parent == Path("."):
            path = self.checkpoint_dir / path
        gathered = self._gather_for_checkpoint() if all_ranks else {}
        if not self.is_main:
            return path
        state = self.checkpoint_state(gathered)
        if self.config.async_checkpoint:
            self._saver.submit(state, lambda snapshot: self._write_checkpoint(snapshot, path))
        else:
            self._write_checkpoint(state, path)
        self._call("on_save", self, path)
        return path

    def _write_checkpoint(self, state: dict[str, Any], path: Path) -> None:
        atomic_save(state, path)
        for prefix in ("step", "epoch"):
            if path.name.startswith(prefix + "_"):
                prune_checkpoints(path.parent, prefix, self.config.keep_last_checkpoints, protect=path)

    def wait_for_checkpoint(self) -> None:
        """Block until a checkpoint being written in the background (``async_checkpoint``) is on
        disk; raises the error if writing it failed. ``train()`` does this before it returns."""
        self._saver.wait()

    def _finish_background_save(self, raise_errors: bool) -> None:
        t0 = time.perf_counter()
        try:
            self._saver.close()
        except CheckpointError as err:
            if raise_errors:
                raise
            warnings.warn(str(err), stacklevel=3)  # another error is already on its way out
        finally:
            self._overhead_s += time.perf_counter() - t0

    def _gather_for_checkpoint(self) -> dict[str, Any]:
        """What every rank contributes to a checkpoint (a collective under torchrun)."""
        if not self.dist.enabled:
            return {}
        gathered: dict[str, Any] = {"rng_by_rank": gather_rank_rng_states()}
        if self.sharded:
            gathered["model"], gathered["optimizer"] = full_state_dicts(self.raw_model, self.optimizer)
        return gathered

    def load_checkpoint(self, path: str | Path, weights_only_model: bool = False) -> dict[str, Any]:
        """Restore model, optimizer, schedule, scaler, step, data position and RNG from ``path``.

        Raises CheckpointError when the checkpoint's model config or tokenizer does not match
        this run. ``weights_only_model=True`` loads only the model weights (fine-tuning).
        """
        self._saver.wait()  # the file may be the one still being written
        ckpt = load_checkpoint_file(path, map_location="cpu")
        model_config = getattr(self.raw_model, "config", None)
        if ckpt.get("model_config") and hasattr(model_config, "to_dict"):
            diffs = model_config_mismatches(ckpt["model_config"], model_config.to_dict())
            if diffs:
                raise CheckpointError(f"{path} does not match this model: {'; '.join(diffs)}")
        diffs = tokenizer_mismatches(ckpt.get("tokenizer"), self._tokenizer_identity())
        if diffs:
            raise CheckpointError(f"{path} was trained with a different tokenizer: {'; '.join(diffs)}")
        model_state = clean_state_dict(ckpt["model"])
        try:
            if self.sharded:  # every rank reads the file and keeps its own shards
                load_full_model_state(self.raw_model, model_state)
            else:
                self.raw_model.load_state_dict(model_state)
        except RuntimeError as err:
            raise CheckpointError(
                f"{path}: weights do not fit this model: {str(err).splitlines()[0][:200]}"
            ) from None
        if weights_only_model:
            return ckpt
        try:
            if self.sharded:
                load_full_optimizer_state(self.raw_model, self.optimizer, ckpt["optimizer"])
            else:
                self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, IndexError) as err:
            raise CheckpointError(
                f"{path}: optimizer state does not fit this optimizer (was optimizer_type changed?): {err}"
            ) from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self.epoch = int(ckpt["epoch"])
        self.batch_in_epoch = int(ckpt["batch_in_epoch"])
        self.tokens_seen = int(ckpt.get("tokens_seen", 0))
        best = ckpt.get("best_val_loss")
        self.best_val_loss = math.inf if best is None else float(best)
        self.last_val_loss = ckpt.get("last_val_loss")
        if self.early_stopping is not None and ckpt.get("early_stopping"):
            self.early_stopping.load_state_dict(ckpt["early_stopping"])
        self._restore_rng(ckpt, path)
        self._iter = None
        return ckpt

    def _restore_rng(self, ckpt: dict[str, Any], path: str | Path) -> None:
        """Each rank takes back its own generator states; warn when that is not possible."""
        saved_world = int(ckpt.get("world_size", 1))
        by_rank = ckpt.get("rng_by_rank")
        if not ckpt.get("rng"):
            return
        if self.dist.world_size == 1 and saved_world == 1:
            restore_rng_state(ckpt["rng"])
        elif by_rank and len(by_rank) == self.dist.world_size:
            if self.is_main:
                restore_rng_state(ckpt["rng"])
            restore_rank_rng_state(by_rank[self.dist.rank])
        elif self.is_main:
            why = (
                f"it was saved by {saved_world} processes and this run has {self.dist.world_size}"
                if saved_world != self.dist.world_size
                else "it holds only rank 0's random state (saved on interrupt)"
            )
            warnings.warn(
                f"{path}: random streams (dropout) start afresh because {why}; "
                "training continues, but not bit-exactly as an uninterrupted run would",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ output

    def _make_progress(self) -> ProgressPrinter | None:
        if not self.is_main:
            return None
        cfg = self.config
        printer = ProgressPrinter(
            total_steps=self.total_steps,
            print_frequency=cfg.log_every,
            use_bar=None if cfg.progress_bar else False,
            initial_step=self.step,
        )
        if not printer.use_bar:
            # Plain lines (logs, pipes): about 20 per run, at multiples of log_every.
            every = max(1, self.total_steps // 20)
            printer.print_frequency = max(cfg.log_every, math.ceil(every / cfg.log_every) * cfg.log_every)
        return printer

    def _say(self, message: str) -> None:
        if not self.is_main:
            return
        if self.progress is not None:
            self.progress.write(message)
        else:
            print(message, flush=True)

    def _announce(self) -> None:
        if self._announced:
            return
        self._announced = True
        n_params = sum(p.numel() for p in self._params)
        where = f"{self.device}" + (f" x {self.dist.world_size} processes" if self.dist.enabled else "")
        self._say(f"training {n_params / 1e6:.2f}M parameters on {where}; {self.precision.describe()}")
        if self.step:
            self._say(f"resuming at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})")
        if self.config.compile:
            self._say("torch.compile: the first step compiles the model (tens of seconds, less when cached)")

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(*args)
