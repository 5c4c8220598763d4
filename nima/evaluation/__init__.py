"""Measure a language model: loss, perplexity, bits per token / byte / character, and accuracy on
downstream tasks.

``evaluate_model(model, data)`` scores a DataLoader of batches (what the Trainer uses), a token
stream (non-overlapping or sliding windows) or a text; ``evaluate_task(model, tokenizer,
load_task("hellaswag"))`` measures accuracy as lm-evaluation-harness does (:mod:`.tasks`);
``nima eval`` (``nima.evaluation.cli``) does both for a checkpoint from the command line. The CLI is
not imported here so that the Trainer can import this package without pulling in checkpoint loading.
"""

from nima.evaluation.evaluate import evaluate_batches, evaluate_model, evaluate_text, evaluate_tokens
from nima.evaluation.metrics import EvalResult, bits_per_unit, perplexity
from nima.evaluation.tasks import (
    CompletionExample,
    MCExample,
    Task,
    TaskResult,
    evaluate_task,
    load_task,
    loglikelihoods,
)
from nima.evaluation.windows import Window, plan_windows

__all__ = [
    "CompletionExample",
    "EvalResult",
    "MCExample",
    "Task",
    "TaskResult",
    "Window",
    "bits_per_unit",
    "evaluate_batches",
    "evaluate_model",
    "evaluate_task",
    "evaluate_text",
    "evaluate_tokens",
    "load_task",
    "loglikelihoods",
    "perplexity",
    "plan_windows",
]
