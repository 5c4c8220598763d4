"""Measure a language model: loss, perplexity, bits per token / byte / character.

``evaluate_model(model, data)`` scores a DataLoader of batches (what the Trainer uses), a token
stream (non-overlapping or sliding windows) or a text; ``nima eval`` (``nima.evaluation.cli``) does
the same for a checkpoint from the command line. The CLI is not imported here so that the Trainer
can import this package without pulling in checkpoint loading.
"""

from nima.evaluation.evaluate import evaluate_batches, evaluate_model, evaluate_text, evaluate_tokens
from nima.evaluation.metrics import EvalResult, bits_per_unit, perplexity
from nima.evaluation.windows import Window, plan_windows

__all__ = [
    "EvalResult",
    "Window",
    "bits_per_unit",
    "evaluate_batches",
    "evaluate_model",
    "evaluate_text",
    "evaluate_tokens",
    "perplexity",
    "plan_windows",
]
