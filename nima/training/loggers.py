"""Where a run's figures go besides ``logs/metrics.jsonl``: TensorBoard, Weights & Biases, and the
run folder's own ``loss.png`` and ``report.md``.

``training.report_to: [tensorboard, wandb]`` makes the Trainer add :class:`TensorBoardLogger` and
:class:`WandbLogger`; :class:`RunReport` (the plot and the report) is added to every run
(:func:`monitoring_callbacks`). They are callbacks like any other: the Trainer never imports
TensorBoard, W&B or matplotlib, and a missing package is a one-line ConfigError saying what to
install. Only rank 0 writes; the others' hooks do nothing.

Each logger sends every logged scalar (loss, lr, grad_norm, tokens_per_s, mfu, memory_gib, and at
evaluations val_loss, val_perplexity and the ``eval/<task>_acc`` figures of ``training.eval_tasks``)
at the run's step, the run's config (as hyperparameters), and at each evaluation a short generated
sample (:func:`evaluation_sample`, made once per step and shared by every logger).
"""

from __future__ import annotations

import datetime
import netrc
import os
import platform
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from nima.config import TrainingConfig
from nima.errors import ConfigError
from nima.reporting import plot as plotting
from nima.reporting.report import write_report
from nima.reporting.runs import update_run_info
from nima.reporting.sample import SAMPLE_TOKENS, generate_sample, sample_settings
from nima.training.callbacks import Callback, _number
from nima.training.view import RunView

NOT_SCALARS = ("step", "tokens", "time_s", "val_tokens")
"""Record entries that are not curves of their own (x axes, counts)."""
EVALUATION_PREFIXES = ("val_", "eval/")
"""The figures of an evaluation (validation loss, downstream tasks): sent with ``on_evaluate``."""

_SAMPLES: weakref.WeakKeyDictionary[Any, tuple[int, str | None]] = weakref.WeakKeyDictionary()


def _missing(what: str, extra: str) -> ConfigError:
    return ConfigError(f"{what} needs the {extra} package: pip install 'nima[{extra}]'")


def _scalars(metrics: Mapping[str, Any], skip: Iterable[str] = NOT_SCALARS) -> dict[str, float]:
    skip = set(skip)
    out = {}
    for name, value in metrics.items():
        value = _number(value)
        if name not in skip and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def evaluation_sample(run: RunView, max_new_tokens: int = SAMPLE_TOKENS) -> str | None:
    """A short sample of the model at the current step (generated once per step and cached, so
    every logger shows the same text); None off rank 0, without a tokenizer, for a sharded model
    or a model without ``generate``. A failure to generate is reported once, never raised."""
    if (
        not run.is_main
        or run.tokenizer is None
        or run.sharded
        or not callable(getattr(run.model, "generate", None))
    ):
        return None
    cached = _SAMPLES.get(run)
    if cached is not None and cached[0] == run.step:
        return cached[1]
    try:
        text = generate_sample(run.model, run.tokenizer, run.device, max_new_tokens)
    except Exception as err:  # a sample is a nicety: it must never stop a run
        if cached is None or cached[1] is not None:
            print(f"note: no generated sample at step {run.step} ({type(err).__name__}: {err})")
        text = None
    _SAMPLES[run] = (run.step, text)
    return text


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"d_model": 128}}`` -> ``{"model.d_model": 128}``; lists and None become text
    (what TensorBoard's hyperparameters accept)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = "null" if value is None else str(value)
    return out


# ---------------------------------------------------------------------------------- TensorBoard


class TensorBoardLogger(Callback):
    """Scalars, the config (as text and as hyperparameters) and samples for TensorBoard.

    Writes event files to ``log_dir`` (default ``<output_dir>/logs/tensorboard``); view them with
    ``tensorboard --logdir <output_dir>/logs/tensorboard``. ``training.report_to: [tensorboard]``
    adds it; ``Trainer(..., callbacks=[TensorBoardLogger()])`` too. :meth:`log_metrics` works
    without a Trainer.
    """

    def __init__(self, log_dir: str | Path | None = None, sample_tokens: int = SAMPLE_TOKENS) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise _missing("report_to: tensorboard (TensorBoardLogger)", "tensorboard") from None
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.sample_tokens = sample_tokens
        self.writer: Any = None

    def open(self, log_dir: str | Path | None = None) -> Any:
        """The SummaryWriter (created on first use)."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir = Path(log_dir or self.log_dir or "runs")
            self.writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=10)
        return self.writer

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Write every number of ``metrics`` as a scalar at ``step``."""
        writer = self.open()
        for name, value in _scalars(metrics).items():
            writer.add_scalar(name, value, step)

    def log_config(self, config: Mapping[str, Any], metrics: Iterable[str] = ("val_loss", "loss")) -> None:
        """The config as a text card and as hyperparameters (the HParams tab links them to
        ``metrics``)."""
        from torch.utils.tensorboard.summary import hparams  # optional extra: imported when used

        writer = self.open()
        text = yaml.safe_dump(dict(config), sort_keys=False)
        writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)
        experiment, start, end = hparams(flat_config(config), {name: 0.0 for name in metrics})
        file_writer = writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_train_begin(self, run: RunView) -> None:
        if run.is_main:
            self.open(self.log_dir or Path(run.output_dir) / "logs" / "tensorboard")
            self.log_config(run.config)

    def on_log(self, run: RunView, metrics: dict[str, float]) -> None:
        if run.is_main:  # validation figures come with on_evaluate (the final one included)
            self.log_metrics(
                {k: v for k, v in metrics.items() if not k.startswith(EVALUATION_PREFIXES)}, run.step
            )

    def on_evaluate(self, run: RunView, metrics: dict[str, float]) -> None:
        if not run.is_main:
            return
        self.log_metrics(metrics, run.step)
        text = evaluation_sample(run, self.sample_tokens)
        if text is not None:  # indented: shown as preformatted text
            self.open().add_text("sample", "\n".join("    " + line for line in text.splitlines()), run.step)

    def on_train_end(self, run: RunView, results: Mapping[str, Any]) -> None:
        self.close()


