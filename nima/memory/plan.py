"""The memory plan of a run: estimated against what the device has, refused in one line when it
does not fit, and the message for a GPU that ran out anyway."""

from __future__ import annotations

import dataclasses

from torch import nn

from nima.config.training import TrainingConfig
from nima.errors import ConfigError
from nima.memory.estimate import MemoryPlan, estimate_training_memory
from nima.memory.heap import keep_freed_memory
from nima.memory.system import available_memory
from nima.models import LOSS_CHUNK_ROWS, ModelConfig
from nima.runtime import Runtime


def plan_memory(
    model: nn.Module, config: TrainingConfig, batch_size: int | None, seq_len: int | None, runtime: Runtime
) -> MemoryPlan | None:
    """The memory plan of one step (None for models Nima cannot estimate); ConfigError, with the
    figures and the fixes, when it does not fit in what the device has."""
    model_config = getattr(model, "config", None)
    if not isinstance(model_config, ModelConfig) or not batch_size or not seq_len:
        return None
    plan = estimate_for(model_config, batch_size, seq_len, runtime, config)
    if not plan.fits:
        raise ConfigError(memory_refusal(plan, model_config, config, runtime))
    if runtime.device.type == "cpu":  # where there is room, the steps keep every block they free
        alone = not runtime.dist.enabled  # torchrun's processes on one machine share its memory
        plan = dataclasses.replace(plan, keeps_every_block=alone and plan.room_to_keep_every_block)
        keep_freed_memory(large_blocks=plan.keeps_every_block)
    return plan


def estimate_for(
    model_config: ModelConfig, batch_size: int, seq_len: int, runtime: Runtime, config: TrainingConfig
) -> MemoryPlan:
    """:func:`estimate_training_memory` for this device, precision, model and training settings."""
    return estimate_training_memory(
        model_config,
        batch_size,
        seq_len,
        precision=runtime.precision.name,
        optimizer=config.optimizer_type,
        background_checkpoint=config.async_checkpoint,
        quadratic_attention=quadratic_attention(model_config, runtime),
        loss_chunk_rows=LOSS_CHUNK_ROWS,
        device=str(runtime.device),
        available=available_memory(runtime.device),
    )


def quadratic_attention(model_config: ModelConfig, runtime: Runtime) -> bool:
    """Whether attention keeps (T x T) scores: attention dropout without a fused kernel for it."""
    return model_config.attn_dropout > 0 and runtime.device.type != "cuda"


def memory_refusal(
    plan: MemoryPlan, model_config: ModelConfig, config: TrainingConfig, runtime: Runtime
) -> str:
    """One line: what the step needs, what there is, and settings that would fit."""
    accum = config.gradient_accumulation_steps
    fixes = []
    for micro in (m for m in (16, 8, 4, 2, 1) if m < plan.batch_size and plan.batch_size % m == 0):
        smaller = estimate_for(model_config, micro, plan.seq_len, runtime, config)
        if smaller.fits:
            steps = accum * plan.batch_size // micro
            fixes.append(
                f"training.batch_size: {micro} with training.gradient_accumulation_steps: {steps} "
                f"(the same sequences per step; {smaller.total / 2**30:.1f} GiB)"
            )
            break
    if not plan.gradient_checkpointing:
        checkpointed = estimate_for(
            dataclasses.replace(model_config, gradient_checkpointing=True), plan.batch_size, plan.seq_len,
            runtime, config,
        )  # fmt: skip
        if checkpointed.fits:
            fixes.append(f"model.gradient_checkpointing: true ({checkpointed.total / 2**30:.1f} GiB)")
    if plan.checkpoint_copy and plan.usable is not None and plan.total - plan.checkpoint_copy <= plan.usable:
        fixes.append(
            "training.async_checkpoint: false (saving then pauses training instead of copying the state)"
        )
    if quadratic_attention(model_config, runtime):
        fixes.append("model.attn_dropout: 0 (attention memory then grows linearly with the context)")
    fixes += ["training.batch_size: auto (measures what fits)", "a shorter model.max_seq_len"]
    return (
        f"this run will not fit in memory: one training step needs about {plan.total / 2**30:.1f} GiB "
        f"({plan.describe().removeprefix('memory plan: ')}), and {plan.usable / 2**30:.1f} GiB can be used; "
        f"fixes: {'; or '.join(fixes)}"
    )


def out_of_memory(step: int, plan: MemoryPlan | None) -> str:
    """The one-line message for a GPU that ran out of memory during training."""
    figures = f" (the plan: {plan.describe().removeprefix('memory plan: ')})" if plan is not None else ""
    return (
        f"the GPU ran out of memory at step {step + 1}{figures}; use a smaller training.batch_size with "
        "more training.gradient_accumulation_steps (or training.batch_size: auto), "
        "model.gradient_checkpointing: true, or a shorter model.max_seq_len"
    )
