"""Where and how a run computes: the process group, the device, the precision, the wrapped model.

:class:`Runtime` is the one place where these are decided. Training builds one with
:meth:`Runtime.for_training` (in the process group the run joined, it picks the device and the
training precision, and wraps the model in DDP or FSDP2 and ``torch.compile``); evaluation and
generation with :meth:`Runtime.for_inference` (device and autocast only).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nima.distributed import DistributedContext, wrap_model
from nima.distributed.fsdp import is_sharded
from nima.runtime.compilation import compile_model
from nima.runtime.device import device_kind, resolve_device, seed_everything
from nima.runtime.precision import (
    PrecisionChoice,
    autocast_for,
    bf16_faster_on_cpu,
    choose_precision,
    inference_precision,
)
from nima.runtime.wrapping import loss_only, unwrap_model


@dataclass(frozen=True)
class Runtime:
    """This process's place in the job, its device and its precision."""

    dist: DistributedContext
    device: torch.device
    precision: PrecisionChoice

    @classmethod
    def for_training(
        cls,
        dist: DistributedContext,
        device: str = "auto",
        precision: str = "auto",
        use_mixed_precision: bool = True,
        bf16_benchmark: Callable[[], bool] | None = None,
    ) -> Runtime:
        """Pick the device of this process (``dist``: its place in the torchrun job, from
        :func:`~nima.distributed.init_distributed`) and the training precision.

        ``bf16_benchmark`` runs (or fakes) the CPU micro-benchmark that decides ``auto`` on CPUs
        with bf16 instructions; see :func:`choose_precision`.
        """
        where = resolve_device(device, dist)
        chosen = choose_precision(precision, use_mixed_precision, where, bf16_benchmark=bf16_benchmark)
        if where.type == "cuda":
            torch.set_float32_matmul_precision(chosen.float32_matmul_precision)
        return cls(dist, where, chosen)

    @classmethod
    def for_inference(cls, device: str | None = "auto", precision: str = "auto") -> Runtime:
        """One process: the device (``--device``) and the autocast precision for a forward pass."""
        where = resolve_device(device, option="--device")
        return cls(DistributedContext(), where, inference_precision(precision, where))

    def with_precision_reason(self, reason: str) -> Runtime:
        """This runtime, its precision explained by ``reason`` (e.g. kept from a checkpoint)."""
        return dataclasses.replace(self, precision=dataclasses.replace(self.precision, reason=reason))

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes."""
        return self.dist.is_main

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context forward passes run in (a no-op in fp32)."""
        return self.precision.autocast()

    def prepare_model(self, model: nn.Module, strategy: str = "ddp", compile: bool = False) -> nn.Module:
        """Move ``model`` to the device and wrap it for this job; returns the module to call.

        Under FSDP2 the model is sharded in place (then compiled, if asked); under DDP it is
        compiled first and wrapped after. In bf16, FSDP2 gathers parameters in bf16 (half the
        traffic); fp16 keeps fp32 parameters under autocast, where its gradient scaler works.
        """
        model = unwrap_model(model).to(self.device)
        if strategy == "fsdp":
            param_dtype = torch.bfloat16 if self.precision.name == "bf16" else None
            wrap_model(model, self.dist, self.device, "fsdp", param_dtype=param_dtype)
            return compile_model(model, self.device) if compile else model
        to_run = compile_model(model, self.device) if compile else model
        return wrap_model(to_run, self.dist, self.device, "ddp")


__all__ = [
    "PrecisionChoice",
    "Runtime",
    "autocast_for",
    "bf16_faster_on_cpu",
    "choose_precision",
    "compile_model",
    "device_kind",
    "inference_precision",
    "is_sharded",
    "loss_only",
    "resolve_device",
    "seed_everything",
    "unwrap_model",
]