# ---------------------------------------------------------------------------------- W&B


def wandb_mode() -> str:
    """``$WANDB_MODE`` when set; else ``online`` when W&B credentials are configured
    (``$WANDB_API_KEY`` or ``wandb login``'s netrc entry), and ``offline`` otherwise: a run never
    waits for a login prompt or a network, and ``wandb sync`` uploads it later."""
    mode = os.environ.get("WANDB_MODE", "").strip()
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        if netrc.netrc().authenticators(host):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


class WandbLogger(Callback):
    """Scalars, the config and samples for Weights & Biases.

    The run's files go to ``<output_dir>/logs/wandb``. The mode follows :func:`wandb_mode`
    (``WANDB_MODE=offline``: everything stays on disk, ``wandb sync <output_dir>/logs/wandb/offline-run-*``
    uploads it). ``project`` defaults to ``$WANDB_PROJECT`` or ``nima``, ``name`` to the output
    folder's name; other ``wandb.init`` arguments pass through ``init_kwargs``.
    """

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        log_dir: str | Path | None = None,
        sample_tokens: int = SAMPLE_TOKENS,
        **init_kwargs: Any,
    ) -> None:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise _missing("report_to: wandb (WandbLogger)", "wandb") from None
        self.project, self.name, self.log_dir = project, name, log_dir
        self.sample_tokens = sample_tokens
        self.init_kwargs = init_kwargs
        self.run: Any = None
        self._samples: list[list[Any]] = []

    def on_train_begin(self, run: RunView) -> None:
        if not run.is_main:
            return
        import wandb

        log_dir = Path(self.log_dir or Path(run.output_dir) / "logs")
        log_dir.mkdir(parents=True, exist_ok=True)
        kwargs = {
            "project": self.project or os.environ.get("WANDB_PROJECT") or "nima",
            "name": self.name or Path(run.output_dir).resolve().name,
            "dir": str(log_dir),
            "config": run.config,
            "mode": wandb_mode(),
            "settings": wandb.Settings(console="off"),  # leave the progress display alone
            **self.init_kwargs,
        }
        self.run = wandb.init(**kwargs)

    def _log(self, values: Mapping[str, Any], step: int) -> None:
        if self.run is not None and values:
            self.run.log(dict(values), step=step)

    def on_log(self, run: RunView, metrics: dict[str, float]) -> None:
        # tokens and time_s go too: W&B can draw any logged value as the x axis
        training = {k: v for k, v in metrics.items() if not k.startswith(EVALUATION_PREFIXES)}
        values = _scalars(training, skip=("step",))
        self._log(values, run.step)

    def on_evaluate(self, run: RunView, metrics: dict[str, float]) -> None:
        if self.run is None:
            return
        import wandb

        values: dict[str, Any] = _scalars(metrics, skip=("step",))
        text = evaluation_sample(run, self.sample_tokens)
        if text is not None:
            self._samples.append([run.step, text])
            values["samples"] = wandb.Table(columns=["step", "sample"], data=[list(r) for r in self._samples])
        self._log(values, run.step)

    def on_train_end(self, run: RunView, results: Mapping[str, Any]) -> None:
        if self.run is None:
            return
        self.run.summary.update({k: v for k, v in _scalars(dict(results), skip=()).items()})
        self.run.finish()
        self.run = None


