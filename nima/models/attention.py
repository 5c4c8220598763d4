"""Causal self-attention (multi-head, grouped-query or multi-query) and its key/value cache.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` so that fused Flash /
memory-efficient kernels are used where the device has them. Queries, keys and values come from one
fused Linear (one matmul instead of three).

Two caches: :class:`KVCache` holds the same number of positions for every row (one prompt, or a
batch of equal-length prompts); :class:`RowKVCache` gives each row its own length, so that rows of
different lengths decode together (ragged and continuous batching, see
:mod:`nima.models.batch_decoding`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nima.models.config import ModelConfig
from nima.models.layers import apply_rotary, dropout_or_identity

# enable_gqa lets SDPA broadcast key/value heads itself (torch >= 2.5); older versions get explicit copies.
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated once.

    Tensors have shape (n_layers, batch, n_kv_heads, capacity, head_dim). Each attention layer
    writes its new keys/values at positions ``length .. length+T`` with :meth:`update`; the model
    calls :meth:`advance` once after all layers. ``capacity`` is at most the model's max_seq_len;
    the generator rebuilds the cache when it is full (see :mod:`nima.models.generation`).
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        capacity: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (n_layers, batch_size, n_kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @classmethod
    def for_config(
        cls,
        config: ModelConfig,
        batch_size: int,
        capacity: int | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> KVCache:
        """A cache sized for ``config`` (capacity defaults to, and is capped at, max_seq_len)."""
        capacity = config.max_seq_len if capacity is None else min(capacity, config.max_seq_len)
        return cls(
            config.n_layers,
            batch_size,
            config.kv_heads,
            config.head_dim,
            capacity,
            device=device,
            dtype=dtype,
        )

    @classmethod
    def over(cls, keys: torch.Tensor, values: torch.Tensor, length: int = 0) -> KVCache:
        """A cache over existing tensors (n_layers, batch, n_kv_heads, capacity, head_dim), for
        example one row of a :class:`RowKVCache`; writes go to those tensors."""
        cache = cls.__new__(cls)
        cache.keys, cache.values, cache.length = keys, values, length
        return cache

    @property
    def capacity(self) -> int:
        """Most positions the cache can hold."""
        return self.keys.shape[3]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` (B, n_kv_heads, T, head_dim) after the cached positions of ``layer``.

        Returns the keys and values of all positions so far, (B, n_kv_heads, length + T, head_dim).
        """
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} positions > capacity {self.capacity}")
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as filled (called by the model after all layers)."""
        self.length += n

    def reset(self) -> None:
        """Forget all positions (the memory is reused)."""
        self.length = 0

    def attend(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        """Store the new ``k``, ``v`` (B, n_kv_heads, T, head_dim) of ``layer``; returns the keys and
        values of all positions with the ``(attn_mask, is_causal)`` that SDPA needs for them."""
        past, T = self.length, k.shape[2]
        k, v = self.update(layer, k, v)  # (B, KV, past + T, hd)
        if past == 0:
            return k, v, None, True
        # SDPA's is_causal aligns the mask top-left, which is wrong when queries start after the
        # cached keys. One new query may see everything; several need an offset mask.
        if T == 1:
            return k, v, None, False
        mask = torch.ones(T, past + T, dtype=torch.bool, device=k.device).tril(diagonal=past)
        return k, v, mask, False


class RowKVCache:
    """A key/value cache whose rows have lengths of their own: one new position per row per step.

    Tensors have shape (n_layers, max_rows, n_kv_heads, capacity, head_dim). The rows in use are
    ``0 .. rows - 1`` (the decoder keeps them packed). A row is filled on its own through
    :meth:`row` (a :class:`KVCache` over that row: a prompt's prefill), then all rows advance
    together: :meth:`begin_step` before the model call with one new token per row, whose positions
    are :meth:`positions`; each layer's :meth:`attend` writes the new keys at each row's own
    position and masks every row to its own length; :meth:`advance` (called by the model) ends the
    step.
    """

    def __init__(
        self,
        n_layers: int,
        max_rows: int,
        n_kv_heads: int,
        head_dim: int,
        capacity: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (n_layers, max_rows, n_kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths: list[int] = [0] * max_rows
        """Positions filled in each row (rows at and after ``rows`` are unused)."""
        self.rows = 0
        self._positions: torch.Tensor | None = None
        self._row_index: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._end = 0

    @classmethod
    def for_config(
        cls,
        config: ModelConfig,
        max_rows: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> RowKVCache:
        """A cache of ``max_rows`` rows of ``config.max_seq_len`` positions each."""
        return cls(
            config.n_layers,
            max_rows,
            config.kv_heads,
            config.head_dim,
            config.max_seq_len,
            device=device,
            dtype=dtype,
        )

    @property
    def capacity(self) -> int:
        """Most positions one row can hold."""
        return self.keys.shape[3]

    @property
    def max_rows(self) -> int:
        return self.keys.shape[1]

    def row(self, i: int) -> KVCache:
        """Row ``i`` as a one-row :class:`KVCache` from its current length (for a prefill); set
        ``lengths[i]`` to its ``length`` afterwards."""
        return KVCache.over(self.keys[:, i : i + 1], self.values[:, i : i + 1], self.lengths[i])

    def move(self, src: int, dst: int) -> None:
        """Copy row ``src`` (its filled positions) into row ``dst`` (to keep the rows packed)."""
        n = self.lengths[src]
        self.keys[:, dst, :, :n] = self.keys[:, src, :, :n]
        self.values[:, dst, :, :n] = self.values[:, src, :, :n]
        self.lengths[dst] = n

    def begin_step(self, rows: int) -> None:
        """Prepare a step of one new token for each of rows ``0 .. rows - 1``."""
        longest = max(self.lengths[:rows])
        if longest >= self.capacity:
            raise RuntimeError(f"KV cache overflow: a row is full ({self.capacity} positions)")
        device = self.keys.device
        self.rows = rows
        self._positions = torch.tensor(self.lengths[:rows], device=device)  # (R,)
        self._row_index = torch.arange(rows, device=device)
        self._end = longest + 1
        if min(self.lengths[:rows]) == longest:  # rows of one length: every row sees every key
            self._mask = None
            return
        seen = torch.arange(longest + 1, device=device)[None] <= self._positions[:, None]  # (R, L+1)
        # (R, 1, 1, L+1): each row sees its own positions; additive, in the cache dtype, built once a
        # step (a boolean mask would be converted again in every layer)
        zero = torch.zeros((), dtype=self.keys.dtype, device=device)
        self._mask = torch.where(seen, zero, float("-inf"))[:, None, None, :]

    def positions(self) -> torch.Tensor:
        """Positions (rows, 1) of this step's new tokens."""
        assert self._positions is not None, "begin_step() first"
        return self._positions[:, None]

    def attend(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        """Store each row's one new ``k``, ``v`` (rows, n_kv_heads, 1, head_dim) at the row's own
        position; returns keys and values up to the longest row, with the mask of each row."""
        assert self._positions is not None, "begin_step() first"
        where = (self._row_index, slice(None), self._positions)
        self.keys[layer][where] = k[:, :, 0]  # (R, KV, hd) into (max_rows, KV, capacity, hd)
        self.values[layer][where] = v[:, :, 0]
        end = self._end
        return (
            self.keys[layer, : self.rows, :, :end],
            self.values[layer, : self.rows, :, :end],
            self._mask,
            False,
        )

    def advance(self, n: int) -> None:
        """End the step (called by the model after all layers): every row is one longer."""
        assert n == 1, "rows advance one position per step"
        for i in range(self.rows):
            self.lengths[i] += 1
        self._positions = self._mask = None


class CausalSelfAttention(nn.Module):
    """Causal self-attention with n_heads query heads sharing n_kv_heads key/value heads.

    Options from the config: RoPE (arch llama; the (cos, sin) tables are passed in by the model),
    per-head RMSNorm of queries and keys (``qk_norm``), dropout on attention weights and output.
    """

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.n_heads
        self.n_kv_heads = config.kv_heads
        self.head_dim = config.head_dim
        self.q_size = self.n_heads * self.head_dim
        self.kv_size = self.n_kv_heads * self.head_dim
        self.qkv = nn.Linear(config.d_model, self.q_size + 2 * self.kv_size, bias=config.use_bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.use_bias)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else None
        self.attn_dropout = config.attn_dropout
        self.resid_dropout = dropout_or_identity(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | RowKVCache | None = None,
    ) -> torch.Tensor:
        """x: (B, T, d_model) -> (B, T, d_model); with ``cache``, x holds the next positions."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split([self.q_size, self.kv_size, self.kv_size], dim=2)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)

        mask, is_causal = None, True
        if cache is not None:
            k, v, mask, is_causal = cache.attend(self.layer_idx, k, v)  # (B, KV, past + T, hd)

        dropout_p = self.attn_dropout if self.training else 0.0
        if self.n_kv_heads == self.n_heads:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal
            )
        elif _SDPA_HAS_GQA:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=True
            )
        else:  # pragma: no cover - torch < 2.5
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal
            )
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, d_model)
        return self.resid_dropout(self.proj(y))
