"""Sampling text from a GPT: logit filters, one sampling step, and cached generation loops.

With the key/value cache (the default) the prompt is run once ("prefill") and each new token costs
one position. The cache holds at most ``max_seq_len`` positions. When it is full, the cache is
rebuilt from the most recent ``max_seq_len // 2`` tokens (one prefill every max_seq_len / 2 new
tokens) rather than on every step; uncached generation (``use_cache=False``) instead slides a
window of the last ``max_seq_len`` tokens at every step. Both are exactly the same up to
``max_seq_len`` tokens of context; beyond it they condition on slightly different windows.
A prompt longer than ``max_seq_len`` is cut to its last ``max_seq_len`` tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from numbers import Integral, Real
from typing import Any, Protocol

import torch

from nima.errors import CheckpointError, ConfigError
from nima.models.attention import KVCache
from nima.models.config import ModelConfig


class CausalLM(Protocol):
    """What generation uses of a model: a :class:`~nima.models.gpt.GPT` (whose ``generate`` methods
    call this module, so this module names the interface rather than importing the class)."""

    config: ModelConfig
    training: bool

    @property
    def device(self) -> torch.device: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def last_token_logits(self, input_ids: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor: ...


def apply_repetition_penalty(logits: torch.Tensor, token_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Discourage tokens already present in ``token_ids`` (B, n) (CTRL scheme).

    A seen token's positive logit is divided by ``penalty``, a negative one multiplied, so
    penalty > 1 always lowers its probability relative to unseen tokens (penalty < 1 favours it).
    Returns a new (B, V) tensor.
    """
    if penalty == 1.0 or token_ids.numel() == 0:
        return logits
    seen = logits.gather(1, token_ids)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, token_ids, seen)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, set the rest to -inf (ties with the k-th kept)."""
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums to at
    least ``p`` (always at least the top token); set the rest to -inf."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False  # the top token stays, even for a p that rounds to 0 in float32
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of ``logits`` (B, V) -> (B,). Temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    # A tiny temperature (or repetition penalty) can overflow to inf, and softmax of inf is nan:
    # the largest float instead keeps the choice what it tends to (greedy among the largest).
    logits = torch.nan_to_num(logits.float() / temperature, nan=float("-inf"), neginf=float("-inf"))
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    # A row with no finite score left (scores that overflowed later on) samples uniformly instead
    # of failing: elementwise, so no wait for the device.
    probs = torch.where(torch.isfinite(probs).all(dim=-1, keepdim=True), probs, torch.ones_like(probs))
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def check_sampling(
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    seed: int | None = None,
    prefix: str = "",
) -> None:
    """ConfigError for a sampling setting out of range, naming it ``<prefix><name>`` (``--top_p``
    where the settings are command-line options; None means off, as in :func:`generate`)."""
    off = "" if prefix else " or None"

    def whole(value: Any) -> bool:
        return isinstance(value, Integral) and not isinstance(value, bool)

    def number(value: Any) -> bool:
        return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)

    if not whole(max_new_tokens) or max_new_tokens < 0:
        raise ConfigError(f"{prefix}max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
    if not number(temperature) or temperature < 0:
        raise ConfigError(f"{prefix}temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k is not None and (not whole(top_k) or top_k < 1):
        raise ConfigError(f"{prefix}top_k must be a whole number >= 1{off}, got {top_k!r}")
    if top_p is not None and not (number(top_p) and 0 < top_p <= 1):
        raise ConfigError(f"{prefix}top_p must be in (0, 1]{off}, got {top_p!r}")
    if not number(repetition_penalty) or repetition_penalty <= 0:
        raise ConfigError(
            f"{prefix}repetition_penalty must be a finite number > 0 (1 = off), got {repetition_penalty!r}"
        )
    if seed is not None and (not whole(seed) or not -(2**63) <= seed < 2**64):
        raise ConfigError(f"{prefix}seed must be a whole number from -2**63 to 2**64 - 1, got {seed!r}")


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
) -> torch.Tensor:
    """Sample a continuation of ``input_ids``; returns prompt + new tokens.

    Args:
        input_ids: prompt token ids, (T,) / list (returns (T + n,)) or (B, T) (returns (B, T + n)).
        max_new_tokens: tokens to add (fewer if every row reached ``eos_token_id``).
        temperature: softmax temperature; 0 = greedy decoding (then top_k, top_p and seed are unused).
        top_k: sample only among the k most likely tokens.
        top_p: nucleus sampling, among the most likely tokens holding probability mass top_p.
        repetition_penalty: > 1 discourages tokens already in the prompt or output (1 = off).
        eos_token_id: stop a row when it produces this id (included in the output); rows that
            stopped early are padded with it until all rows stop.
        seed: seeds a private torch.Generator for reproducible sampling (None: torch's global RNG).
        use_cache: reuse keys/values of earlier positions (much faster); False recomputes the
            whole window at every step.

    The model runs in eval mode without gradients and is put back in its previous mode.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
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
