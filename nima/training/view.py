"""What a callback sees of a run: :class:`RunView`, and the state it reads and asks through.

Callbacks (the loggers, the report, early stopping, the progress line, yours) receive a
:class:`RunView` in every hook, never the Trainer: the step, the epoch, the latest metrics, the
model, where the run writes, and two requests, :meth:`RunView.request_stop` and
:meth:`RunView.request_save`, which the loop honours at the next step boundary (as Hugging Face's
``TrainerControl`` does). Everything else about the run stays the Trainer's business.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from nima.runtime import Runtime
from nima.training.cursor import DataCursor
from nima.training.meter import Meter


@dataclass
class RunState:
    """The run's own moving state: the step count (saved in checkpoints), the latest logged
    metrics, and the callbacks' requests."""

    step: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None
    """Why the run stops (set by a request, a signal or early stopping); None while it goes on."""
    stop_requested: bool = False
    save_requested: bool = False

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


class RunView:
    """The run as a callback sees it. Read-only but for the requests.

    =====================  =============================================================
    ``step``               optimizer steps done
    ``epoch``              epochs completed
    ``total_steps``        steps the run is set to train
    ``metrics``            the latest logged record (loss, lr, ..., val_loss at evaluations)
    ``model``              the model (unwrapped: no DDP/FSDP/compile wrapper)
    ``tokenizer``          the run's tokenizer, or None
    ``device``             the device, ``precision`` its PrecisionChoice
    ``is_main``            rank 0: the process that writes files (others' hooks should not)
    ``world_size``         processes in the job
    ``output_dir``         the run folder
    ``config``             the run's config as a nested dict (what ``config.yaml`` holds)
    ``tokens_seen``        training tokens so far, over all processes
    ``train_seconds``      time spent in training steps so far (not evaluating or saving)
    ``overhead_seconds``   time spent evaluating, saving and in ``overhead()`` blocks
    =====================  =============================================================
    """

    def __init__(
        self,
        state: RunState,
        cursor: DataCursor,
        meter: Meter,
        model: nn.Module,
        tokenizer: Any,
        runtime: Runtime,
        output_dir: Path,
        total_steps: int,
        config: Callable[[], dict[str, Any]],
        sharded: bool = False,
        prepared_path: str | Path | None = None,
    ) -> None:
        self._state, self._cursor, self._meter = state, cursor, meter
        self.model, self.tokenizer = model, tokenizer
        self.device, self.precision = runtime.device, runtime.precision
        self.is_main, self.world_size = runtime.is_main, runtime.dist.world_size
        self.output_dir, self.total_steps = output_dir, total_steps
        self.sharded = sharded
        """Whether FSDP2 shards the model (then it cannot generate a sample)."""
        self.prepared_path = prepared_path
        """The prepared data folder the run trains on, when it is one."""
        self._config = config

    step = property(lambda self: self._state.step, doc="Optimizer steps done.")
    epoch = property(lambda self: self._cursor.epoch, doc="Epochs completed.")
    metrics = property(lambda self: self._state.metrics, doc="The latest logged record.")
    tokens_seen = property(lambda self: self._cursor.tokens_seen, doc="Training tokens so far, all ranks.")
    train_seconds = property(lambda self: self._meter.train_s, doc="Seconds in training steps so far.")
    overhead_seconds = property(
        lambda self: self._meter.overhead_s,
        doc="Seconds spent evaluating, saving and in ``overhead()`` blocks: what tokens/s leaves out.",
    )

    @property
    def config(self) -> dict[str, Any]:
        """The run's config as a nested dict."""
        return self._config()

    @property
    def parameters(self) -> int:
        """The model's parameter count."""
        return sum(p.numel() for p in self.model.parameters())

    def request_stop(self, reason: str | None = None) -> None:
        """Stop at the end of this step (the final evaluation and checkpoint follow); ``reason``
        is what the run says, and ``TrainResults.stop_reason``."""
        self._state.stop_requested = True
        if reason is not None or self._state.stop_reason is None:
            self._state.stop_reason = reason or f"stopped by a callback at step {self.step}"

    def request_save(self) -> None:
        """Save ``step_N.pt`` at the end of this step."""
        self._state.save_requested = True

    @property
    def should_stop(self) -> bool:
        """Whether a stop was asked for; ``run.should_stop = True`` is :meth:`request_stop`."""
        return self._state.stop_requested

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        if value:
            self.request_stop()

    @contextlib.contextmanager
    def overhead(self) -> Iterator[None]:
        """Time spent inside counts as overhead (like evaluating and saving), not as training:
        for a callback's own slow work, so that tokens/s stays true."""
        with self._meter.overhead():
            yield

    def __repr__(self) -> str:
        return f"RunView(step={self.step}, epoch={self.epoch}, total_steps={self.total_steps})"
