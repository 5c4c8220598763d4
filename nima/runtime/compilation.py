"""``torch.compile`` for the Trainer, with a clear error when the CPU backend cannot run."""

from __future__ import annotations

import os
import shutil
import sys

import torch
from torch import nn

from nima.errors import ConfigError


def cpp_compiler() -> str:
    """The C++ compiler Inductor's CPU backend calls: ``$CXX``, else its platform default."""
    default = {"darwin": "clang++", "win32": "cl"}.get(sys.platform, "g++")
    return os.environ.get("CXX") or default


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``torch.compile(model)`` for training on ``device`` (Inductor, default options).

    On a CPU, Inductor fuses the element-wise work (layer norms, GELU, residual adds) into C++
    loops that it compiles with the system's C++ compiler: about 20 s before the first step on
    2 cores, less on later runs (Inductor's on-disk cache). Inductor's ``cpp_wrapper`` option was
    measured too and left off: no steady gain at the tiny Shakespeare shape, twice the compile time.

    Raises ConfigError when compiling for a CPU and no C++ compiler is on PATH (Inductor would
    otherwise fail deep inside the first step).
    """
    compiler = cpp_compiler()
    if device.type == "cpu" and shutil.which(compiler) is None:
        raise ConfigError(
            f"training.compile on a CPU needs a C++ compiler and {compiler!r} was not found; "
            "install one (e.g. apt install g++), point CXX at it, or set training.compile: false"
        )
    return torch.compile(model)
