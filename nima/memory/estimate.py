"""What one training step needs: the memory plan's arithmetic.

:func:`estimate_training_memory` adds up the weights, gradients, optimizer state and the
activations a forward/backward keeps (with or without gradient checkpointing) for a GPT of a
given :class:`~nima.models.ModelConfig`, micro-batch and precision. The activation figures per
token are calibrated against measured peaks (``benchmarks/memory.py``), and compared with
:func:`nima.memory.system.available_memory`. A CPU that runs out of memory does not raise: the
kernel kills the process, silently. So Nima plans before the first step and refuses, with the
figures and the fixes, a run that would not fit (:mod:`nima.memory.plan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nima.memory.heap import SMALL_BLOCK_LIMIT
from nima.models import GPT

GiB = 1024**3
HEADROOM = 0.85
"""Share of the available memory a plan may use. The rest: the plan's own error (at most 11% low
in benchmarks/memory.py's 24 configurations), allocator slack, the data loader, Python objects,
other processes starting meanwhile."""

OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "adamw_scale": 2, "sgd": 1}
"""fp32 tensors of the parameters' size each optimizer keeps (AdamW: two moments)."""

# Activation bytes kept for backward per token and layer, as c_d * d_model + c_f * d_ff, measured
# on gpt2-family blocks (benchmarks/memory.py): fp32 keeps every saved tensor in 4 bytes; bf16
# autocast keeps matmul inputs and outputs in 2 bytes and norms and the residual stream in 4.
ACTIVATION_BYTES = {"fp32": (28.0, 6.0), "bf16": (16.0, 3.2), "fp16": (16.0, 3.2)}
# What a checkpointed block keeps: its input (the residual stream), in fp32; and, while the
# backward pass recomputes one block at a time, about this many blocks' full activations.
CHECKPOINTED_BYTES_PER_D = 4.0
RECOMPUTE_BLOCKS = 1.5
# The autograd engine's and kernels' scratch space. On CPUs and CUDA GPUs the optimizers are fused
# and clipping scales in place: no copy of the parameters (measured on gpt2-small, 124M parameters:
# counting one overestimated every configuration by about its 475 MiB). Elsewhere (MPS) the
# foreach kernels make about one fp32 copy of the parameters at a time.
WORKSPACE_FIXED = 128 * 1024**2
# Attention that keeps (T x T) scores per head (SDPA's math path, e.g. attention dropout on a
# CPU): scores, dropout mask and probabilities.
QUADRATIC_BYTES_PER_SCORE = 13.0
# On a CPU a training process lets glibc keep in its heap the blocks under 32 MiB that a step
# frees (memory/heap.py). Mixing sizes in one heap leaves holes that stay resident: the resident
# set peaks above the live tensors. Measured per sequence (4 layers, d_model 128-384, context
# 256-512, fp32): 1.3x without gradient checkpointing, about 2.7x for the recompute path's
# activations with it. Larger blocks are mapped and unmapped alone, unless the plan leaves room
# to keep them too (KEPT_HEAP_ROOM).
HEAP_SLACK = 1.33
HEAP_SLACK_RECOMPUTE = 2.7
# Keeping every block a step frees, large ones too (memory/heap.py: no page faulted in again; the
# base config's step 1.7x faster on a CPU) leaves more holes: measured 0.25-1.0x the activations
# and logits again (base config and gpt2-small, fp32 and bf16). So a CPU run keeps every block
# only when the plan fits this many times over (and it runs alone: memory/plan.py);
# otherwise large blocks are mapped alone.
KEPT_HEAP_ROOM = 2.0


