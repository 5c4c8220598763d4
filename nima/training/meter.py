"""The meter: throughput, MFU, the loss between logging steps, time spent outside training steps,
and the numeric checks (the loss is finite; non-finite steps counted by the guard).

Losses stay on the device: each step's is kept as it is, summed with the others' when a logging
step reads them (one host sync), so that a step costs no work of its own on the device.
Time spent evaluating and saving is *overhead*: it is left out of tokens/s, so that the figure
measures training steps alone; ``wall_s`` keeps the whole.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nima.checkpoint import newest_checkpoint
from nima.config import TrainingConfig
from nima.distributed import all_reduce_sum
from nima.errors import TrainingDivergedError
from nima.memory.system import process_bytes
from nima.training.guard import GuardReport, NonfiniteGuard
from nima.training.mfu import mfu
from nima.training.step import StepOutput


@dataclass
class Interval:
    """What happened since the last logging step."""

    started: float = field(default_factory=time.perf_counter)
    overhead_s: float = 0.0
    tokens: int = 0
    steps: int = 0
    loss_sum: torch.Tensor | None = None
    nonfinite: torch.Tensor | None = None
    """How many of the steps were skipped as non-finite (their loss is left out of the mean)."""


@dataclass
class StepReport:
    """The figures of one logging step."""

    loss: float | None
    tokens_per_s: float
    grad_norm: float | None = None
    mfu: float | None = None
    tokens: int | None = None
    """Training tokens seen so far (all processes; resumed runs count the earlier ones)."""
    time_s: float | None = None
    """Seconds since this ``train()`` call started."""
    memory_gib: float | None = None
    """Peak memory so far (see :func:`peak_memory_gib`)."""
    skipped_steps: int = 0
    """Optimizer steps skipped since the last report (nan/inf gradients, fp16 overflows)."""

    def as_record(self, lr: float, epoch: int) -> dict[str, float]:
        """The log record of this step, with the learning rate and epoch it was taken at."""
        out = {"loss": self.loss, "lr": lr, "tokens_per_s": self.tokens_per_s, "epoch": epoch}
        if self.grad_norm is not None:
            out["grad_norm"] = self.grad_norm
        if self.mfu is not None:
            out["mfu"] = self.mfu
        for name in ("tokens", "time_s", "memory_gib"):  # the x axes of plots, and memory
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.skipped_steps:
            out["skipped_steps"] = self.skipped_steps
        return out


FOLD_EVERY = 64
"""Steps whose figures the meter keeps before summing them on the device (when no logging step
reads them sooner): a bound on what it holds for runs that log rarely."""


def _running(total: torch.Tensor | None, value: torch.Tensor, op: Callable) -> torch.Tensor:
    return value if total is None else op(total, value)


def peak_memory_gib(device: torch.device | None) -> float | None:
    """Peak memory of this process so far, in GiB: the CUDA allocator's peak on a GPU, else the
    resident set's high-water mark (Linux; None elsewhere)."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    peak = process_bytes("VmHWM")
    return None if peak is None else peak / 1024**3


