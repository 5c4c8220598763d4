"""Downstream tasks during training (``training.eval_tasks``): accuracy at every evaluation.

The :class:`TaskEvaluator` reads and tokenizes its tasks once, when the run is assembled (so a
missing file, a bad line or a character the tokenizer lacks stops the run before it trains), and
the :class:`~nima.training.validator.Validator` asks it for its figures after each validation loss:
``eval/<name>_acc`` and, for multiple choice, ``eval/<name>_acc_norm``. They go wherever the
validation loss goes: ``logs/metrics.jsonl``, TensorBoard, W&B and ``report.md``.

Every process scores every example (the figures are the same on all of them), in the run's
precision, ``batch_size`` sequences per forward pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from nima.errors import ConfigError, DataError
from nima.evaluation.choice_scoring import Encoded, check_fits, encode_requests, score_encoded
from nima.evaluation.tasks import Task, load_task, request_owner, task_requests, task_result
from nima.runtime import Runtime


@dataclass
class _Prepared:
    name: str
    """What the metrics are called: ``eval/<name>_acc``."""
    task: Task
    encoded: list[Encoded]


class TaskEvaluator:
    """Scores the run's ``eval_tasks`` (prepared by :meth:`build`) on the model when asked."""

    def __init__(self, tasks: list[_Prepared], window: int, runtime: Runtime, batch_size: int) -> None:
        self.tasks, self.window, self.runtime, self.batch_size = tasks, window, runtime, batch_size

    @classmethod
    def build(
        cls,
        specs: list[dict[str, Any]],
        tokenizer: Any,
        window: int | None,
        runtime: Runtime,
        batch_size: int,
        data_dir: str | os.PathLike | None = None,
    ) -> TaskEvaluator | None:
        """The evaluator of ``specs`` (``training.eval_tasks``, already checked) for a model that
        reads ``window`` tokens, or None when there are none. Reads and tokenizes every task now."""
        if not specs:
            return None
        if tokenizer is None:
            raise ConfigError(
                "training.eval_tasks needs the run's tokenizer: pass Trainer(..., tokenizer=...)"
            )
        if window is None:
            raise ConfigError("training.eval_tasks needs the model's window: a model.config.max_seq_len")
        prepared = []
        for i, spec in enumerate(specs):
            try:
                task = load_task(spec["task"], data=spec["data"], data_dir=data_dir, limit=spec["limit"])
                owner = request_owner(task)

                def where(k: int, owner: list[int] = owner) -> str:
                    return f"example {owner[k] + 1}"

                encoded = encode_requests(tokenizer, task_requests(task), where=where)
                check_fits(encoded, window, where)
            except (ConfigError, DataError) as err:
                raise type(err)(f"training.eval_tasks[{i}] ({spec['name']}): {err}") from None
            prepared.append(_Prepared(spec["name"], task, encoded))
        return cls(prepared, window, runtime, batch_size)

    def describe(self) -> str:
        """``hellaswag (200 examples), quiz (50 examples)``, for the run's first lines."""
        return ", ".join(f"{t.name} ({len(t.task.examples)} examples)" for t in self.tasks)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Every task's accuracy now: ``eval/<name>_acc`` (and ``_acc_norm`` for multiple choice)."""
        metrics: dict[str, float] = {}
        for prepared in self.tasks:
            scores = score_encoded(
                model,
                prepared.encoded,
                max_length=self.window,
                batch_size=self.batch_size,
                device=self.runtime.device,
                autocast_dtype=self.runtime.precision.dtype,
            )
            result = task_result(prepared.task, scores.answers, scores.truncated)
            for metric in ("acc", "acc_norm"):
                if metric in result.metrics:
                    metrics[f"eval/{prepared.name}_{metric}"] = result.metrics[metric]
        return metrics


__all__ = ["TaskEvaluator"]
