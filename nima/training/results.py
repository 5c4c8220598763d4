"""What a training run returns: :class:`TrainResults`, read as attributes or as a mapping."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainResults(Mapping[str, Any]):
    """The outcome of :meth:`Trainer.train`. ``results.steps`` and ``results["steps"]`` are the
    same; ``dict(results)`` is a plain (JSON-ready) dict."""

    final_val_loss: float | None
    """The last validation loss (None without a validation loader)."""
    best_val_loss: float | None
    """The lowest validation loss of the run (the one ``best_model.pt`` holds)."""
    final_train_loss: float | None
    """The training loss at the last logging step."""
    steps: int
    """Optimizer steps done, counting those of earlier runs this one resumed."""
    epochs: float
    """Epochs done, with the current one's fraction."""
    tokens: int
    """Training tokens processed by this call (all processes)."""
    wall_time_s: float
    tokens_per_s: float
    """Over the whole call, evaluation and checkpoints included."""
    train_tokens_per_s: float
    """Over the training steps alone."""
    precision: str
    stopped_early: bool
    stop_reason: str | None
    last_checkpoint: str | None
    """The newest ``step_N.pt`` / ``epoch_N.pt`` written."""
    output_dir: str
    stop_signal: str | None
    """``SIGTERM`` or ``SIGINT`` when a signal stopped the run (it saved; resume from it)."""
    skipped_steps: int = 0
    """Optimizer steps not applied: nan/inf gradients (``on_nonfinite: skip``), fp16 overflows."""

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))