@dataclass(frozen=True)
class MemoryPlan:
    """The bytes one training step needs, by kind, and what the device has (None: unknown)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    workspace: int
    available: int | None
    device: str
    batch_size: int
    seq_len: int
    precision: str
    gradient_checkpointing: bool
    checkpoint_copy: int = 0
    """A checkpoint written in the background (``async_checkpoint``) on a CPU: its copy of the
    weights and optimizer state lives in the same memory while training goes on."""
    keeps_every_block: bool = False
    """On a CPU: the steps keep every block they free (faster), not only those under 32 MiB."""

    @property
    def total(self) -> int:
        return (
            self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.workspace
            + self.checkpoint_copy
        )  # fmt: skip

    @property
    def usable(self) -> int | None:
        return None if self.available is None else int(self.available * HEADROOM)

    @property
    def fits(self) -> bool:
        return self.usable is None or self.total <= self.usable

    @property
    def room_to_keep_every_block(self) -> bool:
        """Whether a CPU step may keep every block it frees: the plan fits KEPT_HEAP_ROOM times
        over (not with gradient checkpointing, chosen to save memory, nor with memory unknown)."""
        on_cpu = self.device.startswith("cpu")
        return (
            on_cpu
            and not self.gradient_checkpointing
            and self.usable is not None
            and (self.total * KEPT_HEAP_ROOM <= self.usable)
        )

    def describe(self) -> str:
        """One line: the parts, the total, and what is available."""
        where = "GPU" if self.device.startswith("cuda") else "RAM"
        have = f"{_gib(self.available)} available ({where})" if self.available is not None else "?"
        gc = ", gradient checkpointing" if self.gradient_checkpointing else ""
        activations = self.activations + self.logits + self.workspace
        copy = f" + checkpoint copy {_gib(self.checkpoint_copy)}" if self.checkpoint_copy else ""
        kept = "; the steps keep the memory they free (faster; up to 2x the plan resident)"
        kept = kept if self.keeps_every_block else ""
        return (
            f"memory plan: weights {_gib(self.weights)} + gradients {_gib(self.gradients)} + optimizer "
            f"{_gib(self.optimizer)} + activations {_gib(activations)} (batch {self.batch_size} x "
            f"{self.seq_len}, {self.precision}{gc}){copy} = {_gib(self.total)} of {have}{kept}"
        )


def _gib(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / GiB:.1f} GiB" if n >= 0.1 * GiB else f"{n / 1024**2:.0f} MiB"


def _fused_optimizers(device: str) -> bool:
    """Whether Nima's optimizers run fused kernels there (training/optimizers.py)."""
    return str(device).split(":")[0] in ("cpu", "cuda")


def _param_count(config: Any) -> int:
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = GPT(config)
    return sum(p.numel() for p in model.parameters())


def estimate_training_memory(
    config: Any,
    batch_size: int,
    seq_len: int | None = None,
    precision: str = "fp32",
    gradient_checkpointing: bool | None = None,
    optimizer: str = "adamw",
    quadratic_attention: bool = False,
    loss_chunk_rows: int | None = None,
    device: str = "cpu",
    available: int | None = None,
    background_checkpoint: bool = False,
) -> MemoryPlan:
    """The memory one training step of a GPT with ``config`` needs at ``batch_size`` sequences
    of ``seq_len`` tokens (default: the model's context).

    ``quadratic_attention``: attention keeps (T x T) scores (no fused kernel for the setting).
    ``loss_chunk_rows``: the loss is computed in chunks of this many positions (the full
    ``(B, T, vocab)`` logits are never held); None: whole.
    ``background_checkpoint``: checkpoints are written in the background; on a CPU their copy of
    the weights and optimizer state shares the memory with the steps that go on meanwhile.
    """
    seq_len = seq_len or config.max_seq_len
    gc = config.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    params = _param_count(config)
    tokens = batch_size * seq_len
    d, f, layers = config.d_model, config.ff_dim, config.n_layers
    c_d, c_f = ACTIVATION_BYTES[precision]
    on_cpu = str(device).startswith("cpu")

    slack = HEAP_SLACK_RECOMPUTE if gc else HEAP_SLACK

    def heap_slack(block_bytes: float) -> float:  # glibc's heap serves blocks under its mmap threshold
        return slack if on_cpu and block_bytes < SMALL_BLOCK_LIMIT else 1.0

    per_layer = tokens * (c_d * d * heap_slack(tokens * d * 4) + c_f * f * heap_slack(tokens * f * 4))
    if config.dropout > 0:
        per_layer += tokens * 2 * d  # two dropout masks (1 byte each) per block
    if quadratic_attention:
        per_layer += batch_size * config.n_heads * seq_len * seq_len * QUADRATIC_BYTES_PER_SCORE
    if gc:  # block inputs only, plus the block being recomputed and its gradients
        activations = layers * tokens * d * CHECKPOINTED_BYTES_PER_D + RECOMPUTE_BLOCKS * per_layer
    else:  # every block's saved tensors, plus the backward's transient gradients (about a block)
        activations = (layers + 1) * per_layer
    rows = tokens if loss_chunk_rows is None else min(tokens, loss_chunk_rows)
    logits = rows * config.vocab_size * 4 * 3  # logits, their log-softmax and its gradient, fp32
    autocast_copies = params * 2 if precision in ("bf16", "fp16") else 0  # low-precision weight casts
    optimizer_bytes = params * 4 * OPTIMIZER_STATES.get(optimizer, 2)
    return MemoryPlan(
        weights=params * 4 + autocast_copies,
        gradients=params * 4,
        optimizer=optimizer_bytes,
        activations=int(activations),
        logits=int(logits),
        workspace=WORKSPACE_FIXED + (0 if _fused_optimizers(device) else params * 4),
        available=available,
        device=str(device),
        batch_size=batch_size,
        seq_len=seq_len,
        precision=precision,
        gradient_checkpointing=bool(gc),
        checkpoint_copy=params * 4 + optimizer_bytes if background_checkpoint and on_cpu else 0,
    )
