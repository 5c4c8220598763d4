"""How a CPU training process lets glibc keep the memory its steps free, for the next step.

glibc serves blocks over M_MMAP_THRESHOLD with fresh mappings and hands the top of its heap back
to the system once more than M_TRIM_THRESHOLD is free there. A training step frees and allocates
again the same activations and gradients, so with glibc's defaults every step maps them in afresh
and the kernel zeroes every page again:

- at the reference shape (blocks of hundreds of KiB): 450-1,350 page faults, about 1.5 ms (4%) a
  step on a 2-core CPU;
- at the guide's base config (batch 32 x 1024, blocks of 32-128 MiB, which glibc always maps
  alone): 2.6-3.8 million faults a step, 18.5-21.4 s a step (bf16, 2 cores, a quiet machine).

So a training process may take every block from its heap (M_MMAP_MAX 0) and keep what it frees
there (M_TRIM_THRESHOLD at its 2 GiB ceiling): after the first steps no page is faulted in again,
and the base config's step takes 10.8 s (benchmarks/README.md, ``memory.py --heap``). The cost:
holes in the kept heap, 0.25-1.0x the activations and logits again (base config, gpt2-small). So
it does where the memory plan leaves room for that (``MemoryPlan.room_to_keep_every_block``: not
with gradient checkpointing, chosen to save memory); otherwise only blocks under 32 MiB are kept
and larger ones are mapped and unmapped alone, as glibc does. The process keeps its peak until it
exits or calls :func:`release_freed_memory`.

Linux with glibc only; left alone when the environment already tunes malloc.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # mallopt's parameters (malloc.h)
SMALL_BLOCK_LIMIT = 32 << 20
"""Blocks from this size up are mapped alone unless every block is kept (glibc's own ceiling)."""
_SETTINGS = {
    "whole": ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)),  # mallopt takes an int
    "small": ((_M_MMAP_MAX, 65536), (_M_MMAP_THRESHOLD, SMALL_BLOCK_LIMIT), (_M_TRIM_THRESHOLD, 64 << 20)),
}
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
_mode: str | None = None


def keep_freed_memory(large_blocks: bool | None = None) -> bool:
    """Let glibc keep what a step frees for the next one: every block, or (``large_blocks``
    False) only those under 32 MiB; None: those under 32 MiB unless a choice was made already
    (the Trainer makes it from its memory plan). Returns whether the settings are in force."""
    global _mode
    if large_blocks is None:
        if _mode is not None:
            return True
        large_blocks = False
    mode = "whole" if large_blocks else "small"
    if _mode == mode:
        return True
    if not sys.platform.startswith("linux") or any(k in os.environ for k in _MALLOC_ENV):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl's mallopt does nothing)
        # mallopt returns 1 on success; setting a threshold also stops glibc's own adjustments.
        kept = all(libc.mallopt(param, value) for param, value in _SETTINGS[mode])
    except (OSError, AttributeError):
        kept = False
    _mode = mode if kept else None
    return kept


def release_freed_memory() -> None:
    """Hand back to the system what the C heap holds free (glibc's ``malloc_trim``): when training
    ends in a process that goes on, such as a notebook, and before measuring what a step needs
    (memory an earlier step freed would still be resident and hide it)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