class Meter:
    """Counts tokens, steps and seconds of one ``train()`` call."""

    def __init__(
        self,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
        world_size: int = 1,
        device: torch.device | None = None,
        tokens_seen: Callable[[], int] | None = None,
    ) -> None:
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.world_size = world_size
        self.device = device  # for the peak memory in each report
        self.tokens_seen = tokens_seen  # all tokens so far (resumes included); default: this call's
        self.start()

    def start(self) -> None:
        """Begin a run: totals and the current interval start from zero."""
        self.run_started = time.perf_counter()
        self.overhead_s = 0.0
        self.tokens = 0
        self.interval = Interval()
        self.last_loss: float | None = None
        self._grad_norm: torch.Tensor | None = None
        self.guard = NonfiniteGuard(self.device or torch.device("cpu"))
        self._pending: list[StepOutput] = []  # recorded steps not yet summed (see record)
        self._pending_first_step = 0
        self.skipped_steps = 0  # in this train() call
        self._skipped_unreported = 0

    def record(self, output: StepOutput, tokens: int, step: int) -> None:
        """Optimizer step number ``step``: its loss, gradient norm and nan/inf flag (device
        tensors), and its tokens. Nothing runs on the device here: the steps' figures are kept
        and summed together when they are read (or every ``FOLD_EVERY`` steps)."""
        interval = self.interval
        if not self._pending:
            self._pending_first_step = step
        self._pending.append(output)
        interval.steps += 1
        interval.tokens += tokens
        self.tokens += tokens
        self._grad_norm = output.grad_norm
        if output.overflow:
            self.guard.record_overflow()
        if len(self._pending) >= FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        """Add the kept steps to the interval's loss sum and non-finite count, and to the guard
        (a few kernels for all of them; a skipped step's loss is left out of the mean)."""
        if not self._pending:
            return
        outputs, self._pending = self._pending, []
        losses = torch.stack([output.loss.float() for output in outputs])
        flags = torch.stack([output.nonfinite for output in outputs])
        interval = self.interval
        applied = torch.where(flags, torch.zeros_like(losses), losses).sum()
        interval.loss_sum = _running(interval.loss_sum, applied, torch.add)
        interval.nonfinite = _running(interval.nonfinite, flags.sum(), torch.add)
        self.guard.record(flags, self._pending_first_step)

    @contextlib.contextmanager
    def overhead(self) -> Iterator[None]:
        """Time spent inside is not training time (evaluation, checkpoints)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add_overhead(time.perf_counter() - started)

    def add_overhead(self, seconds: float) -> None:
        self.overhead_s += seconds
        self.interval.overhead_s += seconds

    def report(self) -> StepReport:
        """The interval's mean loss, tokens/s (and MFU, gradient norm); starts a new interval."""
        interval, now = self.interval, time.perf_counter()
        elapsed = max(now - interval.started - interval.overhead_s, 1e-9)
        tokens_per_s = interval.tokens / elapsed
        loss = self._mean_loss()
        if loss is not None:
            self.last_loss = loss
        tokens = self.tokens_seen() if self.tokens_seen is not None else self.tokens
        report = StepReport(loss, tokens_per_s, tokens=tokens, time_s=now - self.run_started)
        report.memory_gib = peak_memory_gib(self.device)
        report.skipped_steps, self._skipped_unreported = self._skipped_unreported, 0
        if self._grad_norm is not None:
            report.grad_norm = float(self._grad_norm)
        if self.flops_per_token and self.peak_flops:
            report.mfu = mfu(tokens_per_s, self.flops_per_token, self.peak_flops, self.world_size)
        self.interval = Interval(started=now)
        return report

    def _mean_loss(self) -> float | None:
        self._fold()
        interval = self.interval
        if interval.loss_sum is None:
            return None
        applied = interval.steps - (int(interval.nonfinite) if interval.nonfinite is not None else 0)
        return float(interval.loss_sum) / applied if applied else None

    def final_loss(self) -> float | None:
        """The last logged training loss, or the mean of the steps since (when none was logged)."""
        return self.last_loss if self.last_loss is not None else self._mean_loss()

    def check_numerics(self, device: torch.device, distributed: bool) -> tuple[bool, GuardReport]:
        """Whether the loss of the steps applied since the last check is finite on every process
        (a collective under torchrun: every process calls it at the same step), and what the
        guard counted (the skipped steps, whose loss is left out)."""
        self._fold()
        loss_sum = self.interval.loss_sum
        diverged = loss_sum is not None and not math.isfinite(float(loss_sum))
        if distributed:
            flag = torch.tensor(float(diverged), device=device)
            diverged = bool(all_reduce_sum(flag).item())
        guard = self.guard.read()
        self.skipped_steps += guard.skipped_steps
        self._skipped_unreported += guard.skipped_steps
        return not diverged, guard

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.run_started

    @property
    def train_s(self) -> float:
        """Seconds of training steps (wall time less overhead)."""
        return max(self.wall_s - self.overhead_s, 1e-9)


def diverged_error(
    last_finite_step: int,
    step: int,
    output_dir: str | Path,
    config: TrainingConfig,
    guard: GuardReport | None = None,
    loss_finite: bool = False,
) -> TrainingDivergedError:
    """The error that stops a run whose loss or gradients became nan or inf, with how to go on."""
    last = newest_checkpoint(output_dir)
    resume = f"resume from {last}" if last else "start again"
    clip = "" if config.gradient_clip else ", training.gradient_clip: 1.0"
    lr = config.learning_rate
    fixes = f"{resume} with a lower training.learning_rate (now {lr:g}){clip} or more warmup_steps"
    if not loss_finite:
        what = f"the loss became nan or inf between steps {last_finite_step} and {step}"
    elif guard is not None and guard.longest_run >= config.max_consecutive_skips:
        what = (
            f"{guard.longest_run} steps in a row up to step {step} had nan or inf gradients "
            f"(training.max_consecutive_skips: {config.max_consecutive_skips}; none of them was applied)"
        )
    else:
        first = guard.first_nonfinite_step if guard is not None else step
        what = (
            f"the loss or its gradients became nan or inf between steps {last_finite_step} and "
            f"{step} (first at step {first}, whose update was skipped; training.on_nonfinite: skip "
            f"goes on without such steps)"
        )
    return TrainingDivergedError(
        f"training diverged: {what}, and nothing was saved after step {last_finite_step}; {fixes}"
    )