# ---------------------------------------------------------------------------------- plot + report


class RunReport(Callback):
    """Keeps the run folder's ``loss.png`` (redrawn at each evaluation and at the end, when
    matplotlib is installed) and writes ``report.md`` when training ends or stops; records where
    and how the run ran in ``logs/run_info.json`` (what ``nima report`` rebuilds the page from).

    The plot is drawn from ``logs/metrics.jsonl``, in time counted as evaluation overhead (not in
    tokens/s). At an evaluation it is redrawn only while all drawings so far, the next one
    included, stay within ``budget`` of the time spent in training steps so far (a drawing takes a
    few tenths of a second: a run of minutes sees its curves at every evaluation, a run of seconds
    only at its end).
    ``plot=False`` never draws; ``report=False`` writes no report.
    """

    budget: float = 0.01
    first_drawing_s: float = 0.5
    """What a drawing is assumed to take before one was timed."""

    def __init__(self, plot: bool | None = None, report: bool = True, sample_tokens: int = SAMPLE_TOKENS):
        self.plot = plotting.plots_available() if plot is None else plot
        self.report = report
        self.sample_tokens = sample_tokens
        self._logged = 0
        self._plotted_at = 0
        self._draw_s = 0.0  # the last drawing's seconds
        self._drawing_s = 0.0  # all drawings' seconds

    def _draw(self, run: RunView) -> None:
        metrics_file = Path(run.output_dir) / "logs" / "metrics.jsonl"
        if not self.plot or not metrics_file.is_file():
            return
        started = time.perf_counter()
        with run.overhead():
            try:
                plotting.plot_runs([run.output_dir], Path(run.output_dir) / plotting.PLOT_FILE)
            except Exception as err:  # a picture must never stop (or fail) a run
                print(f"note: {plotting.PLOT_FILE} not drawn ({type(err).__name__}: {err})")
                self.plot = False
        self._draw_s = time.perf_counter() - started
        self._drawing_s += self._draw_s
        self._plotted_at = self._logged

    def on_train_begin(self, run: RunView) -> None:
        if not run.is_main or not self.report:
            return
        device = run.device
        if device.type == "cuda":
            device_name = torch.cuda.get_device_name(device)
        else:
            device_name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        prepared = run.prepared_path
        update_run_info(
            run.output_dir,
            started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            device=str(device),
            device_name=device_name,
            precision=run.precision.name,
            precision_reason=run.precision.reason,
            torch=torch.__version__,
            python=platform.python_version(),
            world_size=run.world_size,
            parameters=run.parameters,
            prepared_path=str(prepared) if prepared is not None else None,
            config=run.config,
            results=None,  # until this run ends (an earlier run's must not pass for its)
            sample=None,
            sample_step=None,
        )

    def on_log(self, run: RunView, metrics: dict[str, float]) -> None:
        self._logged += 1
        if run.is_main and "val_loss" in metrics:  # an evaluation: the file now has it
            next_drawing = self._draw_s or self.first_drawing_s
            if self._drawing_s + next_drawing <= self.budget * run.train_seconds:
                self._draw(run)

    def on_train_end(self, run: RunView, results: Mapping[str, Any]) -> None:
        if not run.is_main:
            return
        if self._logged > self._plotted_at:
            self._draw(run)
        if not self.report:
            return
        text = evaluation_sample(run, self.sample_tokens)
        try:
            update_run_info(
                run.output_dir,
                results=dict(results),
                sample=text,
                sample_step=run.step if text is not None else None,
                sample_settings=sample_settings(self.sample_tokens) if text is not None else None,
            )
            write_report(run.output_dir)
        except Exception as err:  # the run itself is done and saved: say so, do not fail it
            why = f"{type(err).__name__}: {err}"
            print(f"note: report.md not written ({why}); try: nima report {run.output_dir}")


# ---------------------------------------------------------------------------------- for the Trainer

LOGGERS = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}


def monitoring_callbacks(config: TrainingConfig, existing: Iterable[Any] = ()) -> list[Callback]:
    """The callbacks a Trainer adds for ``config``: a logger per ``config.report_to`` entry and
    :class:`RunReport`, each unless ``existing`` already has one of its kind. A logger whose
    package is missing raises ConfigError here, before anything trains."""
    existing = list(existing)
    wanted = [LOGGERS[name] for name in config.report_to] + [RunReport]
    return [cls() for cls in wanted if not any(isinstance(cb, cls) for cb in existing)]


__all__ = [
    "RunReport",
    "TensorBoardLogger",
    "WandbLogger",
    "evaluation_sample",
    "flat_config",
    "monitoring_callbacks",
    "wandb_mode",
]
