"""Multi-process training: process-group set-up from torchrun's environment, DDP wrapping, rank-0 helpers.

Launch with ``torchrun --nproc_per_node=N scripts/train.py ...``; torchrun sets ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, and :func:`init_distributed`
joins the process group (NCCL on CUDA, Gloo on CPU). Without those variables everything here is
a cheap no-op, so single-process code calls the same functions.

The wrapping step is one function (:func:`wrap_model`): DDP (every process holds the whole
model) or FSDP2 (``fully_shard``: parameters, gradients and optimizer state split across
processes; see :mod:`nima.distributed.fsdp`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from nima.distributed.fsdp import shard_model
from nima.errors import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job: rank, local rank, world size, and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0: the process that logs, prints and writes checkpoints."""
        return self.rank == 0


def env_world_size() -> int:
    """WORLD_SIZE from the environment (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def init_distributed(device_type: str = "cpu", timeout_s: float = 1800.0) -> DistributedContext:
    """Join the process group when launched with WORLD_SIZE > 1; returns this process's context.

    NCCL for CUDA (and the CUDA device is set to LOCAL_RANK), Gloo otherwise. Calling it again
    (or after someone else initialised the group) just reports the existing group.
    """
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(
            dist.get_rank(),
            int(os.environ.get("LOCAL_RANK", dist.get_rank())),
            dist.get_world_size(),
            dist.get_backend(),
        )
    world_size = env_world_size()
    if world_size <= 1:
        return DistributedContext()
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; launch with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend=backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s)
    )
    return DistributedContext(rank, local_rank, world_size, backend)


def cleanup() -> None:
    """Leave the process group (safe to call when none exists)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def print0(*args, **kwargs) -> None:
    """print on rank 0 only."""
    if is_main_process():
        print(*args, **kwargs)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place (identity when single-process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over all processes, in place (identity when single-process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def all_gather_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every process's ``tensor`` (same shape and dtype on all ranks), in rank order, on the CPU.

    A collective: all ranks must call it. Single-process, it returns ``[tensor]``. Under NCCL the
    exchange goes through this rank's CUDA device, which NCCL requires.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [tensor.cpu()]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    local = tensor.to(device)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [t.cpu() for t in gathered]


STRATEGIES = ("ddp", "fsdp")


def wrap_model(
    model: torch.nn.Module,
    ctx: DistributedContext,
    device: torch.device,
    strategy: str = "ddp",
    param_dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """Make ``model`` data-parallel when running multi-process (else return it as it is).

    ``ddp``: DistributedDataParallel, which broadcasts rank 0's parameters at construction so all
    ranks start identical. ``fsdp``: FSDP2 applied in place (returns ``model`` itself, sharded),
    after the same broadcast of rank 0's weights; ``param_dtype`` is the dtype FSDP gathers
    parameters in for the forward and backward (None: as stored, fp32).
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"distributed strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not ctx.enabled:
        return model
    if strategy == "fsdp":
        return shard_model(model, device, param_dtype)
    device_ids = (
        [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
    )
    return DistributedDataParallel(model, device_ids=device_ids)


def no_sync(model: torch.nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient exchange when ``skip`` (accumulation micro-steps before the last).

    DDP's ``no_sync()``, or FSDP2's ``set_requires_gradient_sync(False)``; else nothing.
    """
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    if skip and hasattr(model, "set_requires_gradient_sync"):
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: torch.nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


__all__ = [
    "STRATEGIES",
    "DistributedContext",
    "all_gather_tensors",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "env_world_size",
    "init_distributed",
    "is_main_process",
    "no_sync",
    "print0",
    "wrap_model",
]
