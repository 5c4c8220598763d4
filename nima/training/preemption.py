"""Stop on SIGTERM at a step boundary instead of dying mid-step.

Schedulers (SLURM, Kubernetes, spot instances) send SIGTERM some seconds before they kill a job.
While training, :class:`StopSignal` records it instead of letting Python exit; the Trainer asks
:meth:`StopSignal.agreed` after each step, saves a checkpoint and returns. Under torchrun only some
processes may receive the signal, so the processes agree (a max-reduction) at logging steps,
where the loop synchronises anyway, and all stop at the same step.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
import torch.distributed as dist


class StopSignal:
    """SIGTERM noted while installed (between :meth:`install` and :meth:`uninstall`)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: Any = None
        self._installed = False

    @property
    def name(self) -> str | None:
        """``SIGTERM`` once received (and agreed), else None."""
        return signal.Signals(self.signum).name if self.signum else None

    def install(self) -> None:
        """Catch SIGTERM from now on (main thread only: Python delivers signals there)."""
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)
            self._installed = True

    def uninstall(self) -> None:
        """Put the previous SIGTERM handler back."""
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def _note(self, signum: int, frame: Any) -> None:
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
