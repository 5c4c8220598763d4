"""``batch_size: auto``: the largest micro-batch that fits in memory, found with real steps.

On a GPU, forward and backward passes are tried at growing batch sizes until CUDA reports out of
memory (it raises, so trying is safe). A CPU that runs out of memory raises nothing: the kernel
kills the process. So on a CPU the peak memory of real steps at two small batch sizes is
measured, which gives the memory per sequence, and the batch is the largest that the available
memory holds with room to spare. Either way the optimizer's state (not allocated yet) is counted.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from nima.config.training import TrainingConfig
from nima.errors import ConfigError
from nima.memory.estimate import HEADROOM, OPTIMIZER_STATES
from nima.memory.plan import estimate_for
from nima.memory.system import available_memory, measure_peak
from nima.models import ModelConfig
from nima.runtime import PrecisionChoice, Runtime, unwrap_model

# Micro-batches the CPU measurement runs: two sizes give the memory per sequence.
PROBE_SMALL, PROBE_LARGE = 1, 3


@dataclass(frozen=True)
class BatchFit:
    """A micro-batch and the accumulation that together make the requested effective batch."""

    micro_batch: int
    accumulation: int
    largest_fitting: int
    """The largest micro-batch found to fit (micro_batch divides the effective batch)."""
    bytes_per_sequence: int | None
    """Measured (CPU); None where it was found by trying (GPU)."""

    def describe(self) -> str:
        per = (
            f", {self.bytes_per_sequence / 2**20:.0f} MiB per sequence measured"
            if self.bytes_per_sequence
            else ""
        )
        return (
            f"batch_size auto: micro-batch {self.micro_batch} x {self.accumulation} accumulation steps = "
            f"{self.micro_batch * self.accumulation} sequences per step (up to {self.largest_fitting} "
            f"fit{per})"
        )


def find_max_batch_size(
    model: nn.Module,
    seq_len: int | None = None,
    max_batch_size: int = 1024,
    device: torch.device | str | None = None,
    precision: PrecisionChoice | None = None,
    optimizer_type: str = "adamw",
) -> int:
    """The largest micro-batch of ``seq_len``-token sequences (default: the model's context) that
    ``model`` can train on here, up to ``max_batch_size``; see the module docstring for how.

    ``precision``: the run's :class:`PrecisionChoice` (its autocast is used; default fp32).
    The model is left on ``device`` (default: where it is) without gradients, and the random
    state is untouched. Raises ConfigError when not even one sequence fits.
    """
    return _search(model, seq_len, max_batch_size, device, precision, optimizer_type)[0]


def fit_batch(
    model: nn.Module, model_config: ModelConfig, config: TrainingConfig, runtime: Runtime
) -> BatchFit:
    """``batch_size: auto``: the largest divisor of the effective batch that fits (by real steps,
    then capped by the memory plan, the more careful of the two), the smallest any process found,
    with the accumulation that keeps the effective batch."""
    target = config.effective_batch_size
    largest, per_sequence = _search(
        model, model_config.max_seq_len, target, runtime.device, runtime.precision, config.optimizer_type
    )
    micro = max(d for d in range(1, largest + 1) if target % d == 0)
    micro = min(micro, _largest_planned_batch(model_config, micro, target, runtime, config))
    if runtime.dist.enabled:  # every process must take the same micro-batch
        smallest = torch.tensor([micro], device=runtime.device)
        torch.distributed.all_reduce(smallest, op=torch.distributed.ReduceOp.MIN)
        micro = int(smallest)
    return BatchFit(micro, target // micro, largest, per_sequence)


def _largest_planned_batch(
    model_config: ModelConfig, upper: int, effective: int, runtime: Runtime, config: TrainingConfig
) -> int:
    """The largest divisor of ``effective`` up to ``upper`` whose memory plan fits (at least 1)."""
    for micro in range(upper, 0, -1):
        if (
            effective % micro == 0
            and estimate_for(model_config, micro, model_config.max_seq_len, runtime, config).fits
        ):
            return micro
    return 1


def _search(
    model: nn.Module,
    seq_len: int | None,
    max_batch_size: int,
    device: torch.device | str | None,
    precision: PrecisionChoice | None,
    optimizer_type: str,
) -> tuple[int, int | None]:
    """(largest micro-batch that fits, measured bytes per sequence or None on a GPU)."""
    raw = unwrap_model(model)
    device = torch.device(device) if device is not None else next(raw.parameters()).device
    raw.to(device).train()
    seq_len = seq_len or raw.config.max_seq_len
    vocab = raw.config.vocab_size
    optimizer_bytes = 4 * OPTIMIZER_STATES.get(optimizer_type, 2) * sum(p.numel() for p in raw.parameters())

    def step(batch: int) -> None:
        ids = torch.randint(0, vocab, (batch, seq_len), device=device)
        with precision.autocast() if precision is not None else contextlib.nullcontext():
            loss = raw(ids, labels=ids, return_logits=False).loss
        loss.backward()

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            if device.type == "cuda":
                found, per_sequence = _try_on_gpu(step, max_batch_size, optimizer_bytes, device), None
            else:
                found, per_sequence = _measure_on_cpu(
                    step, max_batch_size, optimizer_bytes, device, list(raw.parameters())
                )
        finally:
            raw.zero_grad(set_to_none=True)
    if found < 1:
        raise ConfigError(
            f"not even one sequence of {seq_len} tokens fits in memory for training this model here; "
            "use model.gradient_checkpointing: true, a shorter model.max_seq_len or a smaller model"
        )
    return found, per_sequence


def _measure_on_cpu(
    step, max_batch_size: int, optimizer_bytes: int, device: torch.device, params: list[torch.Tensor]
) -> tuple[int, int]:
    """(largest batch, bytes per sequence) from the measured peaks of two small batches."""
    step(PROBE_SMALL)  # allocates the gradients, so that both measurements see them in place
    small = measure_peak(lambda: step(PROBE_SMALL), device)
    large = measure_peak(lambda: step(PROBE_LARGE), device)
    available = available_memory(device)
    if small is None or large is None or available is None:
        raise ConfigError(
            "batch_size: auto cannot measure memory on this system (it reads /proc/self); "
            "give training.batch_size as a number"
        )
    per_sequence = max(1, (large - small) // (PROBE_LARGE - PROBE_SMALL))
    fixed = max(0, small - PROBE_SMALL * per_sequence)
    # Weights and gradients count against the available memory as in the memory plan (which
    # compares the whole step with it); the optimizer's state is not allocated yet.
    weights_and_grads = 2 * sum(p.numel() * p.element_size() for p in params)
    room = available * HEADROOM - optimizer_bytes - weights_and_grads - fixed
    return min(max_batch_size, int(room // per_sequence)), per_sequence


def _try_on_gpu(step, max_batch_size: int, optimizer_bytes: int, device: torch.device) -> int:
    """Double the batch until CUDA runs out of memory, then bisect between the last two sizes."""
    reserve = torch.empty(optimizer_bytes, dtype=torch.uint8, device=device)  # the optimizer's future state

    def fits(batch: int) -> bool:
        try:
            step(batch)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    good, bad, batch = 0, max_batch_size + 1, 1
    while batch < bad and fits(batch):
        good, batch = batch, batch * 2
    bad = min(bad, batch)
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    del reserve
    return good
