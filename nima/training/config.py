"""TrainingConfig: every knob of a training run (the YAML ``training:`` section)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import InitVar, dataclass
from typing import Any

from nima.distributed import STRATEGIES
from nima.errors import ConfigError
from nima.training.validation import build_section, coerce, field_types

SCHEDULERS = ("cosine", "linear", "constant", "cosine_restarts")
OPTIMIZERS = ("adamw", "adam", "sgd", "adamw_scale")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Both spellings appear in the guide; the first is accepted, the second is canonical.
ALIASES = {"save_steps": "save_every", "eval_steps": "eval_every"}


@dataclass
class TrainingConfig:
    """How to train: length, optimizer, schedule, precision, evaluation, checkpoints, logging.

    ``batch_size`` sizes the loaders that ``scripts/train.py`` builds; a :class:`Trainer` given a
    ready-made loader uses that loader's batches (and warns when the two disagree).
    ``save_steps``/``eval_steps`` are accepted as spellings of ``save_every``/``eval_every``.
    """

    # --- length ---
    num_epochs: int = 1
    """Passes over the training data (ignored when max_steps is set)."""
    max_steps: int | None = None
    """Optimizer steps to train for; overrides num_epochs when set."""

    # --- optimization ---
    learning_rate: float = 3e-4
    """Peak learning rate, reached at the end of warmup."""
    batch_size: int = 32
    """Sequences per micro-batch (per process) for loaders built from this config."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step: effective batch = batch_size x this x processes."""
    warmup_steps: int = 0
    """Optimizer steps of linear warmup from ~0 to learning_rate."""
    weight_decay: float = 0.01
    """Decoupled weight decay for matrices (never biases, norms or embeddings)."""
    gradient_clip: float | None = 1.0
    """Clip the global gradient norm to this value; null or 0 disables clipping."""
    lr_scheduler_type: str = "cosine"
    """One of cosine, linear, constant, cosine_restarts (all after warmup)."""
    min_lr: float = 0.0
    """Learning rate at the end of the schedule (absolute, not a ratio)."""
    lr_num_cycles: int = 4
    """Cosine cycles for cosine_restarts."""
    optimizer_type: str = "adamw"
    """One of adamw, adam, sgd, adamw_scale."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam-family moment coefficients."""
    eps: float = 1e-8
    """Adam-family denominator epsilon."""
    momentum: float = 0.9
    """SGD momentum."""

    # --- hardware and speed ---
    device: str = "auto"
    """auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."""
    use_mixed_precision: bool = True
    """Allow a faster lower precision when the hardware gains from it (see precision)."""
    precision: str = "auto"
    """auto (decide from the hardware), or force fp32, bf16 or fp16."""
    compile: bool = False
    """torch.compile the model: fused kernels, for a compilation of tens of seconds at start. Pays
    on GPUs and on long CPU runs (1.06-1.08x per step at the tiny Shakespeare shape on 2 cores);
    on a CPU it needs a C++ compiler (g++, or $CXX)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory (when the model supports it)."""
    distributed_strategy: str = "ddp"
    """Under torchrun: ddp (each process holds the whole model) or fsdp (FSDP2: parameters,
    gradients and optimizer state split across processes, for models too big for one device)."""
    num_workers: int = 0
    """DataLoader worker processes for loaders built from this config."""
    seed: int = 1337
    """Seed for model-side randomness (dropout) and data order."""

    # --- evaluation, logging, checkpoints ---
    eval_every: int = 500
    """Evaluate every N optimizer steps (0: only at the end)."""
    eval_batches: int = 50
    """Validation batches per evaluation (bounded so evaluation stays cheap)."""
    log_every: int = 10
    """Write metrics and refresh the progress display every N steps."""
    save_every: int = 1000
    """Save checkpoints/step_N.pt every N steps (0: only at the end)."""
    save_epoch_checkpoints: bool = True
    """Save checkpoints/epoch_N.pt at the end of each epoch."""
    keep_last_checkpoints: int | None = None
    """Keep only the newest K step_N.pt (and epoch_N.pt) files; null (default) keeps all."""
    async_checkpoint: bool = False
    """Write checkpoints on a background thread from a copy in host memory, so training does not
    wait for the disk (for large models; costs one more copy of the model and optimizer state)."""
    output_dir: str = "experiments"
    """Where checkpoints/ and logs/ go."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without improvement; null disables."""
    early_stopping_min_delta: float = 0.0
    """Improvement smaller than this does not count for early stopping."""
    progress_bar: bool = True
    """Show a live progress bar on terminals (plain lines otherwise)."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device for the MFU figure; null: look the device up in a table."""

    save_steps: InitVar[int | None] = None
    eval_steps: InitVar[int | None] = None

    def __post_init__(self, save_steps: int | None, eval_steps: int | None) -> None:
        if save_steps is not None:
            self.save_every = save_steps
        if eval_steps is not None:
            self.eval_every = eval_steps
        hints = field_types(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(getattr(self, f.name), hints[f.name], f"training.{f.name}"))
        self._check_values()

    def _check_values(self) -> None:
        def need(ok: bool, key: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"training.{key} must be {rule}, got {getattr(self, key)!r}")

        need(self.num_epochs >= 1, "num_epochs", ">= 1")
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", ">= 1 (or null)")
        need(self.learning_rate > 0 and math.isfinite(self.learning_rate), "learning_rate", "> 0")
        need(self.batch_size >= 1, "batch_size", ">= 1")
        need(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", ">= 1")
        need(self.warmup_steps >= 0, "warmup_steps", ">= 0")
        need(self.weight_decay >= 0, "weight_decay", ">= 0")
        need(self.gradient_clip is None or self.gradient_clip >= 0, "gradient_clip", ">= 0 (or null)")
        need(self.min_lr >= 0, "min_lr", ">= 0")
        need(self.min_lr <= self.learning_rate, "min_lr", f"<= learning_rate ({self.learning_rate})")
        need(self.lr_num_cycles >= 1, "lr_num_cycles", ">= 1")
        need(all(0 <= b < 1 for b in self.betas), "betas", "two values in [0, 1)")
        need(self.eps > 0, "eps", "> 0")
        need(0 <= self.momentum < 1, "momentum", "in [0, 1)")
        need(self.num_workers >= 0, "num_workers", ">= 0")
        need(self.eval_every >= 0, "eval_every", ">= 0")
        need(self.eval_batches >= 1, "eval_batches", ">= 1")
        need(self.log_every >= 1, "log_every", ">= 1")
        need(self.save_every >= 0, "save_every", ">= 0")
        need(
            self.keep_last_checkpoints is None or self.keep_last_checkpoints >= 1,
            "keep_last_checkpoints",
            ">= 1 (or null to keep all)",
        )
        need(
            self.early_stopping_patience is None or self.early_stopping_patience >= 1,
            "early_stopping_patience",
            ">= 1 (or null)",
        )
        need(self.early_stopping_min_delta >= 0, "early_stopping_min_delta", ">= 0")
        need(self.peak_flops is None or self.peak_flops > 0, "peak_flops", "> 0 (or null)")
        need(bool(self.output_dir), "output_dir", "a folder name")
        for key, choices in (
            ("lr_scheduler_type", SCHEDULERS),
            ("optimizer_type", OPTIMIZERS),
            ("precision", PRECISIONS),
            ("distributed_strategy", STRATEGIES),
        ):
            if getattr(self, key) not in choices:
                from nima.training.validation import suggest

                raise ConfigError(
                    f"training.{key} must be one of {', '.join(choices)}, got "
                    f"{getattr(self, key)!r}{suggest(str(getattr(self, key)), choices)}"
                )
        device = self.device
        if not (device in ("auto", "cpu", "cuda", "mps") or device.startswith("cuda:")):
            raise ConfigError(f"training.device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")

    @property
    def effective_batch_size(self) -> int:
        """Sequences per optimizer step in one process."""
        return self.batch_size * self.gradient_accumulation_steps

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the canonical fields (YAML/JSON/checkpoint friendly)."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        """Build from a dict, with unknown-key suggestions and type checks."""
        return build_section(cls, values, "training", aliases=ALIASES)


def _alias_property(canonical: str) -> property:
    def get(self: TrainingConfig) -> Any:
        return getattr(self, canonical)

    def set_(self: TrainingConfig, value: Any) -> None:
        setattr(self, canonical, value)

    return property(get, set_, doc=f"Same as {canonical}.")


# Reading config.save_steps works too (the dataclass __init__ keeps its own default of None).
for _alias, _canonical in ALIASES.items():
    setattr(TrainingConfig, _alias, _alias_property(_canonical))

__all__ = ["TrainingConfig", "SCHEDULERS", "OPTIMIZERS", "PRECISIONS", "ALIASES"]
