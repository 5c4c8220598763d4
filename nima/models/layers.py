"""Building blocks shared by both families: normalisation, feed-forward networks, rotary embeddings.

The family (``config.arch``) picks the variant: gpt2 uses LayerNorm and a GELU MLP, llama uses
RMSNorm and a SwiGLU MLP with rotary position embeddings inside attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nima.models.config import ModelConfig


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    """LayerNorm (gpt2) or RMSNorm (llama) over the last ``dim`` (default d_model) features."""
    dim = config.d_model if dim is None else dim
    if config.arch == "llama":
        return nn.RMSNorm(dim, eps=config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.use_bias)


def dropout_or_identity(p: float) -> nn.Module:
    """nn.Dropout(p), or a free Identity when p == 0 (dropout with p=0 still costs a kernel call)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class MLP(nn.Module):
    """GPT-2 feed-forward network: Linear -> GELU -> Linear."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.ff_dim, bias=config.use_bias)
        self.proj = nn.Linear(config.ff_dim, config.d_model, bias=config.use_bias)
        self.dropout = dropout_or_identity(config.dropout)
        self.approximate = "tanh" if config.act == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


class SwiGLU(nn.Module):
    """LLaMA feed-forward network: (SiLU(x W_gate) * x W_up) W_down.

    Gate and up projections are one fused Linear (one matmul instead of two); ``fc`` holds
    [W_gate; W_up] stacked along the output dimension.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, 2 * config.ff_dim, bias=config.use_bias)
        self.proj = nn.Linear(config.ff_dim, config.d_model, bias=config.use_bias)
        self.dropout = dropout_or_identity(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.dropout(self.proj(F.silu(gate) * up))


def make_mlp(config: ModelConfig) -> nn.Module:
    """The family's feed-forward network."""
    return SwiGLU(config) if config.arch == "llama" else MLP(config)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) tables for positions 0..max_seq_len-1.

    Uses the "rotate half" layout: feature i is paired with feature i + head_dim/2. The model owns
    one instance for all layers. The cos/sin tables are non-persistent buffers (rebuilt at
    construction, never stored in checkpoints).
    """

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # (L, hd/2)
        angles = torch.cat([angles, angles], dim=-1)  # (L, hd)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, seq_len: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) tables of shape (seq_len, head_dim) for positions start..start+seq_len-1."""
        return self.cos[start : start + seq_len], self.sin[start : start + seq_len]

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) tables of shape (B, 1, T, head_dim) for per-row ``positions`` (B, T)."""
        return self.cos[positions][:, None], self.sin[positions][:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape (B, H, T, head_dim) by the (T, head_dim) tables of RotaryEmbedding
    (or its (B, 1, T, head_dim) tables of per-row positions)."""
    # Under autocast the tables (float32) would otherwise promote bf16/fp16 queries to float32.
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin
