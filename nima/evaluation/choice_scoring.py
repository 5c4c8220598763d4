"""Log-likelihoods of continuations, computed as lm-evaluation-harness computes them, in batches.

A request is a ``(context, continuation)`` pair of strings; its answer is ``(loglikelihood,
is_greedy)``: the sum of the log-probabilities (nats) of the continuation's tokens, each given
everything before it, and whether every one of them is the model's most likely next token.

Tokens follow the harness's ``_encode_pair``: whitespace at the end of the context moves to the
start of the continuation; ``context + continuation`` is encoded whole, and the continuation's
tokens are those after the context's own encoding. An empty context is the end-of-text token.
Context and continuation longer than ``max_length + 1`` tokens (``max_length``: the model's
``max_seq_len``) lose the context's first tokens (left truncation), as in the harness.

Speed: identical requests are scored once. For a Nima GPT the requests of one context (the
choices of a question) go into one batch, contexts sorted by length so that a batch's differ
little; the first tokens of each context, as many for every context of the batch, run once into a
KV cache, and every request goes on from a copy of its context's cache with the rest of the
context and its continuation. Other models (and FSDP-sharded ones) score every request as a row of
its own, ``batch_size`` rows per forward pass, longest first, as the harness does.
"""

from __future__ import annotations

import copy
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from nima.distributed.fsdp import is_sharded
from nima.errors import ConfigError, DataError
from nima.evaluation.evaluate import _EvalMode, _model_device
from nima.models import GPT, KVCache
from nima.runtime.precision import autocast_for

Answer = tuple[float, bool]


