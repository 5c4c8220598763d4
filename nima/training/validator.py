"""The validator: when to evaluate, the validation loss, and which evaluation was the best; the
downstream tasks of ``training.eval_tasks`` (:mod:`.task_evaluator`) follow each validation loss.

The validation loss is an honest figure: the whole validation split when it has at most
``eval_batches`` batches, otherwise the same fixed sample at every evaluation, of windows spread
evenly over the whole split (not its first batches, which would measure only the start of the
text). Each figure says how many tokens it covers (``val_tokens``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from nima.distributed import all_reduce_sum
from nima.errors import ConfigError
from nima.runtime import Runtime, loss_only
from nima.training.batches import IGNORE_INDEX, loss_of, unpack_batch
from nima.training.cursor import position_loader, quiet_rng
from nima.training.task_evaluator import TaskEvaluator


class Validator:
    """Evaluates ``model`` on ``loader`` every ``every`` steps (0: only at the end of training)
    and keeps the best and the last validation loss."""

    def __init__(
        self,
        model: nn.Module,
        loader: Iterable | None,
        runtime: Runtime,
        every: int,
        batches: int,
        tasks: TaskEvaluator | None = None,
    ) -> None:
        self.model = model
        self.runtime = runtime
        self.every = every
        self.batches = batches
        self.loader, self.coverage = spread_sample(loader, batches) if loader is not None else (None, "")
        self.tasks = tasks
        """Downstream tasks scored after each validation loss (``training.eval_tasks``)."""
        if tasks is not None:
            if loader is None:
                raise ConfigError(
                    "training.eval_tasks are scored at evaluation steps, which need a validation loader: "
                    "pass eval_dataloader to the Trainer"
                )
            self.coverage += f"; then the tasks {tasks.describe()}"
        self.best_val_loss = math.inf
        self.last_val_loss: float | None = None
        self.last_step = -1
        # The loss alone: full (B, T, vocab) logits could outgrow the training step's memory.
        self._loss_only = loss_only(model)

    @property
    def enabled(self) -> bool:
        return self.loader is not None

    def due(self, step: int) -> bool:
        """Whether ``step`` is an evaluation step."""
        return self.enabled and bool(self.every) and step % self.every == 0

    def validate(self, step: int) -> tuple[dict[str, float], bool]:
        """Evaluate now (the validation loss, then the downstream tasks); returns the metrics and
        whether this is the best validation loss so far."""
        metrics = self.evaluate()
        if self.tasks is not None:
            metrics.update(self.tasks.evaluate(self.model))
        self.last_step = step
        self.last_val_loss = metrics["val_loss"]
        improved = metrics["val_loss"] < self.best_val_loss
        if improved:
            self.best_val_loss = metrics["val_loss"]
        return metrics, improved

    @torch.no_grad()
    def evaluate(self, max_batches: int | None = None) -> dict[str, float]:
        """Mean validation loss per labelled token over the split or its spread sample (at most
        ``max_batches`` batches of it when given), over all processes under torchrun. Returns
        ``val_loss``, ``val_perplexity`` and ``val_tokens`` (the labelled tokens it covers)."""
        if self.loader is None:
            raise ConfigError("no eval_dataloader was given to the Trainer")
        device = self.runtime.device
        model, was_training = self.model, self.model.training
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        count = torch.zeros((), dtype=torch.float64, device=device)
        with quiet_rng():
            position_loader(self.loader, 0, 0)
            iterator = iter(self.loader)
        for _, batch in zip(range(max_batches or len(self.loader)), iterator, strict=False):
            input_ids, labels = (t.to(device) for t in unpack_batch(batch))
            with self.runtime.autocast():
                loss = loss_of(model(input_ids, labels=labels, **self._loss_only))
            n = (labels != IGNORE_INDEX).sum()
            loss_sum += loss.double() * n
            count += n
        all_reduce_sum(loss_sum)
        all_reduce_sum(count)
        model.train(was_training)
        if float(count) == 0:
            raise ConfigError("the validation loader yielded no labelled tokens")
        val_loss = float(loss_sum / count)
        perplexity = math.exp(min(val_loss, 50.0))
        return {"val_loss": val_loss, "val_perplexity": perplexity, "val_tokens": int(count)}

    @property
    def best(self) -> float | None:
        return self.best_val_loss if math.isfinite(self.best_val_loss) else None

    def state_dict(self) -> dict[str, Any]:
        return {"best_val_loss": self.best, "last_val_loss": self.last_val_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best = state.get("best_val_loss")
        self.best_val_loss = math.inf if best is None else float(best)
        self.last_val_loss = state.get("last_val_loss")


def spread_sample(loader: Iterable, batches: int) -> tuple[Iterable, str]:
    """``loader`` itself when it has at most ``batches`` batches (or its length or windows cannot
    be known); otherwise a loader over ``batches`` batches of windows spread evenly over it, the
    same at every evaluation. Returns the loader and a phrase saying what it covers."""
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return loader, "the validation loader (no length: every batch)"
    dataset, sampler = getattr(loader, "dataset", None), getattr(loader, "sampler", None)
    if total <= batches or not isinstance(loader, DataLoader) or dataset is None:
        return loader, f"the whole validation split ({total} batches)"
    with quiet_rng():
        position_loader(loader, 0, 0)
        # This process's windows in order (its shard under torchrun).
        order = sampler.epoch_order() if hasattr(sampler, "epoch_order") else list(range(len(dataset)))
    wanted = min(len(order), batches * (loader.batch_size or 1))
    picks = [order[i * len(order) // wanted] for i in range(wanted)]
    sample = DataLoader(
        Subset(dataset, picks),
        batch_size=loader.batch_size,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
    )
    return sample, f"{batches} of the validation split's {total} batches, spread evenly over it"
