"""Callbacks: the small protocol the Trainer calls, plus early stopping, metrics and progress.

A callback is any object with some of the ``on_*`` methods of :class:`Callback`; the Trainer
calls the ones it finds, each with a :class:`~nima.training.view.RunView` of the run (step, epoch,
latest metrics, the model) as ``run``. Logging back-ends (TensorBoard, Weights & Biases:
``training.report_to``, in :mod:`nima.training.loggers`) plug in this way, so the trainer never
imports them. To stop training, a callback calls ``run.request_stop(reason)`` (or sets
``run.should_stop = True``); ``run.request_save()`` saves a checkpoint at the end of the step.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from tqdm.auto import tqdm

from nima.errors import ConfigError
from nima.training.view import RunView


class Callback:
    """Hooks the Trainer calls, one per moment; override the ones you need (all are no-ops here).

    ``run`` is the :class:`~nima.training.view.RunView` of the run.
    """

    def on_train_begin(self, run: RunView) -> None:
        """Once, before the first step (of this ``train()``: after a resume, at its step)."""

    def on_step(self, run: RunView) -> None:
        """After every optimizer step (keep it cheap: nothing here may wait for the device)."""

    def on_log(self, run: RunView, metrics: dict[str, float]) -> None:
        """Every record the run logs (to ``logs/metrics.jsonl``): at logging steps (every
        ``log_every`` steps) the training figures, with ``val_loss`` when the step evaluated too;
        after the last step, the final evaluation's record."""

    def on_evaluate(self, run: RunView, metrics: dict[str, float]) -> None:
        """After each evaluation: ``val_loss``, ``val_perplexity``, ``val_tokens``."""

    def on_epoch_end(self, run: RunView, epoch: int, metrics: dict[str, float]) -> None:
        """When an epoch ends: its number and the latest ``train_loss`` / ``val_loss``."""

    def on_save(self, run: RunView, path: Path) -> None:
        """After a checkpoint is written (or handed to the background writer), on rank 0."""

    def on_train_end(self, run: RunView, results: Mapping[str, Any]) -> None:
        """Once, when training ends or stops: the :class:`~nima.training.results.TrainResults`."""


