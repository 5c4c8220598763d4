"""What the machine has, and how much memory a piece of work peaks at.

:func:`available_memory` is the free GPU memory, or on a CPU the machine's available RAM (and the
cgroup's limit, where a container has one), capped by ``$NIMA_MEMORY_LIMIT``.
:func:`measure_peak` runs a function and returns how far this process's memory rose.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nima.errors import ConfigError
from nima.memory.heap import release_freed_memory

GiB = 1024**3


# ---------------------------------------------------------------------------- what the device has


def available_memory(device: torch.device | str) -> int | None:
    """Bytes free for this process: free GPU memory on CUDA; on a CPU the machine's available
    RAM, or less where a cgroup (a container) limits the process; None where unknown.

    ``$NIMA_MEMORY_LIMIT`` (bytes, or with a unit: ``6GiB``, ``512MiB``) caps it: to leave room
    for other work on a shared machine.
    """
    device = torch.device(device)
    found = [_env_limit()]
    if device.type == "cuda":
        found.append(int(torch.cuda.mem_get_info(device)[0]))
    elif device.type == "cpu":
        found.append(system_memory_left())
    found = [value for value in found if value is not None]
    return min(found) if found else None


def system_memory_left() -> int | None:
    """Bytes this machine has left now (``MemAvailable``), or less where a cgroup (a container)
    limits the process; None where neither can be read (not Linux)."""
    found = [value for value in (_meminfo_available(), _cgroup_room()) if value is not None]
    return min(found) if found else None


MEMORY_LIMIT_ENV = "NIMA_MEMORY_LIMIT"
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": GiB, "gb": 1000**3, "gib": GiB}  # fmt: skip


def _env_limit() -> int | None:
    text = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if not text:
        return None
    match = re.fullmatch(r"([\d.]+)\s*([a-zA-Z]*)", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"{MEMORY_LIMIT_ENV}={text!r} must be a size such as 6GiB, 512MiB or 2000000000")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _meminfo_available() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else None


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The cgroup's memory limit less its working set (v2, then v1); None without a real limit.

    The cgroup's usage counts the page cache too (the memory-mapped data, checkpoints just
    written); the kernel reclaims its inactive part before it kills anything, so that part is room.
    """
    for limit_file, usage_file, stat_file, inactive in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat",
         "total_inactive_file"),
    ):  # fmt: skip
        try:
            limit = (root / limit_file).read_text().strip()
            usage = int((root / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            return max(0, int(limit) - usage + _stat_field(root / stat_file, inactive))
    return None


def _stat_field(path: Path, field: str) -> int:
    try:
        match = re.search(rf"^{field} (\d+)$", path.read_text(), re.M)
    except OSError:
        return 0
    return int(match.group(1)) if match else 0


# ---------------------------------------------------------------------------- measuring a step


def process_bytes(field: str) -> int | None:
    """A size line of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes; None where unreadable."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def measure_peak(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int | None:
    """Run ``fn()`` and return by how many bytes this process's memory peaked above where it
    started: CUDA's allocator statistics on a GPU; on Linux CPUs the resident set's high-water
    mark, reset first through ``/proc/self/clear_refs``. None where neither can be read."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    release_freed_memory()
    start = process_bytes("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    except OSError:
        return None
    fn()
    peak = process_bytes("VmHWM")
    return None if start is None or peak is None else max(0, peak - start)
