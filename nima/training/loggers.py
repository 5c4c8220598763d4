"""Where a run's figures go besides ``logs/metrics.jsonl``: TensorBoard, Weights & Biases, and the
run folder's own ``loss.png`` and ``report.md``.

``training.report_to: [tensorboard, wandb]`` makes the Trainer add :class:`TensorBoardLogger` and
:class:`WandbLogger`; :class:`RunReport` (the plot and the report) is added to every run
(:func:`monitoring_callbacks`). They are callbacks like any other: the Trainer never imports
TensorBoard, W&B or matplotlib, and a missing package is a one-line ConfigError saying what to
install. Only rank 0 writes; the others' hooks do nothing.

Each logger sends every logged scalar (loss, lr, grad_norm, tokens_per_s, mfu, memory_gib, and at
evaluations val_loss and val_perplexity) at the run's step, the run's config (as hyperparameters),
and at each evaluation a short generated sample (:func:`evaluation_sample`, made once per step
and shared by every logger).
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

from nima.errors import ConfigError
from nima.reporting.sample import SAMPLE_TOKENS, generate_sample, sample_settings
from nima.training.callbacks import Callback, _number
from nima.training.config import TrainingConfig

NOT_SCALARS = ("step", "tokens", "time_s", "val_tokens")
"""Record entries that are not curves of their own (x axes, counts)."""

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


def evaluation_sample(trainer: Any, max_new_tokens: int = SAMPLE_TOKENS) -> str | None:
    """A short sample of the model at the current step (generated once per step and cached, so
    every logger shows the same text); None off rank 0, without a tokenizer, for a sharded model
    or a model without ``generate``. A failure to generate is reported once, never raised."""
    model = getattr(trainer, "raw_model", None)
    if (
        not trainer.is_main
        or getattr(trainer, "tokenizer", None) is None
        or getattr(trainer, "sharded", False)
        or not callable(getattr(model, "generate", None))
    ):
        return None
    cached = _SAMPLES.get(trainer)
    if cached is not None and cached[0] == trainer.step:
        return cached[1]
    try:
        text = generate_sample(model, trainer.tokenizer, trainer.device, max_new_tokens)
    except Exception as err:  # a sample is a nicety: it must never stop a run
        if cached is None or cached[1] is not None:
            print(f"note: no generated sample at step {trainer.step} ({type(err).__name__}: {err})")
        text = None
    _SAMPLES[trainer] = (trainer.step, text)
    return text


def run_config(trainer: Any) -> dict[str, Any]:
    """The run's config as a nested dict: the whole run config when ``nima train`` (the recipe)
    built the run, else the model's and the training config."""
    whole = getattr(trainer, "run_config", None)
    if whole is not None and hasattr(whole, "to_dict"):
        return whole.to_dict()
    out: dict[str, Any] = {}
    model_config = getattr(getattr(trainer, "raw_model", None), "config", None)
    if hasattr(model_config, "to_dict"):
        out["model"] = model_config.to_dict()
    out["training"] = trainer.config.to_dict()
    return out


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
        import yaml
        from torch.utils.tensorboard.summary import hparams

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

    def on_train_begin(self, trainer: Any) -> None:
        if trainer.is_main:
            self.open(self.log_dir or Path(trainer.output_dir) / "logs" / "tensorboard")
            self.log_config(run_config(trainer))

    def on_log(self, trainer: Any, metrics: dict[str, float]) -> None:
        if trainer.is_main:  # validation figures come with on_evaluate (the final one included)
            self.log_metrics({k: v for k, v in metrics.items() if not k.startswith("val_")}, trainer.step)

    def on_evaluate(self, trainer: Any, metrics: dict[str, float]) -> None:
        if not trainer.is_main:
            return
        self.log_metrics(metrics, trainer.step)
        text = evaluation_sample(trainer, self.sample_tokens)
        if text is not None:  # indented: shown as preformatted text
            self.open().add_text(
                "sample", "\n".join("    " + line for line in text.splitlines()), trainer.step
            )

    def on_train_end(self, trainer: Any, results: dict[str, Any]) -> None:
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

    def on_train_begin(self, trainer: Any) -> None:
        if not trainer.is_main:
            return
        import wandb

        log_dir = Path(self.log_dir or Path(trainer.output_dir) / "logs")
        log_dir.mkdir(parents=True, exist_ok=True)
        kwargs = {
            "project": self.project or os.environ.get("WANDB_PROJECT") or "nima",
            "name": self.name or Path(trainer.output_dir).resolve().name,
            "dir": str(log_dir),
            "config": run_config(trainer),
            "mode": wandb_mode(),
            "settings": wandb.Settings(console="off"),  # leave the progress display alone
            **self.init_kwargs,
        }
        self.run = wandb.init(**kwargs)

    def _log(self, values: Mapping[str, Any], step: int) -> None:
        if self.run is not None and values:
            self.run.log(dict(values), step=step)

    def on_log(self, trainer: Any, metrics: dict[str, float]) -> None:
        # tokens and time_s go too: W&B can draw any logged value as the x axis
        values = _scalars({k: v for k, v in metrics.items() if not k.startswith("val_")}, skip=("step",))
        self._log(values, trainer.step)

    def on_evaluate(self, trainer: Any, metrics: dict[str, float]) -> None:
        if self.run is None:
            return
        import wandb

        values: dict[str, Any] = _scalars(metrics, skip=("step",))
        text = evaluation_sample(trainer, self.sample_tokens)
        if text is not None:
            self._samples.append([trainer.step, text])
            values["samples"] = wandb.Table(columns=["step", "sample"], data=[list(r) for r in self._samples])
        self._log(values, trainer.step)

    def on_train_end(self, trainer: Any, results: dict[str, Any]) -> None:
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
        from nima.reporting.plot import plots_available

        self.plot = plots_available() if plot is None else plot
        self.report = report
        self.sample_tokens = sample_tokens
        self._logged = 0
        self._plotted_at = 0
        self._draw_s = 0.0  # the last drawing's seconds
        self._drawing_s = 0.0  # all drawings' seconds

    def _draw(self, trainer: Any) -> None:
        from nima.reporting.plot import PLOT_FILE, plot_runs

        metrics_file = Path(trainer.output_dir) / "logs" / "metrics.jsonl"
        if not self.plot or not metrics_file.is_file():
            return
        started = time.perf_counter()
        with trainer.meter.overhead():
            try:
                plot_runs([trainer.output_dir], Path(trainer.output_dir) / PLOT_FILE)
            except Exception as err:  # a picture must never stop (or fail) a run
                print(f"note: {PLOT_FILE} not drawn ({type(err).__name__}: {err})")
                self.plot = False
        self._draw_s = time.perf_counter() - started
        self._drawing_s += self._draw_s
        self._plotted_at = self._logged

    def on_train_begin(self, trainer: Any) -> None:
        if not trainer.is_main or not self.report:
            return
        from nima.reporting.runs import update_run_info

        device = trainer.device
        if device.type == "cuda":
            device_name = torch.cuda.get_device_name(device)
        else:
            device_name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        prepared = getattr(dataset, "prepared_path", None)
        update_run_info(
            trainer.output_dir,
            started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            device=str(device),
            device_name=device_name,
            precision=trainer.precision.name,
            precision_reason=trainer.precision.reason,
            torch=torch.__version__,
            python=platform.python_version(),
            world_size=trainer.dist.world_size,
            parameters=sum(p.numel() for p in trainer.raw_model.parameters()),
            prepared_path=str(prepared) if prepared is not None else None,
            config=run_config(trainer),
            results=None,  # until this run ends (an earlier run's must not pass for its)
            sample=None,
            sample_step=None,
        )

    def on_log(self, trainer: Any, metrics: dict[str, float]) -> None:
        self._logged += 1
        if trainer.is_main and "val_loss" in metrics:  # an evaluation: the file now has it
            next_drawing = self._draw_s or self.first_drawing_s
            if self._drawing_s + next_drawing <= self.budget * trainer.meter.train_s:
                self._draw(trainer)

    def on_train_end(self, trainer: Any, results: dict[str, Any]) -> None:
        if not trainer.is_main:
            return
        if self._logged > self._plotted_at:
            self._draw(trainer)
        if not self.report:
            return
        from nima.reporting.report import write_report
        from nima.reporting.runs import update_run_info

        text = evaluation_sample(trainer, self.sample_tokens)
        try:
            update_run_info(
                trainer.output_dir,
                results=dict(results),
                sample=text,
                sample_step=trainer.step if text is not None else None,
                sample_settings=sample_settings(self.sample_tokens) if text is not None else None,
            )
            write_report(trainer.output_dir)
        except Exception as err:  # the run itself is done and saved: say so, do not fail it
            why = f"{type(err).__name__}: {err}"
            print(f"note: report.md not written ({why}); try: nima report {trainer.output_dir}")


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
    "run_config",
    "wandb_mode",
]
