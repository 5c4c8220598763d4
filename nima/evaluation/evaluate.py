"""Score a model: mean loss, perplexity and bits per byte, on batches or on a token stream.

Two entry points share one scoring step:

- :func:`evaluate_model` on a ``DataLoader`` (or any iterable of batches) of ``input_ids`` /
  ``labels`` — what the Trainer calls every ``eval_every`` steps — or on a token stream / text.
- :func:`evaluate_tokens` on a flat token stream (a prepared split's ``tokens("val")``, a list of ids)
  cut into non-overlapping or sliding windows: what ``nima eval`` uses.

This module imports only torch and numpy, so the Trainer can use it without an import cycle.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from nima.data.loader import IGNORE_INDEX
from nima.data.shards import ShardedTokens
from nima.errors import ConfigError, DataError
from nima.evaluation.metrics import EvalResult
from nima.evaluation.text_units import count_text_units
from nima.evaluation.windows import Window, count_windows, plan_windows
from nima.runtime.precision import autocast_for
from nima.runtime.wrapping import loss_only


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _summed_nll(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Sum of negative log-likelihoods (nats) over labels != -100, and how many there were."""
    n_scored = int((labels != IGNORE_INDEX).sum())
    if n_scored == 0:
        return 0.0, 0
    out = model(input_ids, labels=labels, **loss_only(model))
    loss = getattr(out, "loss", None)
    if loss is not None:
        # The model's loss is the mean over scored labels; scale back to a sum.
        return float(loss.detach().double()) * n_scored, n_scored
    logits = out.logits if hasattr(out, "logits") else out
    total = F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return float(total), n_scored


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept the collator's dict, an ``(inputs, labels)`` pair, or raw ``(B, T+1)`` windows."""
    if isinstance(batch, Mapping):
        return batch["input_ids"], batch["labels"]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, torch.Tensor) and batch.dim() == 2:
        return batch[:, :-1], batch[:, 1:]
    raise DataError(
        f"cannot evaluate a batch of type {type(batch).__name__}: expected a dict with input_ids and "
        "labels, an (input_ids, labels) pair, or a (B, T+1) tensor of token windows"
    )


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    """Sum per-rank totals over all processes when running distributed (no-op otherwise)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class _EvalMode:
    """Put the model in eval mode and no-grad for the block, restoring its previous mode after."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.was_training = model, model.training
        self.no_grad = torch.no_grad()

    def __enter__(self) -> None:
        self.model.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


def evaluate_batches(
    model: torch.nn.Module,
    batches: Iterable[Any],
    *,
    tokenizer: Any = None,
    max_batches: int | None = None,
    max_tokens: int | None = None,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    all_reduce: bool = False,
) -> EvalResult:
    """Score every label != -100 of every batch (up to ``max_batches`` batches / ``max_tokens``
    scored tokens). With a ``tokenizer`` the scored labels are decoded to count bytes and
    characters, giving bits per byte/char as well."""
    device = torch.device(device) if device is not None else _model_device(model)
    total_nats, tokens, n_bytes, n_chars, rows = 0.0, 0, 0, 0, 0
    with _EvalMode(model), autocast_for(device, autocast_dtype):
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            if max_tokens is not None and tokens >= max_tokens:
                break
            input_ids, labels = _split_batch(batch)
            input_ids = input_ids.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            nats, n = _summed_nll(model, input_ids, labels)
            total_nats += nats
            tokens += n
            rows += int(labels.shape[0])
            if tokenizer is not None:
                for row in labels.cpu():
                    b, c = count_text_units(tokenizer, row[row != IGNORE_INDEX])
                    n_bytes += b
                    n_chars += c
    if all_reduce:
        total_nats, tokens, n_bytes, n_chars, rows = _all_reduce(
            [total_nats, tokens, n_bytes, n_chars, rows], device
        )
    if tokens == 0:
        raise DataError("evaluation scored no tokens: the evaluation loader is empty or all labels are -100")
    return EvalResult.from_totals(
        total_nats,
        int(tokens),
        n_bytes=int(n_bytes) if tokenizer is not None else None,
        n_chars=int(n_chars) if tokenizer is not None else None,
        windows=int(rows),
    )


