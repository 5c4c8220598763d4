"""The decoder-only transformer: pre-norm blocks, a shared block for both families, the GPT model."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nima.data.loader import IGNORE_INDEX  # the label the loss skips (padding, prompt tokens)
from nima.errors import ConfigError, NimaError
from nima.models.attention import CausalSelfAttention, KVCache, RowKVCache
from nima.models.config import ModelConfig
from nima.models.generation import generate, generate_stream
from nima.models.layers import RotaryEmbedding, dropout_or_identity, make_mlp, make_norm

LOSS_CHUNK_ROWS = 1024
"""Positions per chunk of the memory-saving loss (``return_logits=False``)."""


class SequenceTooLongError(NimaError, ValueError):
    """An input longer than the model's context window (``max_seq_len``)."""


@dataclass
class ModelOutput:
    """What :meth:`GPT.forward` returns."""

    logits: torch.Tensor | None
    """(B, T, vocab_size) next-token scores; None when the loss was computed without them."""
    loss: torch.Tensor | None = None
    """Scalar mean cross-entropy over labels != -100 (None without labels)."""


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.norm2 = make_norm(config)
        self.mlp = make_mlp(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | RowKVCache | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, cache)
        return x + self.mlp(self.norm2(x))


def _physical_memory() -> int | None:
    """Bytes of RAM this machine has in all (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _refuse_unbuildable(config: ModelConfig) -> None:
    """ConfigError for a model whose fp32 weights alone are more than this machine's memory:
    building it would end in a crash, after minutes of building modules (a shape from a typo, or
    from a damaged file). Shapes only (meta device) are always allowed."""
    memory = _physical_memory()
    if memory is None or torch.get_default_device().type == "meta":
        return
    weights = 4 * config.approx_parameters()
    if weights > memory:
        raise ConfigError(
            f"this model cannot be built here: {config.approx_parameters():,} parameters "
            f"(model.n_layers={config.n_layers}, model.d_model={config.d_model}, model.vocab_size="
            f"{config.vocab_size}, model.max_seq_len={config.max_seq_len}) need {weights // 2**30:,} GiB "
            f"for their fp32 weights alone, and this machine has {memory / 2**30:.1f} GiB: use a smaller one"
        )


class GPT(nn.Module):
    """A GPT-style language model of the gpt2 or llama family (see :class:`ModelConfig`).

    ``model(input_ids, labels)`` returns a :class:`ModelOutput`; ``model.generate(...)`` and
    ``model.generate_stream(...)`` sample continuations with a key/value cache.
    """

    def __init__(self, config: ModelConfig | Mapping[str, Any]) -> None:
        super().__init__()
        if isinstance(config, Mapping):
            config = ModelConfig.from_dict(config)
        _refuse_unbuildable(config)
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        # gpt2 adds learned absolute positions to the input; llama rotates queries/keys instead.
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model) if config.arch == "gpt2" else None
        self.rope = (
            RotaryEmbedding(config.head_dim, config.max_seq_len, config.rope_theta)
            if config.arch == "llama"
            else None
        )
        self.drop = dropout_or_identity(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm_f = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, init_std) weights, zero biases, unit norms, and residual output
        projections at init_std / sqrt(2 * n_layers) so the residual stream's variance does not
        grow with depth."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)

    # -- forward --------------------------------------------------------------------------------

    def hidden_states(
        self, input_ids: torch.Tensor, kv_cache: KVCache | RowKVCache | None = None
    ) -> torch.Tensor:
        """Final normalised hidden states (B, T, d_model) of ``input_ids`` (B, T).

        With ``kv_cache``, ``input_ids`` are the positions after the cached ones, and the cache is
        extended by them. With a :class:`RowKVCache` (rows of different lengths), ``input_ids`` is
        one new token per row (B, 1), each at its row's own position.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
        T = input_ids.shape[1]
        x = self.tok_emb(input_ids)  # (B, T, d)
        rope = None
        if isinstance(kv_cache, RowKVCache):  # its begin_step() checked the rows' room
            positions = kv_cache.positions()  # (B, 1)
            if self.pos_emb is not None:
                x = x + self.pos_emb(positions)
            else:
                rope = self.rope.at(positions)
        else:
            start = 0 if kv_cache is None else kv_cache.length
            if start + T > self.config.max_seq_len:
                raise SequenceTooLongError(
                    f"sequence of {start + T} tokens is longer than model.max_seq_len="
                    f"{self.config.max_seq_len}; use shorter inputs (e.g. data max_length) or a model "
                    "with a larger max_seq_len"
                )
            if self.pos_emb is not None:
                x = x + self.pos_emb.weight[start : start + T]
            else:
                rope = self.rope(T, start)
        x = self.drop(x)
        if (
            self.config.gradient_checkpointing
            and self.training
            and kv_cache is None
            and torch.is_grad_enabled()
        ):
            for block in self.blocks:
                x = checkpoint(block, x, rope, use_reentrant=False)
        else:
            for block in self.blocks:
                x = block(x, rope, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.norm_f(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        return_logits: bool = True,
    ) -> ModelOutput:
        """Next-token logits and, with labels, the mean cross-entropy loss.

        Args:
            input_ids: (B, T) token ids, T <= max_seq_len.
            labels: (B, T) target ids, already shifted (labels[:, t] is the token after
                input_ids[:, t]); positions labelled -100 are ignored.
            return_logits: False (with labels): ``logits`` is None, and when there are more than
                ``LOSS_CHUNK_ROWS`` positions the loss is computed chunk by chunk without ever
                holding the full (B, T, vocab_size) logits, recomputing each chunk in the backward
                pass (what training uses: it saves gigabytes at long contexts and large vocabularies).
        """
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(
                f"labels shape {tuple(labels.shape)} differs from input_ids shape {tuple(input_ids.shape)}; "
                "labels are the already-shifted next tokens, one per input position"
            )
        h = self.hidden_states(input_ids)
        if labels is not None and not return_logits and labels.numel() > LOSS_CHUNK_ROWS:
            return ModelOutput(logits=None, loss=chunked_cross_entropy(h, self.lm_head.weight, labels))
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return ModelOutput(logits=logits if return_logits else None, loss=loss)

    def last_token_logits(
        self, input_ids: torch.Tensor, kv_cache: KVCache | RowKVCache | None = None
    ) -> torch.Tensor:
        """Logits (B, vocab_size) of the last position only (the output head runs on one position)."""
        h = self.hidden_states(input_ids, kv_cache)
        return self.lm_head(h[:, -1])

    # -- sizes ----------------------------------------------------------------------------------

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters (a tied embedding/head matrix counts once).

        exclude_embeddings: leave out the token and position embedding tables (lookups, no
        matmul). A tied output head is the token embedding, so it is left out too; an untied head
        is a matmul and stays in.
        """
        skip = set()
        if exclude_embeddings:
            skip.add(id(self.tok_emb.weight))
            if self.pos_emb is not None:
                skip.add(id(self.pos_emb.weight))
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def estimate_flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token, for MFU.

        ``6 * N + 12 * n_layers * d_model * seq_len``, where N is the number of parameters used in
        matmuls: the non-embedding parameters plus the output head (vocab_size * d_model, counted
        here when it is tied to the embedding). The second term is attention's QK^T and AV products
        (2 matmuls * 2 FLOPs * d_model * seq_len, times 3 for forward + backward) per layer;
        seq_len defaults to max_seq_len. Causal masking is not discounted (PaLM convention).
        """
        c = self.config
        seq_len = c.max_seq_len if seq_len is None else seq_len
        n = self.num_parameters(exclude_embeddings=True)
        if c.tie_embeddings:
            n += c.vocab_size * c.d_model
        return 6 * n + 12 * c.n_layers * c.d_model * seq_len

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self.tok_emb.weight.device

    # -- generation -----------------------------------------------------------------------------

    def generate(
        self,
        input_ids: torch.Tensor | Sequence[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        eos_token_id: int | None = None,
        seed: int | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Prompt followed by up to ``max_new_tokens`` sampled tokens; see
        :func:`nima.models.generation.generate` for the arguments."""
        return generate(
            self,
            input_ids,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            eos_token_id=eos_token_id,
            seed=seed,
            use_cache=use_cache,
        )

    def generate_stream(
        self,
        input_ids: torch.Tensor | Sequence[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        eos_token_id: int | None = None,
        seed: int | None = None,
        use_cache: bool = True,
    ) -> Iterator[int]:
        """Yield new token ids one by one for a single prompt; see
        :func:`nima.models.generation.generate_stream`."""
        return generate_stream(
            self,
            input_ids,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            eos_token_id=eos_token_id,
            seed=seed,
            use_cache=use_cache,
        )


def _chunk_loss_sum(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = F.linear(h, weight).float()
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_rows: int = LOSS_CHUNK_ROWS
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``labels`` without the full logits.

    hidden: (B, T, d); weight: (vocab_size, d); labels: (B, T) with -100 ignored. Each chunk of
    ``chunk_rows`` positions is checkpointed, so only one chunk's logits exist at a time, in the
    forward and in the backward pass.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    total = hidden.new_zeros((), dtype=torch.float32)
    for h_chunk, y_chunk in zip(h.split(chunk_rows), y.split(chunk_rows), strict=True):
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss_sum, h_chunk, weight, y_chunk, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(h_chunk, weight, y_chunk)
    return total / (y != IGNORE_INDEX).sum()
