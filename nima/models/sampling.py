"""One sampling step: logit filters (top-k, top-p, repetition penalty), drawing the next token, the
check of sampling settings, and the model interface that generation uses.

:mod:`nima.models.generation` (one prompt or a batch of equal length) and
:mod:`nima.models.batch_decoding` (rows of different lengths) both sample through these functions,
so that a row sampled in a batch is sampled exactly as it would be alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from numbers import Integral, Real
from typing import Any, Protocol

import torch

from nima.errors import ConfigError
from nima.models.attention import KVCache, RowKVCache
from nima.models.config import ModelConfig


class CausalLM(Protocol):
    """What generation uses of a model: a :class:`~nima.models.gpt.GPT` (whose ``generate`` methods
    call generation, so generation names the interface rather than importing the class)."""

    config: ModelConfig
    training: bool

    @property
    def device(self) -> torch.device: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def last_token_logits(
        self, input_ids: torch.Tensor, kv_cache: KVCache | RowKVCache | None = None
    ) -> torch.Tensor: ...


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
    probs = next_token_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def next_token_probs(
    logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution (B, V) that :func:`sample_next_token` draws from at ``temperature`` > 0,
    row by row (a row's probabilities do not depend on the other rows)."""
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
    return torch.where(torch.isfinite(probs).all(dim=-1, keepdim=True), probs, torch.ones_like(probs))


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