def _context_of(model: torch.nn.Module, context_length: int | None) -> int:
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    if context_length is None:
        if limit is None:
            raise ConfigError("the model has no config.max_seq_len: pass context_length")
        return int(limit)
    if context_length < 1:
        raise ConfigError(f"context_length={context_length} must be at least 1")
    if limit is not None and context_length > limit:
        raise ConfigError(
            f"context_length={context_length} is longer than the model's max_seq_len={limit}; "
            f"use at most {limit}"
        )
    return int(context_length)


def _check_options(context: int, stride: int, batch_size: int, max_tokens: int | None) -> None:
    if not 1 <= stride <= context:
        raise ConfigError(
            f"stride={stride} must be between 1 and the context length {context} "
            "(a larger stride would skip tokens)"
        )
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be at least 1")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"max_tokens={max_tokens} must be at least 1")


def _token_stream(tokens: Sequence[int] | np.ndarray | torch.Tensor, max_tokens: int | None) -> Any:
    """The first ``max_tokens + 1`` tokens, as an array-like read lazily (a memory-mapped split
    is never loaded whole)."""
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    if n < 2:
        raise DataError(f"cannot evaluate {n} token(s): at least 2 are needed (one context, one target)")
    if isinstance(tokens, ShardedTokens):  # a prepared split: read lazily, shard by shard
        return tokens.head(n)
    if isinstance(tokens, torch.Tensor):
        return tokens.detach().cpu().numpy()[:n]
    if isinstance(tokens, np.ndarray):
        return tokens[:n]
    return np.asarray(tokens[:n], dtype=np.int64)


