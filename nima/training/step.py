"""One optimizer step: forward and backward over a window of micro-batches, clip, update.

The hot path never waits for the device: the loss, the gradient norm and the step's nan/inf
flag come back as device tensors; a non-finite step is not applied (see training/guard.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nima.distributed import no_sync
from nima.memory.heap import keep_freed_memory
from nima.runtime import Runtime, loss_only
from nima.training.batches import IGNORE_INDEX, loss_of, unpack_batch
from nima.training.guard import NonfiniteGuard


@dataclass(frozen=True)
class StepOutput:
    """One optimizer step's figures, left on the device."""

    loss: torch.Tensor
    """The window's mean loss (detached)."""
    grad_norm: torch.Tensor
    """The gradient norm before clipping."""
    nonfinite: torch.Tensor
    """True when the gradients were nan or inf: the update was skipped."""
    overflow: bool = False
    """fp16: the loss scaler skipped the step (its scale was too high)."""


class TrainStep:
    """Forward/backward over micro-batches (gradient accumulation), clipping, the loss scaler
    (fp16), the optimizer and the learning-rate schedule."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        runtime: Runtime,
        gradient_clip: float | None,
        params: list[nn.Parameter],
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.runtime = runtime
        self.gradient_clip = gradient_clip
        self.params = params
        needs_scaler = runtime.precision.needs_grad_scaler
        self.scaler = torch.amp.GradScaler(runtime.device.type) if needs_scaler else None
        self._non_blocking = runtime.device.type == "cuda"
        # Fused optimizers skip a flagged step on the device (``found_inf``, as GradScaler uses
        # it); others, and sharded (DTensor) parameters, read the flag on the host.
        self._skips_on_device = getattr(optimizer, "_step_supports_amp_scaling", False) and not any(
            _is_dtensor(p) for p in params
        )
        keep_freed_memory()  # blocks under 32 MiB, unless the Trainer's memory plan chose more
        # Training never needs the logits: the model may then compute the loss in chunks, never
        # holding (B, T, vocab) logits at long contexts (see GPT.forward).
        self._loss_only = loss_only(model)

    def __call__(self, batches: list[Any]) -> StepOutput:
        """Train on ``batches``: forward, backward, clip, update (skipped when the gradients are
        nan or inf). Nothing is read back from the device."""
        loss = self.forward_backward(batches)
        return self.update(loss)

    def forward_backward(self, batches: list[Any]) -> torch.Tensor:
        """Forward and backward over ``batches``; gradients are left in ``.grad``.

        Returns the window's loss (detached: the mean over all its labelled tokens).
        """
        pairs = [unpack_batch(b) for b in batches]
        weights = self._token_weights(pairs)
        device, non_blocking = self.runtime.device, self._non_blocking
        window_loss = None
        last = len(pairs) - 1
        for i, (input_ids, labels) in enumerate(pairs):
            input_ids = input_ids.to(device, non_blocking=non_blocking)
            labels = labels.to(device, non_blocking=non_blocking)
            with no_sync(self.model, skip=i < last):
                with self.runtime.autocast():
                    loss = loss_of(self.model(input_ids, labels=labels, **self._loss_only))
                if weights is not None:
                    loss = loss * weights[i]
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            detached = loss.detach()
            window_loss = detached if window_loss is None else window_loss + detached
        return window_loss

    @staticmethod
    def _token_weights(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float] | None:
        # The model returns a mean over non-ignored labels; weighting each micro-batch by its
        # share of the window's labelled tokens makes the sum the mean over the whole window.
        if len(pairs) < 2:
            return None
        counts = [int((labels != IGNORE_INDEX).sum()) for _, labels in pairs]
        total = max(1, sum(counts))
        return [c / total for c in counts]

    def update(self, loss: torch.Tensor) -> StepOutput:
        """Unscale (fp16), clip, step the optimizer unless the gradients are nan or inf, step the
        schedule, clear the gradients."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.gradient_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.gradient_clip, foreach=True)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        nonfinite = _local(NonfiniteGuard.is_nonfinite(grad_norm))  # FSDP2: a replicated DTensor
        overflow = False
        if self.scaler is not None:  # the scaler skips overflowing steps itself (a host sync)
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            overflow = self.scaler.get_scale() < scale
            nonfinite = torch.zeros_like(nonfinite)  # an overflow is the scaler's, not a failure
        elif self._skips_on_device:
            self.optimizer.found_inf = nonfinite.float()
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        elif not bool(nonfinite):
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutput(loss, grad_norm, nonfinite, overflow)

    @property
    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]


def _is_dtensor(tensor: torch.Tensor) -> bool:
    return type(tensor.data).__name__ == "DTensor"


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's value as a plain tensor (replicated scalars: the same on every rank)."""
    return tensor.full_tensor() if _is_dtensor(tensor) else tensor