def _number(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


class EarlyStopping(Callback):
    """Stop when the validation loss has not improved by ``min_delta`` for ``patience`` checks.

    Use it alone (``if early_stopping(val_loss): break``) or give it to the Trainer, which calls
    it at every evaluation (``early_stopping_patience`` in the config does that for you).
    """

    def __init__(self, patience: int = 10, min_delta: float = 0.0) -> None:
        if patience < 1 or min_delta < 0:
            raise ConfigError(
                f"EarlyStopping needs patience >= 1 and min_delta >= 0, got {patience}, {min_delta}"
            )
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.bad_checks = 0
        self.stopped = False

    def __call__(self, val_loss: float) -> bool:
        """Record one validation loss; True when training should stop."""
        val_loss = float(_number(val_loss))
        if self.best is None or val_loss < self.best - self.min_delta:
            self.best = val_loss
            self.bad_checks = 0
        else:
            self.bad_checks += 1
        self.stopped = self.bad_checks >= self.patience
        return self.stopped

    def on_evaluate(self, run: RunView, metrics: dict[str, float]) -> None:
        if "val_loss" in metrics and self(metrics["val_loss"]):
            why = f"early stopping: no improvement over {self.best:.4f} in {self.patience} evaluations"
            run.request_stop(why)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_checks": self.bad_checks, "stopped": self.stopped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.bad_checks, self.stopped = state["best"], state["bad_checks"], state["stopped"]


class MetricsTracker(Callback):
    """Keeps every logged metric; with ``log_dir`` also appends each entry to ``<log_dir>/metrics.jsonl``.

    ``log({'loss': 2.1, 'lr': 3e-4}, step=10)`` accepts numbers, 0-d tensors and numpy scalars.
    As a Trainer callback it records every logged record (the Trainer keeps one writing
    ``<output_dir>/logs/metrics.jsonl``).
    """

    def __init__(self, log_dir: str | Path | None = None, filename: str = "metrics.jsonl") -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.history: list[dict[str, Any]] = []
        self._file: IO[str] | None = None
        self.jsonl_path = self.log_dir / filename if self.log_dir is not None else None

    def log(self, metrics: Mapping[str, Any], step: int) -> dict[str, Any]:
        """Record ``metrics`` at ``step`` (and write one JSON line when logging to a folder)."""
        entry = {"step": int(step), **{k: _number(v) for k, v in metrics.items()}}
        self.history.append(entry)
        if self.jsonl_path is not None:
            if self._file is None:
                self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115 (kept open on purpose)
            self._file.write(json.dumps(entry, allow_nan=True) + "\n")
            self._file.flush()
        return entry

    def values(self, name: str) -> list[float]:
        """Every logged value of one metric, in order."""
        return [e[name] for e in self.history if isinstance(e.get(name), (int, float))]

    def get_summary(self) -> dict[str, dict[str, float]]:
        """Per metric: mean, min, max, last and count of its numeric values."""
        names = {k for e in self.history for k in e if k != "step"}
        summary = {}
        for name in sorted(names):
            vals = self.values(name)
            if vals:
                summary[name] = {
                    "mean": sum(vals) / len(vals),
                    "min": min(vals),
                    "max": max(vals),
                    "last": vals[-1],
                    "count": len(vals),
                }
        return summary

    def save(self, path: str | Path) -> Path:
        """Write summary and history as JSON; a relative path goes under ``log_dir`` when set."""
        path = Path(path)
        if not path.is_absolute() and self.log_dir is not None:
            path = self.log_dir / path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"summary": self.get_summary(), "history": self.history}, indent=1))
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def on_log(self, run: RunView, metrics: dict[str, float]) -> None:
        self.log(metrics, run.step)

    def on_train_end(self, run: RunView, results: Mapping[str, Any]) -> None:
        self.close()


def _format_value(name: str, value: Any) -> str:
    value = _number(value)
    if not isinstance(value, (int, float)):
        return f"{name} {value}"
    if name in ("lr", "learning_rate"):
        return f"{name} {value:.2e}"
    if name in ("tokens_per_s", "tok/s"):
        return f"tok/s {value / 1000:.1f}k" if value >= 1000 else f"tok/s {value:.0f}"
    if isinstance(value, int):
        return f"{name} {value}"
    return f"{name} {value:.4f}" if abs(value) < 1e4 else f"{name} {value:.3e}"


