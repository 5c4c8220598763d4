"""Getting at the plain model inside the wrappers that training puts around it."""

from __future__ import annotations

import inspect

import torch


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP/FSDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            return model


def loss_only(model: torch.nn.Module) -> dict[str, bool]:
    """Keyword arguments asking ``model`` for its loss alone: ``{"return_logits": False}`` where
    its forward takes them (Nima's GPT then never holds the (B, T, vocab) logits), else none.

    Training, validation and evaluation all need the loss only; with a large vocabulary the full
    logits of a batch can take several times the memory of the rest of the step.
    """
    try:
        forward = inspect.signature(unwrap_model(model).forward)
    except (TypeError, ValueError):
        return {}
    return {"return_logits": False} if "return_logits" in forward.parameters else {}
