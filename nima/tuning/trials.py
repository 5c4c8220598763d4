"""The trials of a sweep: each one a training run, reported to Optuna, judged when it ends.

A trial is a run built exactly as ``nima train`` builds one (:func:`nima.training.recipe.build_run`)
from the plan's trial config with the trial's values, in its own folder ``<study_dir>/trial_<n>/``
(``train.log``, ``logs/metrics.jsonl``, ``results.json``). :class:`OptunaReporter` reports each
validation loss to Optuna and stops training when the pruner says so. A trial that diverges is
pruned; one that does not fit in memory, or whose values make an invalid config, fails with its
reason and the sweep goes on; any other error stops the sweep.
"""

from __future__ import annotations

import contextlib
import gc
import math
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from nima.config import RunConfig
from nima.errors import ConfigError, TrainingDivergedError
from nima.files import atomic_write_json
from nima.training import recipe
from nima.training.callbacks import Callback
from nima.training.view import RunView
from nima.tuning.plan import Plan
from nima.tuning.study import finished_trials, mark_trial_owner, shown_storage

Say = Callable[[str], Any]

# Stop when this many trials in a row fail and none of the study has completed: the config or the
# space is wrong, and more trials would fail the same way.
FAILURES_BEFORE_GIVING_UP = 5


class OptunaReporter(Callback):
    """Reports each validation loss to an Optuna trial and stops training when it should be pruned."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.pruned_at: int | None = None
        self.last: tuple[int, float] | None = None

    def on_evaluate(self, run: RunView, metrics: dict[str, float]) -> None:
        loss = metrics.get("val_loss")
        if loss is None or self.pruned_at is not None:
            return
        step = int(run.step)
        self.trial.report(float(loss), step)
        self.last = (step, float(loss))
        if step < run.total_steps and self.trial.should_prune():  # a finished trial completes
            self.pruned_at = step
            run.request_stop(f"pruned by nima sweep at step {step} (val loss {loss:.4f})")


def run_trials(
    optuna: Any, study: Any, plan: Plan, name: str, url: str, trials: int, say: Say
) -> tuple[int, str | None]:
    """Run trials until the study has ``trials`` finished ones: how many ran, and the signal that
    stopped them early (None when none did). ConfigError when trials keep failing."""
    done = finished_trials(optuna, study)
    say(
        f"study {name!r} in {shown_storage(url)}: {len(done)} of {trials} trials done"
        + (f", {max(0, trials - len(done))} to run" if len(done) < trials else "")
    )
    ran, stop_signal, failures = 0, None, 0
    distributions = {key: dim.distribution() for key, dim in plan.space.items()}
    while len(done) < trials:
        outcome = run_trial(optuna, study, plan, distributions, f"{len(done) + 1}/{trials}", say)
        ran += 1
        stop_signal = outcome.get("stop_signal")
        if stop_signal:
            say(f"interrupted by {stop_signal}: run the same command again to continue the sweep")
            break
        failures = failures + 1 if outcome["state"] == "FAIL" else 0
        if failures >= FAILURES_BEFORE_GIVING_UP and not finished_trials(optuna, study, complete_only=True):
            raise ConfigError(
                f"the last {failures} trials all failed and none has completed (the last: "
                f"{outcome['reason']}); fix the config or the space, then run the same command"
            )
        done = finished_trials(optuna, study)
    return ran, stop_signal


def run_trial(
    optuna: Any, study: Any, plan: Plan, distributions: dict[str, Any], counter: str, say: Say
) -> dict[str, Any]:
    """Ask for a trial, train it, tell the study how it ended; returns its state and reason."""
    states = optuna.trial.TrialState
    trial, params, folder = _start_trial(study, plan, distributions, counter, say)
    started = time.perf_counter()
    try:
        config = plan.trial_config(params, folder)
    except ConfigError as err:
        say(f"trial {trial.number}: failed: invalid config: {err}")
        return _end_trial(study, trial, states.FAIL, f"invalid config: {err}")

    reporter = OptunaReporter(trial)
    try:
        results = _train_trial(config, folder, reporter)
    except TrainingDivergedError as err:
        say(f"trial {trial.number}: pruned: {err}")
        return _end_trial(study, trial, states.PRUNED, f"diverged: {err}")
    except KeyboardInterrupt:
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=states.FAIL)
        raise
    except Exception as err:
        reason = _trial_failure(err)
        if reason is None:  # not something one trial's values cause: stop the sweep
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
            study.tell(trial, state=states.FAIL)
            raise
        say(f"trial {trial.number}: failed: {reason}")
        return _end_trial(study, trial, states.FAIL, reason)
    finally:
        _release_memory()
        if not plan.keep_checkpoints:
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)

    seconds = time.perf_counter() - started
    return _judge_trial(optuna, study, trial, reporter, results, seconds, say)


def _start_trial(
    study: Any, plan: Plan, distributions: dict[str, Any], counter: str, say: Say
) -> tuple[Any, dict[str, Any], Path]:
    """Ask the study for a trial and give it an empty output folder: the trial, its values, its
    folder."""
    trial = study.ask(distributions)
    mark_trial_owner(trial)
    params = dict(trial.params)
    folder = plan.study_dir / f"trial_{trial.number}"
    if folder.exists():  # a trial number is new to this study: whatever is there is stale
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    trial.set_user_attr("output_dir", str(folder))
    say(f"trial {trial.number} [{counter}]: {format_params(params)}")
    return trial, params, folder


def _train_trial(config: RunConfig, folder: Path, reporter: OptunaReporter) -> Any:
    """Train one trial as ``nima train`` does, its output in ``<folder>/train.log``; writes
    ``<folder>/results.json`` and returns the results."""
    with open(folder / "train.log", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
        # recipe.build_run looked up now, not bound at import: a wrapped or patched one is used.
        run = recipe.build_run(config, callbacks=[reporter], say=print)
        try:
            results = run.train()
        finally:
            del run  # free the model before the caller releases memory
    atomic_write_json(folder / "results.json", dict(results))
    return results


def _trial_failure(err: Exception) -> str | None:
    """Why the trial failed, for errors that end only this trial (out of memory, an invalid
    config); None for any other error."""
    memory = _memory_failure(err)
    if memory is None and not isinstance(err, ConfigError):
        return None
    return memory or f"{err}"


def _end_trial(
    study: Any, trial: Any, state: Any, reason: str | None = None, value: float | None = None
) -> dict[str, Any]:
    """Record the trial's reason (when there is one) and tell the study its state (and, for a
    completed trial, its ``value``); returns its state and reason."""
    if reason is not None:
        trial.set_user_attr("reason", reason)
    study.tell(trial, value if state.name == "COMPLETE" else None, state=state)
    return {"state": state.name, "reason": reason}


def _judge_trial(
    optuna: Any, study: Any, trial: Any, reporter: OptunaReporter, results: Any, seconds: float, say: Say
) -> dict[str, Any]:
    """Tell the study how a trial that trained ended: interrupted, pruned, or complete with its
    best validation loss. ConfigError when it has no validation loss."""
    states = optuna.trial.TrialState
    trial.set_user_attr("steps", results.steps)
    trial.set_user_attr("seconds", round(seconds, 1))
    if results.stop_signal:  # Ctrl-C or SIGTERM: the trial did not finish
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=states.FAIL)
        return {"state": "FAIL", "reason": "interrupted", "stop_signal": results.stop_signal}
    if reporter.pruned_at is not None:
        step, loss = reporter.last
        say(f"trial {trial.number}: pruned at step {step}: val loss {loss:.4f} ({seconds:.1f}s)")
        return _end_trial(study, trial, states.PRUNED, f"pruned at step {step}: val loss {loss:.4f}")
    value = results.best_val_loss
    if value is None or not math.isfinite(value):
        study.tell(trial, state=states.FAIL)
        raise ConfigError(
            f"trial {trial.number} has no validation loss to minimize: the data needs a validation split "
            "(data.val_fraction > 0) long enough for one window of model.max_seq_len tokens"
        )
    best = study.best_value if finished_trials(optuna, study, complete_only=True) else math.inf
    mark = " (best so far)" if value < best else ""
    say(f"trial {trial.number}: val loss {value:.4f} after {results.steps} steps ({seconds:.1f}s){mark}")
    return _end_trial(study, trial, states.COMPLETE, value=value)


def format_params(params: Mapping[str, Any]) -> str:
    """``training.learning_rate=0.0012, model.d_model=64``: a trial's values, floats to 3 digits."""
    return ", ".join(f"{key}={short_value(value)}" for key, value in params.items())


def short_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _memory_failure(err: BaseException) -> str | None:
    """The reason, when ``err`` says the trial did not fit in memory."""
    if isinstance(err, torch.OutOfMemoryError):
        return f"out of memory: {str(err).splitlines()[0] if str(err) else 'torch.OutOfMemoryError'}"
    text = str(err)
    if isinstance(err, ConfigError) and ("not fit in memory" in text or "ran out of memory" in text):
        return f"out of memory: {text}"
    return None


def _release_memory() -> None:
    """Free the trial's model and optimizer before the next trial builds its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