def _format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class ProgressPrinter(Callback):
    """Step and epoch progress: a live tqdm bar on a terminal, plain lines otherwise.

    ``metrics_to_track`` picks (and orders) what is shown; ``perplexity`` is derived from
    ``loss`` when not given. ``print_frequency``: show every N steps (and the last one).
    ``epoch_lines``: print a summary line at each epoch's end. As a Trainer callback it moves
    the bar every step, prints at logging steps and epoch ends, and closes at the end. When steps
    are slow, plain lines do not wait for ``print_frequency``: a line with seconds per step and
    the ETA comes ``first_line_s`` after the start, then whenever ``heartbeat_s`` pass without one.
    """

    first_line_s: float = 5.0
    heartbeat_s: float = 30.0

    def __init__(
        self,
        total_steps: int | None = None,
        metrics_to_track: Iterable[str] | None = None,
        print_frequency: int = 10,
        stream: IO[str] | None = None,
        use_bar: bool | None = None,
        initial_step: int = 0,
        epoch_lines: bool = True,
    ) -> None:
        self.total_steps = total_steps
        self.metrics_to_track = list(metrics_to_track) if metrics_to_track is not None else None
        self.print_frequency = max(1, int(print_frequency))
        self.stream = stream if stream is not None else sys.stdout
        is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.use_bar = is_tty if use_bar is None else use_bar
        self._bar = None
        self._start = time.perf_counter()
        self._start_step = initial_step
        self._last_step = initial_step
        self._last_line: float | None = None
        self.epoch_lines = epoch_lines

    def _selected(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        metrics = {k: _number(v) for k, v in metrics.items() if v is not None}
        if "perplexity" not in metrics and isinstance(metrics.get("loss"), (int, float)):
            metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
        names = (
            self.metrics_to_track
            if self.metrics_to_track is not None
            else [
                k
                for k in ("loss", "val_loss", "lr", "grad_norm", "skipped_steps", "tokens_per_s")
                if k in metrics
            ]
        )
        return {k: metrics[k] for k in names if k in metrics}

    def _ensure_bar(self):
        if self._bar is None:
            self._bar = tqdm(
                total=self.total_steps,
                initial=self._start_step,
                file=self.stream,
                dynamic_ncols=True,
                unit="step",
                smoothing=0.1,
            )
        return self._bar

    def advance(self, step: int) -> None:
        """Move the live bar to ``step`` without printing metrics (cheap; for every step)."""
        if self.use_bar:
            bar = self._ensure_bar()
            bar.update(step - bar.n)
        self._last_step = step

    def print_step(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Show ``metrics`` at ``step`` (every ``print_frequency`` steps and at the last step)."""
        last = self.total_steps is not None and step >= self.total_steps
        if step % self.print_frequency and not last:
            self.advance(step)
            return
        shown = self._selected(metrics)
        if self.use_bar:
            self.advance(step)
            self._bar.set_postfix_str(" | ".join(_format_value(k, v) for k, v in shown.items()), refresh=True)
            return
        self._last_step = step
        self._print_line(step, [_format_value(k, v) for k, v in shown.items()])

    def _print_line(self, step: int, parts: list[str], rate: bool = False) -> None:
        """``step N/T | parts | [s/step] | eta``: seconds per step shown when steps are slow
        (a second or more) or ``rate`` asks for it."""
        now = time.perf_counter()
        done = step - self._start_step
        seconds_per_step = (now - self._start) / done if done > 0 else None
        head = [f"step {step}" + (f"/{self.total_steps}" if self.total_steps else "")]
        if seconds_per_step is not None and (rate or seconds_per_step >= 1.0):
            parts = [*parts, f"{seconds_per_step:.2f} s/step"]
        if self.total_steps and seconds_per_step is not None:
            parts = [*parts, f"eta {_format_duration(seconds_per_step * (self.total_steps - step))}"]
        self._last_line = now
        print(" | ".join(head + parts), file=self.stream, flush=True)

    def heartbeat(self, step: int) -> None:
        """A line with seconds per step and the ETA when none was printed for too long (plain
        lines only; a live bar shows both itself)."""
        if self.use_bar:
            return
        last = self.total_steps is not None and step >= self.total_steps
        if step % self.print_frequency == 0 or last:
            return  # the metrics line of this step follows
        since = time.perf_counter() - (self._last_line or self._start)
        if since >= (self.heartbeat_s if self._last_line else self.first_line_s):
            self._print_line(step, [], rate=True)

    def write(self, message: str) -> None:
        """Print a line without breaking the live bar."""
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def print_epoch_end(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """One summary line for a finished epoch."""
        parts = [f"epoch {epoch}"] + [_format_value(k, _number(v)) for k, v in metrics.items()]
        self.write(" | ".join(parts))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_step(self, run: RunView) -> None:
        if self.use_bar:
            self.advance(run.step)
        else:
            self.heartbeat(run.step)

    def on_log(self, run: RunView, metrics: dict[str, float]) -> None:
        if "loss" in metrics:  # a logging step's figures (the final evaluation has its own line)
            self.print_step(run.step, metrics)

    def on_epoch_end(self, run: RunView, epoch: int, metrics: dict[str, float]) -> None:
        if self.epoch_lines:
            self.print_epoch_end(epoch, metrics)

    def on_train_end(self, run: RunView, results: Mapping[str, Any]) -> None:
        self.close()
