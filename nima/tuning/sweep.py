"""``nima sweep``: search hyperparameters with Optuna, one short training run per trial.

Each trial is a run built exactly as ``nima train`` builds one (:func:`nima.training.recipe.build_run`),
with the trial's values applied to the config as overrides and its own output folder
``<study_dir>/trial_<n>/`` (``train.log``, ``logs/metrics.jsonl``, ``results.json``). A Trainer
callback reports the validation loss at each evaluation to Optuna; when the pruner says the trial
is worse than the others were at that step, the callback stops training and the trial is recorded
as pruned. A run whose loss diverges is pruned too, one that does not fit in memory (or whose
values make an invalid config) failed, each with its reason, and the sweep goes on.

The study lives in ``<study_dir>/study.db`` (SQLite; or any Optuna storage URL, shared by several
processes or machines), so running the same command again continues an interrupted sweep: it runs
only the trials still missing. At the end, :func:`run_sweep` writes the best trial's complete config
as ``<study_dir>/best_config.yaml`` (ready for ``nima train --config``) and Optuna's plots as PNG::

    from nima.tuning import run_sweep

    result = run_sweep("configs/cpu_quick.yaml", trials=8, steps=100,
                       space=["training.learning_rate=log:3e-4..1e-2", "training.warmup_steps=0..30"])
    print(result.best_value, result.best_params, result.best_config_path)

Optuna is imported only when a sweep runs (``pip install 'nima[sweep]'``). The parts, in the
order a sweep uses them: :mod:`nima.tuning.plan` (the config, the trials' settings, the space),
:mod:`nima.tuning.study` (the Optuna study), :mod:`nima.tuning.trials` (running and judging each
trial), :mod:`nima.tuning.conclusion` (the best config, the plots, :class:`SweepResult`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nima.config import RunConfig
from nima.errors import ConfigError
from nima.tuning.conclusion import SweepResult, conclude, save_plots
from nima.tuning.plan import default_space, make_plan
from nima.tuning.study import default_storage, default_study_name, import_optuna, open_study
from nima.tuning.trials import OptunaReporter, run_trials

Say = Callable[[str], Any]


def run_sweep(
    config: str | Path | RunConfig | Mapping[str, Any],
    trials: int,
    *,
    space: Any = None,
    overrides: list[str] | Mapping[str, Any] | None = None,
    steps: int | None = None,
    study_dir: str | Path | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    pruner: str | Any = "median",
    prune_after: int | None = None,
    startup_trials: int = 2,
    sampler: str | Any = "tpe",
    seed: int | None = None,
    keep_checkpoints: bool = False,
    plots: bool = True,
    say: Say | None = None,
) -> SweepResult:
    """Search hyperparameters: run trials until the study has ``trials`` finished ones.

    Args:
        config: a YAML config path (a ``sweep:`` section in it adds to the space), a
            :class:`RunConfig`, or a dict of sections.
        trials: how many finished trials the study should have; a study that already has some
            (an interrupted sweep) runs only the missing ones.
        space: ``--space`` values: ``"KEY=SPEC"`` strings, YAML files, ``{key: spec}`` mappings
            (see :mod:`nima.tuning.space`); default: the learning rate (log-uniform, a decade
            either side of the config's) and the warmup.
        overrides: ``["--training.batch_size=8", ...]`` or ``{"training.batch_size": 8}``, as for
            ``nima train``; they apply to the trials and to the best config.
        steps: training steps per trial (default: the config's ``max_steps``); the best config
            keeps the config's own length.
        study_dir: where the study, the trials and the outputs go (default
            ``<training.output_dir>/sweep``).
        storage: an Optuna storage URL (default ``sqlite:///<study_dir>/study.db``).
        study_name: default: the config file's name.
        pruner: ``median``, ``percentile:P``, ``hyperband``, ``none`` or an Optuna pruner.
        prune_after: no pruning before this step (default: a quarter of the trial's steps).
        startup_trials: no pruning until this many trials have completed.
        sampler: ``tpe``, ``random`` or an Optuna sampler; ``seed`` seeds it.
        keep_checkpoints: keep each trial's ``checkpoints/`` (default: removed when it ends).
        plots: save the PNG plots.
        say: where progress lines go (default ``print``).
    """
    optuna = import_optuna()
    say = say or _printer(sys.stdout)
    _check_arguments(trials, steps, startup_trials, prune_after, seed)
    plan = make_plan(config, space, overrides, steps, study_dir, keep_checkpoints, say)
    url = storage or default_storage(plan.study_dir)
    name = study_name or default_study_name(plan.source)

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # nima says what happens, once per trial
    try:
        study = open_study(
            optuna,
            url,
            name,
            plan,
            sampler=sampler,
            seed=seed,
            pruner=pruner,
            prune_after=prune_after,
            startup_trials=startup_trials,
            say=say,
        )
        ran, stop_signal = run_trials(optuna, study, plan, name, url, trials, say)
        return conclude(optuna, study, plan, name, url, trials, ran, stop_signal, plots, say)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _check_arguments(
    trials: Any, steps: Any, startup_trials: int, prune_after: int | None, seed: int | None = None
) -> None:
    """ConfigError for a distributed launch or counts that make no sense, before anything is done."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "nima sweep runs trials in one process; for a parallel sweep start several nima sweep "
            "processes with the same --storage (each runs its own trials)"
        )
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials must be a whole number >= 1, got {trials!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"--steps must be a whole number >= 1, got {steps!r}")
    if startup_trials < 0 or (prune_after is not None and prune_after < 0):
        raise ConfigError("--startup_trials and --prune_after must be >= 0")
    if seed is not None and not 0 <= seed < 2**32:  # what Optuna's samplers (numpy) take
        raise ConfigError(f"--seed must be a whole number from 0 to 2**32 - 1, got {seed}")


def _printer(stream: Any) -> Say:
    def say(message: str) -> None:
        print(message, file=stream, flush=True)

    return say


# OptunaReporter, default_space and save_plots live beside what they serve; named here as before.
__all__ = ["OptunaReporter", "SweepResult", "default_space", "import_optuna", "run_sweep", "save_plots"]
