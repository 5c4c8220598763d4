"""TrainingConfig: every knob of a training run (the YAML ``training:`` section).

It lives with the other config code, not in :mod:`nima.training`, so that reading a config never
imports the Trainer; ``from nima.training import TrainingConfig`` works too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from nima.config.eval_tasks import check_eval_tasks
from nima.config_fields import ConfigSection, check_types, suggest

SCHEDULERS = ("cosine", "linear", "constant", "cosine_restarts")
OPTIMIZERS = ("adamw", "adam", "sgd", "adamw_scale")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
REPORTERS = ("tensorboard", "wandb")
STRATEGIES = ("ddp", "fsdp")  # nima.distributed.wrap_model's
ON_NONFINITE = ("stop", "skip")  # what the Trainer does after a step with nan or inf gradients

# batch_size: auto keeps this many sequences per micro-batch's worth of accumulation (the guide's
# batch size), whatever micro-batch fits.
AUTO_BATCH_TARGET = 32


@dataclass
class TrainingConfig(ConfigSection, section="training"):
    """How to train: length, optimizer, schedule, precision, evaluation, checkpoints, logging.

    ``batch_size`` sizes the loaders that ``scripts/train.py`` builds; a :class:`Trainer` given a
    ready-made loader uses that loader's batches (and warns when the two disagree).
    ``save_steps``/``eval_steps`` are accepted as spellings of ``save_every``/``eval_every``
    (keyword arguments, attributes, YAML keys); gradient checkpointing is
    ``model.gradient_checkpointing`` and loader workers are ``data.num_workers``
    (:data:`nima.config_fields.ALIASES` and :data:`~nima.config_fields.MOVED`).
    """

    # --- length ---
    num_epochs: int = 1
    """Passes over the training data (ignored when max_steps is set)."""
    max_steps: int | None = None
    """Optimizer steps to train for; overrides num_epochs when set."""

    # --- optimization ---
    learning_rate: float = 3e-4
    """Peak learning rate, reached at the end of warmup."""
    batch_size: int | Literal["auto"] = 32
    """Sequences per micro-batch (per process) for loaders built from this config. ``auto``
    (``nima train``): the largest micro-batch that fits in memory, measured with real steps, with
    gradient accumulation raised to keep 32 x gradient_accumulation_steps sequences per step."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step: effective batch = batch_size x this x processes."""
    warmup_steps: int = 0
    """Optimizer steps of linear warmup from ~0 to learning_rate."""
    weight_decay: float = 0.01
    """Decoupled weight decay for matrices (never biases, norms or embeddings)."""
    gradient_clip: float | None = 1.0
    """Clip the global gradient norm to this value; null or 0 disables clipping."""
    on_nonfinite: str = "stop"
    """A step whose gradients are nan or inf is never applied; then stop (the run ends with
    "training diverged" at the next logging step, saving nothing) or skip (go on; skipped steps
    are logged as skipped_steps)."""
    max_consecutive_skips: int = 10
    """With on_nonfinite: skip, stop after this many non-finite steps in a row."""
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
    on GPUs and on long CPU runs of small models (1.06-1.08x per step at the tiny Shakespeare
    shape on 2 cores; 0.94-1.0x at the base config's 6 x 512, context 1024, bf16); on a CPU it needs a
    C++ compiler (g++, or $CXX)."""
    distributed_strategy: str = "ddp"
    """Under torchrun: ddp (each process holds the whole model) or fsdp (FSDP2: parameters,
    gradients and optimizer state split across processes, for models too big for one device)."""
    seed: int = 1337
    """Seed for model-side randomness (dropout) and of the data order (window offsets, shuffling)."""

    # --- evaluation, logging, checkpoints ---
    eval_every: int = 500
    """Evaluate every N optimizer steps (0: only at the end)."""
    eval_batches: int = 50
    """Validation batches per evaluation (bounded so evaluation stays cheap)."""
    eval_tasks: list[dict[str, Any] | str] = field(default_factory=list)
    """Downstream tasks scored at every evaluation, after the validation loss: a list of
    {task: hellaswag | mc | completion, data: FILE, limit: N, name: NAME} (limit default 200; see
    docs/evaluation.md), logged as eval/<name>_acc and eval/<name>_acc_norm."""
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
    report_to: list[str] | str = field(default_factory=list)
    """Where else the logged metrics go, besides logs/metrics.jsonl: a list of tensorboard
    (<output_dir>/logs/tensorboard) and wandb (W&B, offline unless $WANDB_MODE=online or you are
    logged in); on the command line --training.report_to=tensorboard,wandb."""

    def __post_init__(self) -> None:
        need = check_types(self)
        need(">= 1", "num_epochs", "max_steps", "gradient_accumulation_steps", "lr_num_cycles")
        if self.batch_size != "auto":
            need(">= 1", "batch_size")
        need(">= 1", "eval_batches", "log_every", "keep_last_checkpoints", "early_stopping_patience")
        need(">= 1", "max_consecutive_skips")
        need(">= 0", "warmup_steps", "weight_decay", "gradient_clip", "min_lr", "eval_every", "save_every")
        need(">= 0", "early_stopping_min_delta")
        need("> 0", "learning_rate", "eps", "peak_flops")
        need("in [0, 1)", "momentum")
        # numpy's and torch's generators take seeds from 0 to 2**63 - 1 (a rank is added to it)
        need.that(0 <= self.seed < 2**62, "seed", "a whole number >= 0 and below 2**62")
        need.that(self.min_lr <= self.learning_rate, "min_lr", f"<= learning_rate ({self.learning_rate})")
        need.that(all(0 <= b < 1 for b in self.betas), "betas", "two values in [0, 1)")
        need.that(bool(self.output_dir), "output_dir", "a folder name")
        need.one_of("lr_scheduler_type", SCHEDULERS)
        need.one_of("optimizer_type", OPTIMIZERS)
        need.one_of("precision", PRECISIONS)
        need.one_of("on_nonfinite", ON_NONFINITE)
        need.one_of("distributed_strategy", STRATEGIES)
        if isinstance(self.report_to, str):  # report_to: wandb (or "tensorboard,wandb")
            self.report_to = [name.strip() for name in self.report_to.split(",") if name.strip()]
        self.report_to = list(dict.fromkeys(self.report_to))
        for name in self.report_to:
            rule = f"a list of {', '.join(REPORTERS)}"
            need.that(name in REPORTERS, "report_to", rule, suggest(name, REPORTERS))
        self.eval_tasks = check_eval_tasks(self.eval_tasks)
        device = self.device
        need.that(
            device in ("auto", "cpu", "cuda", "mps") or device.startswith("cuda:"),
            "device",
            "auto, cpu, cuda, cuda:N or mps",
        )

    @property
    def effective_batch_size(self) -> int:
        """Sequences per optimizer step in one process (``batch_size: auto`` counts as 32)."""
        micro = AUTO_BATCH_TARGET if self.batch_size == "auto" else self.batch_size
        return micro * self.gradient_accumulation_steps

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the canonical fields (YAML/JSON/checkpoint friendly)."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out


__all__ = [
    "ON_NONFINITE",
    "OPTIMIZERS",
    "PRECISIONS",
    "REPORTERS",
    "SCHEDULERS",
    "STRATEGIES",
    "TrainingConfig",
]