def evaluate_tokens(
    model: torch.nn.Module,
    tokens: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    tokenizer: Any = None,
    context_length: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> EvalResult:
    """Score a flat token stream with windows of ``context_length`` tokens (default: the model's
    ``max_seq_len``) whose starts are ``stride`` apart (default: ``context_length``, i.e.
    non-overlapping). Every token after the first is scored exactly once; ``max_tokens`` caps the
    number of scored tokens (the first ``max_tokens + 1`` tokens of the stream are used).

    With a ``tokenizer`` the result also holds bits per byte and per character of the scored text
    (the decoded stream minus its first token, which is context only). ``progress=True`` shows a
    progress bar on stderr when it is a terminal.
    """
    context = _context_of(model, context_length)
    stride = context if stride is None else int(stride)
    _check_options(context, stride, batch_size, max_tokens)
    stream = _token_stream(tokens, max_tokens)
    device = torch.device(device) if device is not None else _model_device(model)
    with _EvalMode(model), autocast_for(device, autocast_dtype):
        total_nats, scored, windows = _score_stream(
            model, stream, context, stride, batch_size, device, progress
        )
    n_bytes = n_chars = None
    if tokenizer is not None:
        n_bytes, n_chars = _scored_text_units(tokenizer, stream)
    return EvalResult.from_totals(
        total_nats,
        scored,
        n_bytes=n_bytes,
        n_chars=n_chars,
        windows=windows,
        context_length=context,
        stride=stride,
    )


def _score_stream(
    model: torch.nn.Module,
    stream: Any,
    context: int,
    stride: int,
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> tuple[float, int, int]:
    """Score every window of ``stream``, ``batch_size`` windows per forward pass: the summed nats,
    the tokens scored and the number of windows."""
    total_nats, scored, windows = 0.0, 0, 0
    bar = tqdm(
        total=count_windows(len(stream), context, stride),
        unit="window",
        desc="evaluating",
        disable=not (progress and sys.stderr.isatty()),
        leave=False,
    )
    for batch in _window_batches(len(stream), context, stride, batch_size):
        nats, k = _score_windows(model, stream, batch, context, device)
        total_nats += nats
        scored += k
        windows += len(batch)
        if len(batch) == batch_size:  # the bar advances by full batches only
            bar.update(batch_size)
    bar.close()
    return total_nats, scored, windows


def _window_batches(n: int, context: int, stride: int, batch_size: int) -> Iterator[list[Window]]:
    """The planned windows in batches of ``batch_size`` (the last one may be shorter)."""
    pending: list[Window] = []
    for window in plan_windows(n, context, stride):
        pending.append(window)
        if len(pending) == batch_size:
            yield pending
            pending = []
    if pending:
        yield pending


def _score_windows(
    model: torch.nn.Module, stream: Any, windows: Sequence[Window], context: int, device: torch.device
) -> tuple[float, int]:
    """Summed nats and tokens scored over one batch of windows of ``stream``."""
    x = torch.zeros(len(windows), context, dtype=torch.long)
    y = torch.full((len(windows), context), IGNORE_INDEX, dtype=torch.long)
    for row, w in enumerate(windows):
        window = torch.from_numpy(np.asarray(stream[w.begin : w.end + 1], dtype=np.int64))
        x[row, : w.length] = window[:-1]
        targets = window[1:]
        skip = w.score_from - (w.begin + 1)  # leading targets that are context only
        y[row, skip : w.length] = targets[skip:]
    # Right padding (token 0, label -100) never influences earlier positions of a causal model.
    return _summed_nll(model, x.to(device), y.to(device))


def _scored_text_units(tokenizer: Any, stream: Any) -> tuple[int, int]:
    """UTF-8 bytes and characters of the scored text: the decoded stream less its first token,
    which is context only."""
    all_bytes, all_chars = count_text_units(tokenizer, stream)
    first_bytes, first_chars = count_text_units(tokenizer, stream[:1])
    return all_bytes - first_bytes, all_chars - first_chars


def evaluate_text(model: torch.nn.Module, text: str, tokenizer: Any, **kwargs: Any) -> EvalResult:
    """Encode ``text`` with ``tokenizer`` and score it like :func:`evaluate_tokens` (same keyword
    arguments). Raises ``DataError`` naming a character the tokenizer cannot encode."""
    return evaluate_tokens(model, tokenizer.encode(text), tokenizer=tokenizer, **kwargs)


def _is_token_stream(data: Any) -> bool:
    if isinstance(data, ShardedTokens):
        return True
    if isinstance(data, np.ndarray) or (isinstance(data, torch.Tensor) and data.dim() == 1):
        return data.ndim == 1
    return isinstance(data, (list, tuple)) and len(data) > 0 and isinstance(data[0], (int, np.integer))


def evaluate_model(model: torch.nn.Module, data: Any, **kwargs: Any) -> EvalResult:
    """Evaluate ``model`` on ``data`` and return an :class:`EvalResult` (loss, perplexity, bits per
    token / byte / char, tokens scored).

    ``data`` is one of:

    - a ``DataLoader`` or any iterable of batches (dicts with ``input_ids`` and already-shifted
      ``labels``, as ``DataCollator`` makes) -> :func:`evaluate_batches` (keywords ``max_batches``,
      ``max_tokens``, ``tokenizer``, ``device``, ``autocast_dtype``, ``all_reduce``);
    - a flat token stream (list of ids, numpy array / memmap, 1-D tensor) -> :func:`evaluate_tokens`
      (keywords ``context_length``, ``stride``, ``max_tokens``, ``batch_size``, ``tokenizer``, ...);
    - a ``str`` of text (needs ``tokenizer=``) -> :func:`evaluate_text`.

    The model is put in eval mode for the call and its previous mode restored afterwards.
    """
    if isinstance(data, str):
        tokenizer = kwargs.pop("tokenizer", None)
        if tokenizer is None:
            raise ConfigError("evaluating text needs a tokenizer: evaluate_model(model, text, tokenizer=tok)")
        return evaluate_text(model, data, tokenizer, **kwargs)
    if _is_token_stream(data):
        return evaluate_tokens(model, data, **kwargs)
    return evaluate_batches(model, data, **kwargs)