@dataclass(frozen=True)
class Encoded:
    """A request's tokens: the context's, then the continuation's."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass(frozen=True)
class _Row:
    """What the model reads for one request: ``prefix`` (the kept context, ending with the token
    that predicts the continuation's first), then the continuation but its last token."""

    prefix: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass
class Scores:
    """The answers, in request order, and how many requests were truncated on the left."""

    answers: list[Answer]
    truncated: int


def encode_pair(
    tokenizer: Any, context: str, continuation: str, contexts: dict[str, list[int]] | None = None
) -> tuple[list[int], list[int]]:
    """The context's and the continuation's token ids, split as the harness splits them.
    ``contexts`` keeps context encodings between calls (the choices of a question share theirs)."""
    if not isinstance(context, str) or not isinstance(continuation, str):
        raise DataError(f"a request is two strings (context, continuation), got {(context, continuation)!r}")
    if context == "":
        tokens = tokenizer.encode(continuation)
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise DataError(
                f"the context is empty and this {getattr(tokenizer, 'kind', '')} tokenizer has no "
                "end-of-text token to stand for it; give a context"
            )
        if tokens and tokens[0] == eos:
            context_ids, continuation_ids = tokens[:1], tokens[1:]
        else:
            context_ids, continuation_ids = [eos], tokens
    else:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            raise DataError("the context is only whitespace; give it some text (or leave it empty)")
        whole = tokenizer.encode(context + continuation)
        context_ids = contexts.get(context) if contexts is not None else None
        if context_ids is None:
            context_ids = tokenizer.encode(context)
            if contexts is not None:
                contexts[context] = context_ids
        continuation_ids = whole[len(context_ids) :]
    if not continuation_ids:
        raise DataError(f"the continuation {continuation!r} encodes to no tokens; give it some text")
    return list(context_ids), list(continuation_ids)


def encode_requests(
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    *,
    where: Callable[[int], str] | None = None,
) -> list[Encoded]:
    """Every request's tokens (:func:`encode_pair`); a request that cannot be encoded is a
    DataError starting with ``where(i)`` (default ``request i``)."""
    where = where or (lambda i: f"request {i}")
    contexts: dict[str, list[int]] = {}
    out = []
    for i, (context, continuation) in enumerate(requests):
        try:
            ctx, cont = encode_pair(tokenizer, context, continuation, contexts)
        except DataError as err:
            raise DataError(f"{where(i)}: {err}") from None
        out.append(Encoded(tuple(ctx), tuple(cont)))
    return out


def window_of(model: torch.nn.Module, max_length: int | None = None) -> int:
    """The most tokens the model reads at once: ``max_length`` or the model's ``max_seq_len``."""
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    if max_length is None:
        if limit is None:
            raise ConfigError("the model has no config.max_seq_len: pass max_length")
        return int(limit)
    if not 1 <= max_length <= (limit or max_length):
        raise ConfigError(f"max_length={max_length} must be between 1 and the model's max_seq_len={limit}")
    return int(max_length)


def score_encoded(
    model: torch.nn.Module,
    encoded: Sequence[Encoded],
    *,
    max_length: int | None = None,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    share_context: bool = True,
    where: Callable[[int], str] | None = None,
) -> Scores:
    """Score tokenized requests (:func:`encode_requests`); see :func:`loglikelihoods`.
    ``share_context=False`` scores every request as a row of its own, for any model; ``where(i)``
    names request ``i`` in errors."""
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be at least 1")
    window = window_of(model, max_length)
    rows, truncated = _plan(encoded, window, where or (lambda i: f"request {i}"))
    unique = list(dict.fromkeys(rows))
    device = torch.device(device) if device is not None else _model_device(model)
    bar = tqdm(
        total=len(unique),
        unit="request",
        desc="scoring",
        disable=not (progress and sys.stderr.isatty()),
        leave=False,
    )
    found: dict[_Row, Answer] = {}
    cached = share_context and isinstance(model, GPT) and not is_sharded(model)
    with _EvalMode(model), autocast_for(device, autocast_dtype):
        batches = _prefix_batches(unique, batch_size) if cached else _row_batches(unique, batch_size)
        for batch in batches:
            answers = _score_cached(model, batch, device) if cached else _score_rows(model, batch, device)
            found.update(zip(batch, answers, strict=True))
            bar.update(len(batch))
    bar.close()
    return Scores([found[row] for row in rows], truncated)


def loglikelihoods(
    model: torch.nn.Module,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    *,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    progress: bool = False,
    max_length: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> list[Answer]:
    """``(loglikelihood, is_greedy)`` of each ``(context, continuation)`` request, in order: the
    harness's ``loglikelihood``. ``batch_size``: sequences per forward pass; ``device``: where the
    inputs go (default: the model's); ``max_length``: the window (default the model's
    ``max_seq_len``); ``autocast_dtype``: e.g. ``torch.bfloat16`` (default: the model's own
    precision, which is what the harness uses); ``progress``: a progress bar on a terminal."""
    encoded = encode_requests(tokenizer, requests)
    return score_encoded(
        model,
        encoded,
        max_length=max_length,
        batch_size=batch_size,
        device=device,
        autocast_dtype=autocast_dtype,
        progress=progress,
    ).answers


# ---------------------------------------------------------------------------------- planning


def _plan(encoded: Sequence[Encoded], window: int, where: Callable[[int], str]) -> tuple[list[_Row], int]:
    """Each request's row after left truncation (the last ``window + 1`` tokens are kept; the
    last of them is predicted, never read), and how many were truncated."""
    check_fits(encoded, window, where)
    rows, truncated = [], 0
    for request in encoded:
        n = len(request.continuation)
        tokens = request.context + request.continuation
        if len(tokens) > window + 1:
            truncated += 1
            tokens = tokens[-(window + 1) :]
        read = tokens[:-1]
        rows.append(_Row(read[: len(read) - n + 1], request.continuation))
    return rows, truncated


def check_fits(encoded: Sequence[Encoded], window: int, where: Callable[[int], str] | None = None) -> None:
    """A DataError for the first request whose continuation alone is longer than ``window``
    tokens (left truncation shortens only the context)."""
    for i, request in enumerate(encoded):
        n = len(request.continuation)
        if n > window:
            where = where or (lambda k: f"request {k}")
            raise DataError(
                f"{where(i)}: the continuation alone is {n} tokens, longer than the model's window of "
                f"{window}; shorten it"
            )


def _row_batches(rows: list[_Row], batch_size: int) -> Iterator[list[_Row]]:
    """Rows longest first, ``batch_size`` at a time (the harness's order: memory runs out at the
    start if it runs out at all)."""
    ordered = sorted(rows, key=lambda r: -(len(r.prefix) + len(r.continuation)))
    for start in range(0, len(ordered), batch_size):
        yield ordered[start : start + batch_size]


def _prefix_batches(rows: list[_Row], batch_size: int) -> Iterator[list[_Row]]:
    """Batches of at most ``batch_size`` rows, the rows of one context together, contexts sorted
    by length (longest first) so that a batch's contexts differ little in length."""
    by_prefix: dict[tuple[int, ...], list[_Row]] = defaultdict(list)
    for row in rows:
        by_prefix[row.prefix].append(row)
    batch: list[_Row] = []
    for prefix in sorted(by_prefix, key=len, reverse=True):
        group = by_prefix[prefix]
        for start in range(0, len(group), batch_size):
            part = group[start : start + batch_size]
            if batch and len(batch) + len(part) > batch_size:
                yield batch
                batch = []
            batch += part
    if batch:
        yield batch


# ---------------------------------------------------------------------------------- scoring


def _continuation_scores(logprobs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of ``targets`` (B, T; -1 where nothing is scored) under
    ``logprobs`` (B, T, V), in float64, and whether each scored target is the argmax."""
    scored = targets >= 0
    picked = logprobs.gather(2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    total = (picked.double() * scored).sum(1)
    greedy = ((logprobs.argmax(-1) == targets) | ~scored).all(1)
    return total, greedy


def _score_rows(model: torch.nn.Module, rows: list[_Row], device: torch.device) -> list[Answer]:
    """Each row a sequence of its own, right-padded (padding comes after every token a causal
    model scores, so it changes nothing)."""
    reads = [r.prefix + r.continuation[:-1] for r in rows]
    width = max(len(r) for r in reads)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, (row, read) in enumerate(zip(rows, reads, strict=True)):
        x[i, : len(read)] = torch.tensor(read)
        n = len(row.continuation)
        targets[i, len(read) - n : len(read)] = torch.tensor(row.continuation)
    out = model(x.to(device))
    logits = out.logits if hasattr(out, "logits") else out
    total, greedy = _continuation_scores(logits.float().log_softmax(-1), targets.to(device))
    return list(zip(total.tolist(), greedy.tolist(), strict=True))


def _score_cached(model: GPT, rows: list[_Row], device: torch.device) -> list[Answer]:
    """The first ``shared`` tokens of each distinct context (as many for all: one less than the
    batch's shortest context) run once into a KV cache; then each row runs the rest of its context
    and its continuation (but the last token) on a copy of its context's cache."""
    prefixes = list(dict.fromkeys(r.prefix for r in rows))
    index = {p: i for i, p in enumerate(prefixes)}
    owner = torch.tensor([index[r.prefix] for r in rows], device=device)
    shared = min(len(p) for p in prefixes) - 1  # the last context token predicts: it runs per row
    reads = [r.prefix[shared:] + r.continuation[:-1] for r in rows]
    width = max(len(read) for read in reads)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, (row, read) in enumerate(zip(rows, reads, strict=True)):
        x[i, : len(read)] = torch.tensor(read)
        targets[i, len(read) - len(row.continuation) : len(read)] = torch.tensor(row.continuation)
    cache = None
    if shared:
        dtype = next(model.parameters()).dtype
        cache = KVCache.for_config(model.config, len(prefixes), shared + width, device=device, dtype=dtype)
        model.hidden_states(torch.tensor([p[:shared] for p in prefixes], device=device), cache)
        cache = _rows_of(cache, owner)
    hidden = model.hidden_states(x.to(device), cache)  # (rows, width, d_model)
    logprobs = model.lm_head(hidden).float().log_softmax(-1)
    total, greedy = _continuation_scores(logprobs, targets.to(device))
    return list(zip(total.tolist(), greedy.tolist(), strict=True))


def _rows_of(cache: KVCache, owner: torch.Tensor) -> KVCache:
    """A cache whose row ``i`` is row ``owner[i]`` of ``cache`` (a copy: the rows go on apart)."""
    out = copy.copy(cache)
    out.keys, out.values = cache.keys[:, owner], cache.values[:, owner]
    return out


__all__ = [
    "Encoded",
    "Scores",
    "check_fits",
    "encode_pair",
    "encode_requests",
    "loglikelihoods",
    "score_encoded",
    "window_of",
]
