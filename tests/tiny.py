"""The tests' one tiny model: the ``tiny`` preset shrunk to a few milliseconds per training step.

Tests that train, save, load, export or generate use :data:`TEST_MODEL` in whichever form they
need: a ``ModelConfig`` (:func:`model_config`), keyword arguments (:func:`model_dict`),
command-line overrides (:func:`model_args`) or a YAML ``model:`` section (:func:`model_yaml`).
A test that genuinely needs another shape (one layer, grouped-query heads, the llama family ...)
derives it from this one, e.g. ``model_config(vocab_size, arch="llama", n_kv_heads=2)``.

Only the shape fields below travel in the dict, command-line and YAML forms: the vocabulary comes
from the tokenizer, and everything else (dropout, arch ...) stays what the config file or the
test says.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from nima.models import ModelConfig
from nima.models.presets import TINY

TEST_MODEL = replace(TINY, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_seq_len=32)
"""2 layers of width 32 (4 heads, MLP 64), context 32, gpt2 family, no dropout: ~25k parameters
plus embeddings."""

SHAPE = ("n_layers", "d_model", "n_heads", "d_ff", "max_seq_len")
"""The fields the dict, command-line and YAML forms carry."""


def model_config(vocab_size: int, **overrides: Any) -> ModelConfig:
    """:data:`TEST_MODEL` with this vocabulary and ``overrides`` (any ModelConfig field)."""
    return replace(TEST_MODEL, vocab_size=vocab_size, **overrides)


def model_dict(**overrides: Any) -> dict[str, Any]:
    """The shape as keyword arguments (``create_model({**model_dict(), "vocab_size": 65})``)."""
    return {**{name: getattr(TEST_MODEL, name) for name in SHAPE}, **overrides}


def model_args(**overrides: Any) -> list[str]:
    """The shape as command-line overrides: ``["--model.n_layers=2", "--model.d_model=32", ...]``."""
    return [f"--model.{name}={_scalar(value)}" for name, value in model_dict(**overrides).items()]


def model_yaml(**overrides: Any) -> str:
    """The shape as a YAML ``model:`` section (ends with a newline)."""
    lines = (f"  {name}: {_scalar(value)}\n" for name, value in model_dict(**overrides).items())
    return "model:\n" + "".join(lines)


def _scalar(value: Any) -> str:
    """A value as YAML (and the command line, which reads overrides as YAML) spells it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
