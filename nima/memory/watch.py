"""Stop a CPU run before the machine runs out of memory, instead of being killed mid-step.

A CPU that runs out of memory does not raise: the kernel's out-of-memory killer ends the process,
with no message and nothing saved since the last checkpoint. The memory plan refuses a run that
would not fit before it starts; :class:`MemoryWatch` covers what happens later (other programs
taking memory, a plan that was wrong): between steps it reads how much memory the machine has
left, at most once a second, and when that falls under a floor the Trainer saves a checkpoint and
stops with one line saying so (exit code 2); the run resumes with ``--resume``.

Under torchrun the processes decide together at logging steps (a max-reduction), so that all of
them save the same step and stop. GPUs need no watch: CUDA raises an out-of-memory error, which
the Trainer turns into one line.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from nima.memory.system import system_memory_left

FLOOR_BYTES = 512 * 1024**2
"""Stop when the machine has less than this left (at most FLOOR_SHARE of what it had at start)."""
FLOOR_SHARE = 0.05
"""The floor stays well under the 15% the memory plan leaves free (memory/estimate.py HEADROOM), so
a run within its plan is never stopped."""
CHECK_EVERY_S = 1.0


class MemoryWatch:
    """Reads the memory left between steps on a CPU; see the module docstring."""

    def __init__(self, device: torch.device, available_at_start: int | None = None) -> None:
        at_start = available_at_start if available_at_start is not None else system_memory_left()
        self.enabled = device.type == "cpu" and at_start is not None
        self.floor = min(FLOOR_BYTES, int(FLOOR_SHARE * at_start)) if at_start else 0
        self.left: int | None = None
        self.every_s = CHECK_EVERY_S
        self._next_check = 0.0

    def running_out(self, step: int, every: int, device: torch.device) -> bool:
        """Whether to stop now because memory is running out. Single process: read at most once
        a second. Under torchrun: at every ``every``-th step, all processes decide together."""
        if not self.enabled:
            return False
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if step % every:
                return False
            flag = torch.tensor([int(self._low())], dtype=torch.int64, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return bool(flag.item())
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.every_s
        return self._low()

    def _low(self) -> bool:
        self.left = system_memory_left()
        return self.left is not None and self.left < self.floor

    def message(self, step: int, checkpoint: str) -> str:
        """The one line for a run stopped by the watch."""
        left = f"{self.left / 2**20:.0f} MiB" if self.left is not None else "too little"
        return (
            f"memory is running out: {left} left on this machine after step {step} (the floor is "
            f"{self.floor / 2**20:.0f} MiB); saved {checkpoint} and stopped before the system would kill the "
            "run; free memory (close other programs, or lower training.batch_size with more "
            "training.gradient_accumulation_steps), then run the same command with --resume"
        )
