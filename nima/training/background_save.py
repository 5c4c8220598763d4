"""Checkpoints written on a background thread while training goes on (``async_checkpoint``).

Saving a large model stalls training for as long as the disk takes (seconds to minutes for
billions of parameters). :class:`BackgroundSaver` copies the state to host memory (a fast copy),
lets training continue, and writes the copy on one worker thread. One write is in flight at a
time: the next save, the end of training and loading a checkpoint wait for it first, and an error
in the write is raised there, in the training thread.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from nima.errors import CheckpointError


def host_copy(obj: Any, _copies: dict[tuple, torch.Tensor] | None = None) -> Any:
    """``obj`` with every tensor copied to CPU memory (training may change the originals in place).

    Tensors that are the same view of the same memory (tied embedding and output weights) stay
    one tensor, so the file stores them once, as ``torch.save`` of the originals would.
    """
    copies = {} if _copies is None else _copies
    if isinstance(obj, torch.Tensor):
        key = (obj.device, obj.untyped_storage().data_ptr(), obj.storage_offset(), obj.dtype,
               tuple(obj.shape), obj.stride())  # fmt: skip
        if key not in copies:
            copies[key] = obj.detach().to("cpu", copy=True)
        return copies[key]
    if isinstance(obj, dict):
        return {key: host_copy(value, copies) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(value, copies) for value in obj)
    return obj


class BackgroundSaver:
    """Writes one checkpoint at a time on a worker thread; see the module docstring."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def submit(self, state: dict[str, Any], write: Callable[[dict[str, Any]], None]) -> None:
        """Wait for the previous write, copy ``state`` to host memory, ``write(copy)`` in the background."""
        self.wait()
        snapshot = host_copy(state)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nima-checkpoint")
        self._pending = self._pool.submit(write, snapshot)

    @property
    def busy(self) -> bool:
        """Whether a write is still in flight."""
        return self._pending is not None and not self._pending.done()

    def wait(self) -> None:
        """Block until the write in flight (if any) is on disk; CheckpointError if it failed."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.result()
        except Exception as err:
            raise CheckpointError(f"writing a checkpoint in the background failed: {err}") from err

    def close(self) -> None:
        """Wait for the last write and stop the worker thread."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
