"""What the Trainer shows a person: the progress display and its one-line messages.

:class:`Console` is the progress line as a callback (rank 0 only) and the way every part of the
run says a line without breaking a live bar.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from nima.config.training import TrainingConfig
from nima.memory import MemoryPlan
from nima.runtime import Runtime, is_sharded
from nima.training.callbacks import Callback, ProgressPrinter
from nima.training.view import RunView


def make_progress(
    config: TrainingConfig, total_steps: int, start_step: int, steps_per_epoch: int | None
) -> ProgressPrinter:
    """A live bar on a terminal (when ``progress_bar``), else about 20 plain lines per run, at
    multiples of ``log_every``; epoch lines when the run has more than one epoch and an epoch holds
    a logging step (a shorter epoch's line would repeat the last one's figures)."""
    printer = ProgressPrinter(
        total_steps=total_steps,
        print_frequency=config.log_every,
        use_bar=None if config.progress_bar else False,
        initial_step=start_step,
        epoch_lines=bool(steps_per_epoch) and config.log_every <= steps_per_epoch < total_steps,
    )
    if not printer.use_bar:
        every, log_every = max(1, total_steps // 20), config.log_every
        printer.print_frequency = max(log_every, math.ceil(every / log_every) * log_every)
    return printer


class Console(Callback):
    """The progress display (made when training begins, at the step it begins from) and
    :meth:`say`. Rank 0 shows; the other processes stay quiet."""

    def __init__(self, config: TrainingConfig, is_main: bool, steps_per_epoch: int | None) -> None:
        self.config, self.is_main, self.steps_per_epoch = config, is_main, steps_per_epoch
        self.progress: ProgressPrinter | None = None

    def say(self, message: str) -> None:
        """Print one line (rank 0), above the live bar when there is one."""
        if not self.is_main:
            return
        if self.progress is not None:
            self.progress.write(message)
        else:
            print(message, flush=True)

    def on_train_begin(self, run: RunView) -> None:
        if self.is_main:
            self.progress = make_progress(self.config, run.total_steps, run.step, self.steps_per_epoch)

    def on_step(self, run: RunView) -> None:
        if self.progress is not None:
            self.progress.on_step(run)

    def on_log(self, run: RunView, metrics: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.on_log(run, metrics)

    def on_epoch_end(self, run: RunView, epoch: int, metrics: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.on_epoch_end(run, epoch, metrics)

    def on_train_end(self, run: RunView, results: Mapping[str, Any]) -> None:
        if self.progress is not None:
            self.progress.close()


def start_lines(
    n_params: int,
    runtime: Runtime,
    step: int,
    epoch: int,
    batch_in_epoch: int,
    compiling: bool,
    memory_plan: MemoryPlan | None = None,
    model: nn.Module | None = None,
    validation: str = "",
) -> list[str]:
    """What the run says when it starts: size, device (and processes: DDP or FSDP2), precision
    (and why), the memory plan, what the validation loss covers, resume point."""
    where = f"{runtime.device}"
    if runtime.dist.enabled:
        where += f" x {runtime.dist.world_size} processes ({'FSDP2' if is_sharded(model) else 'DDP'})"
    model_config = getattr(model, "config", None)
    lines = [f"training {n_params / 1e6:.2f}M parameters on {where}; {runtime.precision.describe()}"]
    if memory_plan is not None:
        lines.append(memory_plan.describe())
    attn_dropout = getattr(model_config, "attn_dropout", 0.0)
    if attn_dropout and runtime.device.type != "cuda":
        lines.append(
            f"note: model.attn_dropout={attn_dropout} on {runtime.device.type}: no fused attention kernel "
            "applies dropout here, so attention keeps (T x T) scores per head (memory grows with the "
            "square of the context); model.attn_dropout: 0 keeps it linear"
        )
    if validation:
        lines.append(f"validation loss: {validation}")
    if step:
        lines.append(f"resuming at step {step} (epoch {epoch}, batch {batch_in_epoch})")
    if compiling:
        lines.append("torch.compile: the first step compiles the model (tens of seconds, less when cached)")
    return lines
