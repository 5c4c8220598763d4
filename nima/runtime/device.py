"""Where a run computes: the device (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch

from nima.distributed import DistributedContext
from nima.errors import ConfigError


def resolve_device(
    name: str | None = "auto", ctx: DistributedContext | None = None, option: str = "training.device"
) -> torch.device:
    """``auto`` -> CUDA (this process's GPU under torchrun), else MPS, else CPU.

    ``option`` names the setting in error messages (``training.device``, ``--device``).
    """
    name = name or "auto"
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    known = device is not None and device.type in ("cpu", "cuda", "mps")
    if not known or (device.type != "cuda" and device.index):
        raise ConfigError(f"{option}: unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option}={name} but no CUDA GPU is available; use auto or cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"{option}={name} but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    mps = getattr(torch.backends, "mps", None)
    if device.type == "mps" and not (mps is not None and mps.is_available()):
        raise ConfigError(f"{option}={name} but this machine has no MPS (Apple GPU); use auto or cpu")
    if name == "cuda" and ctx is not None and ctx.enabled:
        device = torch.device(f"cuda:{ctx.local_rank}")
    return device


def device_kind(name: str | None) -> str:
    """``cuda`` or ``cpu``: the process-group backend family a device setting will need."""
    name = name or "auto"
    return "cuda" if name.startswith("cuda") or (name == "auto" and torch.cuda.is_available()) else "cpu"


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
