"""Text in, text out: encode a prompt, sample a continuation, decode it as it is produced.

The sampling itself (temperature, top-k, top-p, repetition penalty, KV cache) lives in
``nima.models.generation``; this module deals in text: prompt checks, streaming decode that never
prints half a UTF-8 character, and stopping at the end-of-text token or at a stop sequence
(``nima.inference.stop_strings``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from nima.errors import ConfigError, DataError
from nima.inference.stop_strings import StopMatcher


@dataclass
class SamplingSettings:
    """How to sample; the defaults suit a small char model."""

    max_new_tokens: int = 200
    """Tokens to generate after the prompt (fewer if the end-of-text token comes first)."""
    temperature: float = 0.8
    """Softmax temperature; 0 = greedy (always the most likely token)."""
    top_k: int | None = None
    """Sample only among the k most likely tokens."""
    top_p: float | None = None
    """Nucleus sampling: only among the most likely tokens holding this much probability."""
    repetition_penalty: float = 1.0
    """> 1 discourages tokens already present (1 = off)."""
    seed: int | None = None
    """Seed for reproducible samples (None: a different sample each run)."""
    stop_at_eos: bool = True
    """Stop when the model produces the tokenizer's end-of-text token (which is not printed)."""
    stop: tuple[str, ...] = ()
    """Stop sequences: the text ends before the first of them that it reaches (not included)."""


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of ``prompt``. An empty prompt starts a fresh document: from the end-of-text token
    where the tokenizer has one, else from a newline; a character the tokenizer cannot encode is a
    DataError naming it."""
    if prompt:
        ids = _encode_or_name_the_character(tokenizer, prompt)
        if ids:
            return ids
    if tokenizer.eos_token_id is not None:
        return [tokenizer.eos_token_id]
    try:
        return tokenizer.encode("\n")
    except DataError:
        pass
    raise ConfigError(
        "the prompt is empty and this tokenizer has no end-of-text token to start from; "
        "pass --prompt TEXT (for example --prompt 'ROMEO:')"
    )


def _encode_or_name_the_character(tokenizer: Any, prompt: str) -> list[int]:
    try:
        return tokenizer.encode(prompt)
    except DataError:
        for char in dict.fromkeys(prompt):
            try:
                tokenizer.encode(char)
            except DataError:
                raise DataError(
                    f"the prompt contains {char!r} (U+{ord(char):04X}), which the model's {tokenizer.kind} "
                    "tokenizer has no id for (it was not in the training text); remove or replace it"
                ) from None
        raise


def stream_text(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str,
    settings: SamplingSettings,
    counts: dict[str, int] | None = None,
) -> Iterator[str]:
    """Yield the continuation of ``prompt`` piece by piece as the model samples it (prompt not
    included), ending before the first of ``settings.stop`` it reaches (a piece that could be the
    start of a stop sequence is held back until it cannot). ``counts``, when given, receives
    ``prompt_tokens`` and ``new_tokens``."""
    ids = encode_prompt(tokenizer, prompt)
    eos = tokenizer.eos_token_id if settings.stop_at_eos else None
    decoder = stream_decoder(tokenizer)
    stops = StopMatcher(settings.stop)
    if counts is not None:
        counts.update(prompt_tokens=len(ids), new_tokens=0)
    for token_id in model.generate_stream(
        ids,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        repetition_penalty=settings.repetition_penalty,
        eos_token_id=eos,
        seed=settings.seed,
    ):
        if counts is not None:
            counts["new_tokens"] += 1
        if eos is not None and token_id == eos:
            break
        piece, stopped = stops.push(decoder.push(token_id))
        if piece:
            yield piece
        if stopped:
            return
    piece, stopped = stops.push(decoder.flush())
    tail = piece if stopped else piece + stops.flush()
    if tail:
        yield tail


def generate_text(model: torch.nn.Module, tokenizer: Any, prompt: str, settings: SamplingSettings) -> str:
    """The whole continuation of ``prompt`` as one string (prompt not included)."""
    return "".join(stream_text(model, tokenizer, prompt, settings))


class _DecodeAll:
    """Fallback stream decoder for tokenizers without ``decode_stream``: decode everything so far
    and hand out the new suffix, holding back a trailing replacement character (half a UTF-8
    sequence) until the next token completes it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.ids, self.sent = tokenizer, [], 0

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids)
        stable = len(text) - 1 if text.endswith("\ufffd") else len(text)
        piece, self.sent = text[self.sent : stable], max(self.sent, stable)
        return piece

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        return text[self.sent :]


def stream_decoder(tokenizer: Any) -> Any:
    """An object with ``push(token_id) -> str`` and ``flush() -> str`` that hands out whole
    characters only: the tokenizer's ``decode_stream()``, or a decode-everything fallback."""
    make = getattr(tokenizer, "decode_stream", None)
    return make() if callable(make) else _DecodeAll(tokenizer)
