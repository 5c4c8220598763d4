"""What the Trainer shows a person: the progress display and its one-line messages."""

from __future__ import annotations

import math

from torch import nn

from nima.runtime import Runtime, is_sharded
from nima.runtime.memory import MemoryPlan
from nima.training.callbacks import ProgressPrinter
from nima.training.config import TrainingConfig


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
