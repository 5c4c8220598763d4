"""What a training batch is: ``input_ids`` and ``labels`` (B, T), labels shifted, -100 ignored."""

from __future__ import annotations

from typing import Any

import torch

from nima.data.loader import IGNORE_INDEX


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)`` from the collator's dict or an ``(input_ids, labels)`` pair."""
    if isinstance(batch, dict):
        return batch["input_ids"], batch["labels"]
    input_ids, labels = batch
    return input_ids, labels


def loss_of(output: Any) -> torch.Tensor:
    """The loss from a model's output (an object with ``.loss``, or the loss tensor itself)."""
    return output if isinstance(output, torch.Tensor) else output.loss


__all__ = ["IGNORE_INDEX", "loss_of", "unpack_batch"]
