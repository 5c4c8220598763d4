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
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal

from nima.config_fields import ConfigSection, check_types

Architecture = Literal["gpt2", "llama"]
ARCHITECTURES: tuple[str, ...] = typing.get_args(Architecture)
ACTIVATIONS = {"gpt2": ("gelu", "gelu_tanh"), "llama": ("silu",)}


@dataclass
class ModelConfig(ConfigSection, section="model"):
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
    """Dropout probability on the embeddings and on each residual branch's output during
    training (0 = off)."""
    attn_dropout: float = 0.0
    """Dropout probability on the attention weights (0 = off, as in modern recipes). Only CUDA's
    fused attention kernels apply it without keeping the (T x T) scores; elsewhere (CPU, MPS) a
    value above 0 makes attention memory grow with the square of the context, which the memory
    plan counts and the Trainer says at start."""
    arch: Architecture = "gpt2"
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
        need = check_types(self)
        need(">= 1", "vocab_size", "d_model", "n_heads", "n_layers", "max_seq_len", "d_ff", "n_kv_heads")
        need("in [0, 1)", "dropout", "attn_dropout")
        need("> 0", "rope_theta", "norm_eps", "init_std")
        heads = f"model.n_heads={self.n_heads}"
        need.that(self.d_model % self.n_heads == 0, "d_model", f"divisible by {heads}")
        need.that(self.n_heads % self.kv_heads == 0, "n_kv_heads", f"a divisor of {heads}")
        if self.arch == "llama":
            need.that(
                self.head_dim % 2 == 0,
                "d_model",
                f"a multiple of 2 * model.n_heads = {2 * self.n_heads} for arch llama (rotary "
                "embeddings need an even head width)",
            )
        allowed = " or ".join(map(repr, ACTIVATIONS[self.arch]))
        need.that(self.act in ACTIVATIONS[self.arch], "activation", f"{allowed} for arch {self.arch}")

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

    def approx_parameters(self) -> int:
        """About how many numbers building the model allocates (weights, and rotary tables for
        llama), from the shape alone: for refusing a model that cannot be built before trying."""
        d, kv = self.d_model, self.kv_heads * self.head_dim
        per_layer = d * (d + 2 * kv) + d * d + (3 if self.arch == "llama" else 2) * d * self.ff_dim + 4 * d
        embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        positions = self.max_seq_len * (d if self.arch == "gpt2" else self.head_dim)
        return embeddings + positions + self.n_layers * per_layer + 2 * d

    # -- (de)serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field with derived defaults resolved (YAML/JSON/checkpoint safe)."""
        out = dataclasses.asdict(self)
        out.update(d_ff=self.ff_dim, bias=self.use_bias, n_kv_heads=self.kv_heads, activation=self.act)
        return out
