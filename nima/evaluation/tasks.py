"""Downstream tasks: accuracy on HellaSwag and on your own multiple-choice or completion tasks,
computed as lm-evaluation-harness computes it, so the figures compare with published ones::

    task = load_task("hellaswag", limit=200)
    result = evaluate_task(model, tokenizer, task)
    result.metrics  # {"acc": ..., "acc_stderr": ..., "acc_norm": ..., "acc_norm_stderr": ...}

Multiple choice (``mc``, and HellaSwag): each choice is scored as the continuation ``" " + choice``
of the context. ``acc`` is the share of questions whose right choice has the highest
log-likelihood; ``acc_norm`` the share whose right choice has the highest log-likelihood per
character of the choice (the harness's length normalisation, without which long choices lose for
being long). Completion: ``acc`` is the share of targets that are the model's greedy continuation,
token by token (LAMBADA's last-word accuracy), ``perplexity`` is ``exp(-mean log-likelihood)`` of
the targets. Each ``*_stderr`` is the standard error of the mean over the examples (sample standard
deviation / sqrt(n), the harness's ``mean_stderr``; nan for a single example).

The data (:mod:`nima.evaluation.task_data`) and the batched log-likelihoods
(:mod:`nima.evaluation.choice_scoring`) have modules of their own; this one joins them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from nima.evaluation.choice_scoring import Answer, encode_requests, loglikelihoods, score_encoded
from nima.evaluation.task_data import (
    TARGET_DELIMITER,
    CompletionExample,
    MCExample,
    Task,
    hellaswag_preprocess,
    load_task,
)


@dataclass
class TaskResult:
    """What one task scored."""

    name: str
    n: int
    """Examples scored."""
    metrics: dict[str, float]
    """mc: acc, acc_stderr, acc_norm, acc_norm_stderr; completion: acc, acc_stderr, perplexity."""
    loglikelihoods: list[list[float]] = field(default_factory=list)
    """Per example: each choice's log-likelihood (nats); for completion ``[loglikelihood,
    is_greedy]`` (1.0 or 0.0)."""
    truncated: int = 0
    """Requests longer than the model's window, whose context lost its first tokens."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (without the per-example log-likelihoods; nan as None)."""
        out = asdict(self)
        del out["loglikelihoods"]
        out["metrics"] = {k: None if math.isnan(v) else v for k, v in self.metrics.items()}
        return out


def task_requests(task: Task) -> list[tuple[str, str]]:
    """The ``(context, continuation)`` requests of ``task``, example by example (choice by choice)."""
    if task.kind == "mc":
        return [(ex.context, TARGET_DELIMITER + choice) for ex in task.examples for choice in ex.choices]
    return [(ex.context, ex.target) for ex in task.examples]


def request_owner(task: Task) -> list[int]:
    """The example (0-based) each request of :func:`task_requests` belongs to."""
    if task.kind == "mc":
        return [i for i, ex in enumerate(task.examples) for _ in ex.choices]
    return list(range(len(task.examples)))


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean: sample standard deviation / sqrt(n) (nan below 2 values)."""
    n = len(values)
    if n < 2:
        return math.nan
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def _argmax(values: Sequence[float]) -> int:
    """The first index of the largest value (numpy's argmax, which the harness uses)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _per_char(loglikelihood: float, choice: str) -> float:
    # numpy divides by a zero length to -inf (a log-likelihood is never positive).
    return loglikelihood / len(choice) if choice else -math.inf


def task_result(
    task: Task, answers: Sequence[Answer], truncated: int = 0, seconds: float = 0.0
) -> TaskResult:
    """The metrics of ``task`` from the answers to its :func:`task_requests`, in their order."""
    lls: list[list[float]] = []
    if task.kind == "mc":
        hits, hits_norm, start = [], [], 0
        for ex in task.examples:
            scores = [float(ll) for ll, _ in answers[start : start + len(ex.choices)]]
            start += len(ex.choices)
            lls.append(scores)
            hits.append(float(_argmax(scores) == ex.label))
            norm = [_per_char(ll, choice) for ll, choice in zip(scores, ex.choices, strict=True)]
            hits_norm.append(float(_argmax(norm) == ex.label))
        metrics = {
            "acc": sum(hits) / len(hits),
            "acc_stderr": mean_stderr(hits),
            "acc_norm": sum(hits_norm) / len(hits_norm),
            "acc_norm_stderr": mean_stderr(hits_norm),
        }
    else:
        lls = [[float(ll), float(greedy)] for ll, greedy in answers]
        hits = [greedy for _, greedy in lls]
        mean_ll = sum(ll for ll, _ in lls) / len(lls)
        metrics = {
            "acc": sum(hits) / len(hits),
            "acc_stderr": mean_stderr(hits),
            "perplexity": math.exp(min(-mean_ll, 700.0)),
        }
    return TaskResult(task.name, len(task.examples), metrics, lls, truncated, seconds)


def evaluate_task(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Task,
    *,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    progress: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> TaskResult:
    """Score every example of ``task`` (:func:`load_task`) with ``model`` and its ``tokenizer``.

    ``batch_size``: sequences per forward pass; ``device``: where inputs go (default: the model's);
    ``progress``: a progress bar on a terminal; ``autocast_dtype``: e.g. ``torch.bfloat16`` for
    speed (default: the model's own precision, as the harness scores). Examples longer than the
    model's window are truncated on the left (counted in ``TaskResult.truncated``).
    """
    start = time.perf_counter()
    owner = request_owner(task)
    source = f" ({task.source})" if task.source else ""
    encoded = encode_requests(
        tokenizer, task_requests(task), where=lambda i: f"{task.name} example {owner[i] + 1}{source}"
    )
    scores = score_encoded(
        model,
        encoded,
        batch_size=batch_size,
        device=device,
        autocast_dtype=autocast_dtype,
        progress=progress,
        where=lambda i: f"{task.name} example {owner[i] + 1}{source}",
    )
    return task_result(task, scores.answers, scores.truncated, time.perf_counter() - start)


def format_task_table(results: list[TaskResult]) -> str:
    """``task  n  acc  acc_norm`` rows, in percent with their standard errors."""

    def cell(result: TaskResult, metric: str) -> str:
        value = result.metrics.get(metric)
        if value is None:
            return "—"
        stderr = result.metrics.get(f"{metric}_stderr", float("nan"))
        spread = "" if math.isnan(stderr) else f" ± {100 * stderr:.2f}%"
        return f"{100 * value:.2f}%{spread}"

    rows = [("task", "n", "acc", "acc_norm")]
    rows += [(r.name, f"{r.n:,}", cell(r, "acc"), cell(r, "acc_norm")) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


__all__ = [
    "CompletionExample",
    "MCExample",
    "Task",
    "TaskResult",
    "evaluate_task",
    "format_task_table",
    "hellaswag_preprocess",
    "load_task",
    "loglikelihoods",
    "mean_stderr",
    "task_requests",
    "task_result",
]
