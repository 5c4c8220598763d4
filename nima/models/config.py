"""The model's configuration: one dataclass, the YAML ``model:`` section.

Every field has a default and a docstring. ``__post_init__`` checks types, ranges and combinations
and raises :class:`~nima.errors.ConfigError` naming the field (``model.<field>``) and the fix.

A few fields default to ``None``, meaning "derived from the architecture family": ``d_ff`` (4 *
d_model for gpt2, the SwiGLU 8/3 rule for llama), ``bias`` (True for gpt2, False for llama),
``activation`` (gelu for gpt2, silu for llama) and ``n_kv_heads`` (= n_heads). They stay ``None``
on the object, so that ``dataclasses.replace(cfg, d_model=...)`` re-derives them; use the
``ff_dim``, ``use_bias``, ``act`` and ``kv_heads`` properties for the resolved values.
:meth:`ModelConfig.to_dict` writes the resolved values, so a checkpoint's config does not depend
on today's defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from nima.errors import ConfigError

ARCHITECTURES = ("gpt2", "llama")
ACTIVATIONS = {"gpt2": ("gelu", "gelu_tanh"), "llama": ("silu",)}


@dataclass
class ModelConfig:
    """Shape and options of a decoder-only transformer (the YAML ``model:`` section)."""

    vocab_size: int = 10000
    """Number of token ids; must match the tokenizer's ``vocab_size``."""
    d_model: int = 512
    """Width of the residual stream (embedding size)."""
    n_heads: int = 8
    """Attention (query) heads; must divide d_model."""
    n_layers: int = 6
    """Number of transformer blocks."""
    d_ff: int | None = None
    """Hidden width of the feed-forward network. None: 4 * d_model for gpt2; for llama's SwiGLU
    8/3 * d_model rounded up to a multiple of 64 (about the same parameters as a 4x GELU MLP)."""
    max_seq_len: int = 1024
    """Longest sequence (context window) the model accepts, in tokens."""
    dropout: float = 0.0
    """Dropout probability on attention weights and residual branches during training (0 = off)."""
    arch: str = "gpt2"
    """Architecture family: "gpt2" (learned positions, LayerNorm, GELU MLP) or "llama" (RoPE,
    RMSNorm, SwiGLU MLP; grouped-query attention through n_kv_heads)."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; must divide n_heads. None: n_heads (plain
    multi-head attention); 1: multi-query attention."""
    tie_embeddings: bool = True
    """Share the token embedding matrix with the output head (saves vocab_size * d_model parameters)."""
    bias: bool | None = None
    """Biases in Linear and LayerNorm layers. None: True for gpt2, False for llama."""
    activation: str | None = None
    """Feed-forward activation. gpt2: "gelu" (exact, the default) or "gelu_tanh" (the tanh
    approximation that OpenAI's GPT-2 weights were trained with); llama: "silu" (SwiGLU), the
    only choice."""
    qk_norm: bool = False
    """Normalise queries and keys per head (RMSNorm) before attention; steadies training at high
    learning rates."""
    rope_theta: float = 10000.0
    """Base of the rotary position embedding frequencies (llama family only)."""
    norm_eps: float = 1e-5
    """Epsilon of LayerNorm / RMSNorm."""
    init_std: float = 0.02
    """Standard deviation of the normal weight initialisation; residual output projections use
    init_std / sqrt(2 * n_layers) (GPT-2 scheme)."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of storing them: less
    memory, about a third more compute. Only active in training mode with gradients enabled."""

    def __post_init__(self) -> None:
        self._check_types()
        self._check_values()

    # -- derived values -------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        """Width of one attention head (d_model // n_heads)."""
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Resolved number of key/value heads."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def use_bias(self) -> bool:
        """Resolved ``bias``."""
        return (self.arch == "gpt2") if self.bias is None else self.bias

    @property
    def act(self) -> str:
        """Resolved ``activation``."""
        if self.activation is not None:
            return self.activation
        return "silu" if self.arch == "llama" else "gelu"

    @property
    def ff_dim(self) -> int:
        """Resolved feed-forward hidden width."""
        if self.d_ff is not None:
            return self.d_ff
        if self.arch == "llama":
            return 64 * math.ceil(8 * self.d_model / 3 / 64)
        return 4 * self.d_model

    # -- (de)serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field with derived defaults resolved (YAML/JSON/checkpoint safe)."""
        out = dataclasses.asdict(self)
        out.update(d_ff=self.ff_dim, bias=self.use_bias, n_kv_heads=self.kv_heads, activation=self.act)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build a config from a mapping such as a YAML ``model:`` section.

        Raises ConfigError for an unknown key (suggesting the nearest valid one) or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"model section must be a mapping of keys to values, got {type(data).__name__}")
        valid = [f.name for f in fields(cls)]
        for key in data:
            if key not in valid:
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f"did you mean model.{close[0]}?" if close else f"valid keys: {', '.join(valid)}"
                raise ConfigError(f"unknown key model.{key} ({hint})")
        return cls(**dict(data))

    # -- validation -----------------------------------------------------------------------------

    def _check_types(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            optional = f.default is None
            if value is None and optional:
                continue
            kind = _FIELD_KINDS[f.name]
            if kind is bool:
                if not isinstance(value, bool):
                    raise ConfigError(f"model.{f.name} must be true or false, got {value!r}")
            elif kind is int:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"model.{f.name} must be an integer, got {value!r}")
            elif kind is float:
                # YAML reads "1e-5" (no dot) as a string; accept anything float() understands.
                if isinstance(value, bool):
                    raise ConfigError(f"model.{f.name} must be a number, got {value!r}")
                try:
                    setattr(self, f.name, float(value))
                except (TypeError, ValueError):
                    raise ConfigError(f"model.{f.name} must be a number, got {value!r}") from None
            elif kind is str and not isinstance(value, str):
                raise ConfigError(f"model.{f.name} must be a string, got {value!r}")

    def _check_values(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.d_ff is not None and self.d_ff < 1:
            raise ConfigError(f"model.d_ff must be at least 1 (or null for the default), got {self.d_ff}")
        if self.arch not in ARCHITECTURES:
            close = difflib.get_close_matches(self.arch, ARCHITECTURES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"model.arch={self.arch!r} is unknown ({hint}choose one of: {', '.join(ARCHITECTURES)})"
            )
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                "pick n_heads that divides d_model"
            )
        if self.n_kv_heads is not None:
            if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
                raise ConfigError(
                    f"model.n_kv_heads={self.n_kv_heads} must be at least 1 and divide "
                    f"model.n_heads={self.n_heads}"
                )
        if self.arch == "llama" and self.head_dim % 2:
            raise ConfigError(
                f"model.d_model / model.n_heads = {self.head_dim} must be even for rotary embeddings "
                "(arch llama); change d_model or n_heads"
            )
        allowed = ACTIVATIONS[self.arch]
        if self.act not in allowed:
            raise ConfigError(
                f"model.activation={self.act!r} does not fit arch {self.arch}; choose "
                f"{' or '.join(repr(a) for a in allowed)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        for name in ("rope_theta", "norm_eps", "init_std"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"model.{name} must be a positive number, got {value}")


_FIELD_KINDS: dict[str, type] = {
    "vocab_size": int,
    "d_model": int,
    "n_heads": int,
    "n_layers": int,
    "d_ff": int,
    "max_seq_len": int,
    "dropout": float,
    "arch": str,
    "n_kv_heads": int,
    "tie_embeddings": bool,
    "bias": bool,
    "activation": str,
    "qk_norm": bool,
    "rope_theta": float,
    "norm_eps": float,
    "init_std": float,
    "gradient_checkpointing": bool,
}
