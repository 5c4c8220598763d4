"""Sampling text from a GPT: logit filters, one sampling step, and cached generation loops.

With the key/value cache (the default) the prompt is run once ("prefill") and each new token costs
one position. The cache holds at most ``max_seq_len`` positions. When it is full, the cache is
rebuilt from the most recent ``max_seq_len // 2`` tokens (one prefill every max_seq_len / 2 new
tokens) rather than on every step; uncached generation (``use_cache=False``) instead slides a
window of the last ``max_seq_len`` tokens at every step. Both are exactly the same up to
``max_seq_len`` tokens of context; beyond it they condition on slightly different windows.
A prompt longer than ``max_seq_len`` is cut to its last ``max_seq_len`` tokens.

Prompts of different lengths in one batch (a "ragged" batch: a list of lists), or a batch with a
seed per row, run through :class:`~nima.models.batch_decoding.BatchDecoder`: each row's output is
the one it would get alone, and each row stops at its own end-of-text token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from nima.errors import CheckpointError, ConfigError
from nima.models.attention import KVCache
from nima.models.batch_decoding import BatchDecoder, RowSampling
from nima.models.sampling import (
    CausalLM,
    apply_repetition_penalty,
    check_sampling,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)

__all__ = [
    "CausalLM",
    "apply_repetition_penalty",
    "check_sampling",
    "generate",
    "generate_stream",
    "sample_next_token",
    "top_k_filter",
    "top_p_filter",
]


Seeds = int | Sequence[int | None] | None
"""One seed for the whole batch, or one per row (None: torch's global RNG)."""


def _ragged_rows(input_ids: Any, seed: Seeds) -> list[list[int]] | None:
    """The prompts as lists when they need the row-by-row decoder: rows of different lengths, or a
    seed per row; None for one prompt or an equal-length batch with one seed."""
    per_row_seeds = isinstance(seed, Sequence) and not isinstance(seed, str)
    if isinstance(input_ids, torch.Tensor):
        if not per_row_seeds:
            return None
        rows = input_ids.tolist() if input_ids.dim() == 2 else [input_ids.tolist()]
    else:
        if not input_ids or not all(isinstance(r, (Sequence, torch.Tensor)) for r in input_ids):
            if per_row_seeds:
                raise ConfigError("a seed per row needs a batch of prompts (a list of lists of ids)")
            return None
        rows = [r.tolist() if isinstance(r, torch.Tensor) else list(r) for r in input_ids]
        if len({len(r) for r in rows}) == 1 and not per_row_seeds:
            return None
    if per_row_seeds and len(seed) != len(rows):
        raise ConfigError(f"got {len(seed)} seeds for {len(rows)} prompts: give one seed per prompt")
    if any(not isinstance(r, list) or not r for r in rows):
        raise ConfigError("every prompt of a batch must be a non-empty list of token ids")
    return rows


def _as_batch(model: CausalLM, input_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=model.device)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ConfigError(
            f"input_ids must be a non-empty (T,) or (B, T) array of token ids, got shape {tuple(ids.shape)}"
        )
    vocab = model.config.vocab_size
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ConfigError(f"input_ids hold token ids outside 0..{vocab - 1} (model.vocab_size={vocab})")
    return ids


def _token_steps(
    model: CausalLM,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    eos_token_id: int | None,
    seed: int | None,
    use_cache: bool,
) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B,) step by step. Runs in eval mode without gradients."""
    B, T0 = prompt.shape
    max_new_tokens, top_k = int(max_new_tokens), None if top_k is None else int(top_k)
    window = model.config.max_seq_len
    generator = None
    if seed is not None and temperature != 0:
        generator = torch.Generator(device=prompt.device).manual_seed(seed)
    # All tokens so far (for the repetition penalty and cache rebuilds), written in place.
    try:
        tokens = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=prompt.device)
    except (RuntimeError, MemoryError, TypeError, ValueError):  # out of memory, or past a tensor's size
        raise ConfigError(
            f"max_new_tokens={max_new_tokens} is more tokens than this machine can hold "
            f"({B} x {T0 + max_new_tokens} ids of 8 bytes); ask for fewer"
        ) from None
    tokens[:, :T0] = prompt
    n = T0
    finished = torch.zeros(B, dtype=torch.bool, device=prompt.device)
    cache = None
    if use_cache:
        dtype = next(model.parameters()).dtype
        cache = KVCache.for_config(model.config, B, T0 + max_new_tokens, device=prompt.device, dtype=dtype)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if cache is not None:
                logits = model.last_token_logits(prompt[:, -cache.capacity :], cache)
            for step in range(max_new_tokens):
                if cache is None:
                    logits = model.last_token_logits(tokens[:, max(0, n - window) : n])
                if step == 0 and not bool(torch.isfinite(logits).all()):  # one check: one sync
                    raise CheckpointError(
                        "the model's next-token scores are nan or inf: its weights are damaged (or far too "
                        "large), so it cannot generate; use another checkpoint"
                    )
                if repetition_penalty != 1.0:
                    logits = apply_repetition_penalty(logits, tokens[:, :n], repetition_penalty)
                next_ids = sample_next_token(logits, temperature, top_k, top_p, generator)
                if eos_token_id is not None:
                    next_ids = next_ids.masked_fill(finished, eos_token_id)
                    finished |= next_ids == eos_token_id
                tokens[:, n] = next_ids
                n += 1
                yield next_ids
                if step + 1 == max_new_tokens or (eos_token_id is not None and bool(finished.all())):
                    return
                if cache is not None:
                    if cache.length < cache.capacity:
                        logits = model.last_token_logits(next_ids[:, None], cache)
                    else:  # full: rebuild from the recent half window (one prefill per window/2 tokens)
                        cache.reset()
                        logits = model.last_token_logits(tokens[:, n - max(1, window // 2) : n], cache)
    finally:
        model.train(was_training)


def generate(
    model: CausalLM,
    input_ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_token_id: int | None = None,
    seed: Seeds = None,
    use_cache: bool = True,
) -> torch.Tensor | list[torch.Tensor]:
    """Sample a continuation of ``input_ids``; returns prompt + new tokens.

    Args:
        input_ids: prompt token ids, (T,) / list (returns (T + n,)) or (B, T) (returns (B, T + n)),
            or a list of prompts of different lengths (returns a list of 1-D tensors, one per
            prompt, each ending at its own ``eos_token_id``).
        max_new_tokens: tokens to add (fewer if every row reached ``eos_token_id``).
        temperature: softmax temperature; 0 = greedy decoding (then top_k, top_p and seed are unused).
        top_k: sample only among the k most likely tokens.
        top_p: nucleus sampling, among the most likely tokens holding probability mass top_p.
        repetition_penalty: > 1 discourages tokens already in the prompt or output (1 = off).
        eos_token_id: stop a row when it produces this id (included in the output); in a (B, T)
            batch, rows that stopped early are padded with it until all rows stop.
        seed: seeds a private torch.Generator for reproducible sampling (None: torch's global RNG);
            a list gives each prompt of a batch its own seed (returns a list, as for ragged
            prompts), so that each row's sample is the one it gets alone with that seed.
        use_cache: reuse keys/values of earlier positions (much faster); False recomputes the
            whole window at every step.

    The model runs in eval mode without gradients and is put back in its previous mode.
    """
    rows = _ragged_rows(input_ids, seed)
    seeds = list(seed) if rows is not None and isinstance(seed, Sequence) else None
    for one_seed in seeds if seeds is not None else [seed]:
        check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, one_seed)
    if rows is not None:
        return _generate_rows(
            model,
            rows,
            [seed] * len(rows) if seeds is None else seeds,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            eos_token_id=eos_token_id,
            use_cache=use_cache,
        )
    was_1d = not isinstance(input_ids, torch.Tensor) or input_ids.dim() == 1
    prompt = _as_batch(model, input_ids)
    new = list(
        _token_steps(
            model,
            prompt,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            eos_token_id,
            seed,
            use_cache,
        )
    )
    out = torch.cat([prompt, torch.stack(new, dim=1)], dim=1) if new else prompt
    return out[0] if was_1d else out


def _generate_rows(
    model: CausalLM,
    rows: list[list[int]],
    seeds: list[int | None],
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    eos_token_id: int | None,
    use_cache: bool,
) -> list[torch.Tensor]:
    """Prompts of any lengths, each continued as if alone; one 1-D tensor (prompt + new) each."""
    prompts = [_as_batch(model, row)[0] for row in rows]  # checks the ids
    if not use_cache:  # the uncached loop is for checks: one row after another
        settings = (max_new_tokens, temperature, top_k, top_p, repetition_penalty, eos_token_id)
        outputs = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            new = [int(ids[0]) for ids in _token_steps(model, prompt[None], *settings, seed, False)]
            outputs.append(torch.cat([prompt, prompt.new_tensor(new)]))
        return outputs
    was_training = model.training
    model.eval()
    try:
        decoder = BatchDecoder(model, len(rows))
        done = []
        for row, s in zip(rows, seeds, strict=True):
            sampling = RowSampling(
                max_new_tokens, temperature, top_k, top_p, repetition_penalty, eos_token_id, s
            )
            done.append(decoder.add(row, sampling))
        while decoder.rows:
            for row, _ in decoder.step():
                if row.done:
                    decoder.remove(row)
    finally:
        model.train(was_training)
    return [torch.tensor(row.tokens, dtype=torch.long, device=model.device) for row in done]


def generate_stream(
    model: CausalLM,
    input_ids: torch.Tensor | Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_token_id: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> Iterator[int]:
    """Like :func:`generate` for one prompt ((T,), list, or (1, T)), but yields each new token id
    (an int) as soon as it is sampled; stops after ``eos_token_id`` (which is yielded)."""
    check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
    prompt = _as_batch(model, input_ids)
    if prompt.shape[0] != 1:
        raise ConfigError(
            f"generate_stream takes one prompt, got a batch of {prompt.shape[0]}; use generate()"
        )
    steps = _token_steps(
        model,
        prompt,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        repetition_penalty,
        eos_token_id,
        seed,
        use_cache,
    )
    return (int(next_ids[0]) for next_ids in steps)
