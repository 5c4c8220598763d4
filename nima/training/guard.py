"""The numeric guard: every optimizer step is checked for nan/inf, without waiting for the device.

A step is *non-finite* when its gradient norm is nan or inf (under torchrun the gradients are
already reduced, so every process sees the same norm and decides alike). Its optimizer update is
skipped where it is computed: fused optimizers (Nima's default AdamW, Adam and SGD) take the flag
as ``found_inf`` and leave weights and moments untouched on the device; other optimizers read the
flag on the host (one sync per step). The counts stay on the device and are read at the next
logging or saving step, where ``training.on_nonfinite`` decides:

- ``stop``: the run ends with ``training diverged`` at that point, before anything is logged or
  saved; the broken step was never applied.
- ``skip``: the run goes on; the skipped steps are logged (``skipped_steps``), and the run stops
  only after ``max_consecutive_skips`` non-finite steps in a row.

fp16's loss scaler skips overflowing steps itself, as part of finding its scale: those are logged
as skipped, not taken as failures. A skipped step still counts as a step: the step number and
the learning-rate schedule move on (as with the loss scaler), the weights do not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ON_NONFINITE = ("stop", "skip")


@dataclass(frozen=True)
class GuardReport:
    """What the guard saw since the last read."""

    nonfinite_steps: int
    """Steps whose gradients were nan or inf (their updates skipped)."""
    first_nonfinite_step: int | None
    longest_run: int
    """The most non-finite steps in a row (a run still going on included)."""
    overflow_steps: int
    """fp16 steps the loss scaler skipped because its scale was too high."""

    @property
    def skipped_steps(self) -> int:
        return self.nonfinite_steps + self.overflow_steps


class NonfiniteGuard:
    """Counts non-finite steps on the device; :meth:`read` brings the counts to the host."""

    def __init__(self, device: torch.device) -> None:
        def zero() -> torch.Tensor:
            return torch.zeros((), dtype=torch.int64, device=device)

        self._count, self._in_a_row, self._longest = zero(), zero(), zero()
        self._first = torch.full((), -1, dtype=torch.int64, device=device)
        self._overflows = 0

    @staticmethod
    def is_nonfinite(grad_norm: torch.Tensor) -> torch.Tensor:
        """The step's flag (a device bool)."""
        return ~torch.isfinite(grad_norm)

    def record(self, flags: torch.Tensor, first_step: int) -> None:
        """Count the flags (a device bool vector) of consecutive steps from ``first_step`` on: a
        handful of kernels for all of them together, no host sync."""
        bad = flags.to(torch.int64)
        self._count += bad.sum()
        # The run of non-finite steps ending at each step: its distance from the last finite
        # step before it (or, when none in this batch, one more than the run carried in).
        index = torch.arange(len(flags), device=flags.device)
        last_finite = torch.cummax(torch.where(flags, -1, index), dim=0).values
        run = torch.where(last_finite >= 0, index - last_finite, index + 1 + self._in_a_row)
        torch.maximum(self._longest, run.max(), out=self._longest)
        self._in_a_row.copy_(run[-1])
        unset_and_bad = (self._first < 0) & flags.any()
        self._first.copy_(torch.where(unset_and_bad, bad.argmax() + first_step, self._first))

    def record_overflow(self) -> None:
        """fp16: the loss scaler skipped this step (already known on the host)."""
        self._overflows += 1

    def read(self) -> GuardReport:
        """The counts since the last read (one host sync), then start counting afresh; a run of
        non-finite steps still going on carries over."""
        count, first, longest = (int(t) for t in (self._count, self._first, self._longest))
        report = GuardReport(count, first if first >= 0 else None, longest, self._overflows)
        self._count.zero_()
        self._first.fill_(-1)
        self._longest.copy_(self._in_a_row)
        self._overflows = 0
        return report
