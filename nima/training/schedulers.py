"""Learning-rate schedules: linear warmup, then cosine, linear, constant or cosine with restarts.

Step ``s`` is the number of optimizer steps already taken (the scheduler is stepped after each
optimizer step). With ``W`` warmup steps, ``N`` total steps, peak ``lr`` and floor ``min_lr``:

* warmup (``s < W``): ``lr * (s + 1) / W``  (the first step already moves; step W-1 is at peak)
* then with ``progress = (s - W) / (N - W)`` clamped to [0, 1]:
  - cosine:          ``min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * progress))``
  - linear:          ``min_lr + (lr - min_lr) * (1 - progress)``
  - constant:        ``lr``
  - cosine_restarts: cosine over each of ``num_cycles`` equal cycles, back to ``lr`` at each start
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from nima.config.training import TrainingConfig
from nima.config_fields import suggest
from nima.errors import ConfigError

SCHEDULER_TYPES = ("cosine", "linear", "constant", "cosine_restarts")


def lr_multiplier(
    scheduler_type: str,
    step: int,
    num_training_steps: int,
    num_warmup_steps: int = 0,
    min_ratio: float = 0.0,
    num_cycles: int = 4,
) -> float:
    """The factor applied to the peak learning rate after ``step`` optimizer steps."""
    if step < num_warmup_steps:
        return (step + 1) / num_warmup_steps
    if scheduler_type == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (step - num_warmup_steps) / max(1, num_training_steps - num_warmup_steps)))
    if scheduler_type == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif scheduler_type == "linear":
        shape = 1.0 - progress
    elif scheduler_type == "cosine_restarts":
        cycle_progress = 1.0 if progress >= 1.0 else (progress * num_cycles) % 1.0
        shape = 0.5 * (1.0 + math.cos(math.pi * cycle_progress))
    else:
        raise ConfigError(
            f"scheduler_type must be one of {', '.join(SCHEDULER_TYPES)}, got {scheduler_type!r}"
        )
    return min_ratio + (1.0 - min_ratio) * shape


def get_scheduler(
    optimizer: torch.optim.Optimizer,
    scheduler_type: str = "cosine",
    num_training_steps: int = 1000,
    num_warmup_steps: int = 0,
    min_lr: float = 0.0,
    num_cycles: int = 4,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A ``LambdaLR`` following the schedule above; call ``.step()`` after each optimizer step.

    ``min_lr`` is absolute (the same floor for every parameter group).
    """
    if scheduler_type not in SCHEDULER_TYPES:
        raise ConfigError(
            f"scheduler_type must be one of {', '.join(SCHEDULER_TYPES)}, "
            f"got {scheduler_type!r}{suggest(str(scheduler_type), SCHEDULER_TYPES)}"
        )
    if num_training_steps < 1 or num_warmup_steps < 0 or min_lr < 0 or num_cycles < 1:
        raise ConfigError(
            "scheduler needs num_training_steps >= 1, num_warmup_steps >= 0, min_lr >= 0, "
            f"num_cycles >= 1; got {num_training_steps}, {num_warmup_steps}, {min_lr}, {num_cycles}"
        )

    def for_group(peak: float) -> Callable[[int], float]:
        min_ratio = min(1.0, min_lr / peak) if peak > 0 else 0.0

        def factor(step: int) -> float:
            return lr_multiplier(
                scheduler_type, step, num_training_steps, num_warmup_steps, min_ratio, num_cycles
            )

        return factor

    peaks = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    return LambdaLR(optimizer, [for_group(p) for p in peaks])


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


def follow_changed_schedule(scheduler: Any, checkpoint: str | Path) -> str | None:
    """After resuming from ``checkpoint``: where the schedule rebuilt from this run's config gives
    another learning rate at the checkpoint's step than its run was at (``max_steps``,
    ``warmup_steps``, ``min_lr`` or the schedule type changed; raising ``max_steps`` stretches a
    cosine and raises the rate again), move the optimizer to the new schedule now and return a
    note saying so."""
    factors = getattr(scheduler, "lr_lambdas", None)  # a LambdaLR: one factor per parameter group
    if not factors:
        return None
    step, was = scheduler.last_epoch, scheduler.get_last_lr()
    now = [base * factor(step) for base, factor in zip(scheduler.base_lrs, factors, strict=True)]
    if all(math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-12) for a, b in zip(was, now, strict=True)):
        return None
    for group, lr in zip(scheduler.optimizer.param_groups, now, strict=True):
        group["lr"] = lr
    scheduler._last_lr = now  # what get_last_lr() reports (torch keeps it under this name)
    return (
        f"note: the learning-rate schedule is not the one {checkpoint} was trained with "
        "(training.max_steps, warmup_steps, min_lr or lr_scheduler_type changed): "
        f"at step {step} its run was at {was[0]:.2e}, the new schedule is at {now[0]:.2e}, "
        "and training follows the new schedule"
    )
