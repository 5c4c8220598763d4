"""Stop on SIGTERM or Ctrl-C at a step boundary instead of dying mid-step.

Schedulers (SLURM, Kubernetes, spot instances) send SIGTERM some seconds before they kill a job;
a person at the terminal or in a notebook presses Ctrl-C (SIGINT). While training,
:class:`StopSignal` records either instead of letting Python stop wherever it is (possibly between
the optimizer's update and the step count, which no checkpoint could then resume exactly); the
Trainer asks :meth:`StopSignal.agreed` after each step, saves a checkpoint and returns. A second
Ctrl-C raises KeyboardInterrupt at once, for when waiting for the step is not wanted.

Under torchrun only some processes may receive the signal, so the processes agree (a
max-reduction) at logging steps, where the loop synchronises anyway, and all stop at the same step:
this is also what lets a sharded (FSDP) model be saved, which needs every process.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
import torch.distributed as dist

CAUGHT = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """SIGTERM or SIGINT noted while installed (between :meth:`install` and :meth:`uninstall`).

    The handler only records the signal: printing from a signal handler can collide with the
    interrupted code's own output, so the Trainer reports the stop once it has saved.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str | None:
        """``SIGTERM`` or ``SIGINT`` once received (and agreed), else None."""
        return signal.Signals(self.signum).name if self.signum else None

    def install(self) -> None:
        """Catch SIGTERM and SIGINT from now on (main thread only: Python delivers signals there)."""
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._note) for signum in CAUGHT}

    def uninstall(self) -> None:
        """Put the previous handlers back."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _note(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without a checkpoint
        self.signum = signum

    def agreed(self, step: int, every: int, device: torch.device) -> bool:
        """Whether to stop now. Single-process: as soon as noted. Under torchrun: every ``every``
        steps, all ranks decide together (any rank's signal stops all of them)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.signum is not None
        if step % every:
            return False
        flag = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.signum = int(flag.item()) or None
        return self.signum is not None
