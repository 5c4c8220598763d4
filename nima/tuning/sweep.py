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

Optuna is imported only here, when a sweep runs (``pip install 'nima[sweep]'``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nima.config import RunConfig, parse_overrides
from nima.errors import ConfigError, NimaError, TrainingDivergedError
from nima.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from nima.training.callbacks import Callback
from nima.tuning.space import Dimension, parse_space, space_to_json

Say = Callable[[str], Any]

PRUNERS = ("median", "percentile:P", "hyperband", "none")
SAMPLERS = ("tpe", "random")
STUDY_FILE = "study.db"
BEST_CONFIG = "best_config.yaml"
PLOTS = {
    "optimization_history": "optimization_history.png",
    "param_importances": "param_importances.png",
    "intermediate_values": "intermediate_values.png",
}
# Keys that may differ between the processes or machines working on one study (or between two
# runs of it), without changing what a trial measures.
LOCAL_KEYS = (
    "training.output_dir",
    "training.device",
    "training.save_every",
    "training.save_epoch_checkpoints",
    "training.keep_last_checkpoints",
    "training.async_checkpoint",
    "training.progress_bar",
    "data.data_dir",
    "data.num_workers",
    "data.pin_memory",
)
# Stop when this many trials in a row fail and none of the study has completed: the config or the
# space is wrong, and more trials would fail the same way.
FAILURES_BEFORE_GIVING_UP = 5


def import_optuna() -> Any:
    """``optuna``, or a one-line ConfigError saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("nima sweep needs optuna: pip install 'nima[sweep]'") from None
    return optuna


# ---------------------------------------------------------------------------------------- result


@dataclass
class SweepResult:
    """What :func:`run_sweep` did and found."""

    study_name: str
    storage: str
    study_dir: Path
    trials: int
    """Finished trials of the study (complete, pruned or failed; interrupted ones do not count)."""
    ran: int
    """Trials run by this call."""
    complete: int
    pruned: int
    failed: int
    best_trial: int | None = None
    """The number of the best completed trial (None when no trial completed)."""
    best_value: float | None = None
    """Its best validation loss."""
    best_params: dict[str, Any] = field(default_factory=dict)
    """Its searched values, by config key (``{"training.learning_rate": 0.0012, ...}``)."""
    best_config: RunConfig | None = None
    """The full config with the best values (the original length and output folder)."""
    best_config_path: Path | None = None
    plots: dict[str, Path] = field(default_factory=dict)
    """``optimization_history``, ``param_importances``, ``intermediate_values`` -> PNG path (those made)."""
    notes: list[str] = field(default_factory=list)
    """Why a plot (or the best config) could not be made."""
    stop_signal: str | None = None
    """``SIGINT`` / ``SIGTERM`` when a signal stopped the sweep (run the same command to continue)."""
    study: Any = field(default=None, repr=False)
    """The ``optuna.Study`` (for more analysis: ``result.study.trials_dataframe()``)."""


# ---------------------------------------------------------------------------------------- the callback


class OptunaReporter(Callback):
    """Reports each validation loss to an Optuna trial and stops training when it should be pruned."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.pruned_at: int | None = None
        self.last: tuple[int, float] | None = None

    def on_evaluate(self, trainer: Any, metrics: dict[str, float]) -> None:
        loss = metrics.get("val_loss")
        if loss is None or self.pruned_at is not None:
            return
        step = int(trainer.step)
        self.trial.report(float(loss), step)
        self.last = (step, float(loss))
        if step < trainer.total_steps and self.trial.should_prune():  # a finished trial completes
            self.pruned_at = step
            trainer.should_stop = True  # the loop stops before the next step
            trainer.stop_reason = f"pruned by nima sweep at step {step} (val loss {loss:.4f})"


# ---------------------------------------------------------------------------------------- the sweep


@dataclass
class _Plan:
    """Everything a trial needs, decided once per sweep."""

    raw: dict[str, Any]
    source: str
    overrides: dict[str, Any]
    trial_settings: dict[str, Any]
    space: dict[str, Dimension]
    study_dir: Path
    keep_checkpoints: bool

    def trial_config(self, params: Mapping[str, Any], output_dir: Path) -> RunConfig:
        """The config of one trial: the base config, the trial settings, the trial's values."""
        extra = {**self.trial_settings, "training.output_dir": str(output_dir)}
        return RunConfig.from_dict(
            self.raw, source=self.source, overrides={**self.overrides, **extra, **params}
        )

    def best_config(self, params: Mapping[str, Any]) -> RunConfig:
        """The base config (its own length and output folder) with ``params``."""
        return RunConfig.from_dict(self.raw, source=self.source, overrides={**self.overrides, **params})


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
    _check_arguments(trials, steps, startup_trials, prune_after)
    plan = _make_plan(config, space, overrides, steps, study_dir, keep_checkpoints, say)
    trial_steps = plan.trial_settings.get("training.max_steps")
    url = storage or f"sqlite:///{(plan.study_dir / STUDY_FILE).resolve()}"
    source = plan.source
    name = study_name or (Path(source).stem if source and source.endswith((".yaml", ".yml")) else "sweep")

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = _open_study(optuna, url, name, plan, trial_steps)
        study.sampler = _make_sampler(optuna, sampler, seed, len(study.get_trials(deepcopy=False)))
        study.pruner = _make_pruner(optuna, pruner, trial_steps, prune_after, startup_trials)
        _fail_stale_trials(optuna, study, say)
        ran, stop_signal = _run_trials(optuna, study, plan, name, url, trials, say)
        return _conclude(optuna, study, plan, name, url, trials, ran, stop_signal, plots, say)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _check_arguments(trials: Any, steps: Any, startup_trials: int, prune_after: int | None) -> None:
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


def _make_plan(
    config: str | Path | RunConfig | Mapping[str, Any],
    space: Any,
    overrides: list[str] | Mapping[str, Any] | None,
    steps: int | None,
    study_dir: str | Path | None,
    keep_checkpoints: bool,
    say: Say,
) -> _Plan:
    """Load the config, decide the trials' settings and the space (and say them), and make the
    study folder."""
    raw, source, file_space = load_config(config)
    parsed = _parse_overrides(overrides)
    base = RunConfig.from_dict(raw, source=source, overrides=parsed)
    trial_settings, setting_notes = _trial_settings(base, parsed, steps, keep_checkpoints)
    trial_steps = trial_settings.get("training.max_steps")
    dims = {**parse_space(file_space, where=f"{source} sweep:"), **parse_space(space)}
    default = not dims
    if default:
        dims = default_space(base, trial_steps)
    check_space_against_config(raw, source, parsed, dims)
    spelled = ", ".join(f"{k}={d.describe()}" for k, d in dims.items())
    say(f"space{' (default)' if default else ''}: {spelled}")
    for note in setting_notes:
        say(note)
    replaced = [k for k in parsed if _canonical(k) in dims]
    if replaced:
        say(f"note: {', '.join('--' + k for k in replaced)} replaced by the searched values")

    folder = Path(study_dir) if study_dir else Path(base.training.output_dir) / "sweep"
    folder.mkdir(parents=True, exist_ok=True)
    return _Plan(raw, source, parsed, trial_settings, dims, folder, keep_checkpoints)


def _run_trials(
    optuna: Any, study: Any, plan: _Plan, name: str, url: str, trials: int, say: Say
) -> tuple[int, str | None]:
    """Run trials until the study has ``trials`` finished ones: how many ran, and the signal that
    stopped them early (None when none did). ConfigError when trials keep failing."""
    done = _finished(optuna, study)
    say(
        f"study {name!r} in {url}: {len(done)} of {trials} trials done"
        + (f", {max(0, trials - len(done))} to run" if len(done) < trials else "")
    )
    ran, stop_signal, failures = 0, None, 0
    distributions = {key: dim.distribution() for key, dim in plan.space.items()}
    while len(done) < trials:
        outcome = _run_trial(optuna, study, plan, distributions, f"{len(done) + 1}/{trials}", say)
        ran += 1
        stop_signal = outcome.get("stop_signal")
        if stop_signal:
            say(f"interrupted by {stop_signal}: run the same command again to continue the sweep")
            break
        failures = failures + 1 if outcome["state"] == "FAIL" else 0
        if failures >= FAILURES_BEFORE_GIVING_UP and not _finished(optuna, study, complete_only=True):
            raise ConfigError(
                f"the last {failures} trials all failed and none has completed (the last: "
                f"{outcome['reason']}); fix the config or the space, then run the same command"
            )
        done = _finished(optuna, study)
    return ran, stop_signal


def load_config(config: str | Path | RunConfig | Mapping[str, Any]) -> tuple[dict[str, Any], str, Any]:
    """The config as raw sections (what a YAML file holds), its source, and its ``sweep:`` section."""
    if isinstance(config, RunConfig):
        # The fields as set (a model's d_ff: null stays null, so that a searched d_model changes it).
        sections = {"model": config.model, "training": config.training, "data": config.data}
        raw = {
            name: {f.name: getattr(sec, f.name) for f in dataclasses.fields(sec)}
            for name, sec in sections.items()
        }
        return _plain(raw), config.source or "config", None
    if isinstance(config, Mapping):
        raw = dict(config)
        return raw, "config", raw.pop("sweep", None)
    path = Path(config)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        loaded = None
    if not isinstance(loaded, dict):  # missing, unreadable or odd: RunConfig says what is wrong
        RunConfig.from_yaml(path)
        loaded = {}
    file_space = loaded.pop("sweep", None)
    return loaded, str(path), file_space


def _plain(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        s: {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()} for s, values in raw.items()
    }


def _parse_overrides(overrides: list[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    return dict(parse_overrides(list(overrides)))


def _canonical(dotted: str) -> str:
    from nima.tuning.space import field_of

    try:
        return field_of(dotted, "override")[0]
    except ConfigError:
        return dotted


def _trial_settings(
    base: RunConfig, overrides: Mapping[str, Any], steps: int | None, keep_checkpoints: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """What trials change besides the searched values: their length; an evaluation interval that
    gives the pruner something to compare (when the config's would evaluate only at the end); no
    periodic checkpoints unless they are kept."""
    training, notes = base.training, []
    settings: dict[str, Any] = {}
    if not keep_checkpoints:  # removed when the trial ends: writing step_N / epoch_N is wasted time
        settings.update({"training.save_every": 0, "training.save_epoch_checkpoints": False})
    trial_steps = steps if steps is not None else training.max_steps
    if trial_steps is None:
        notes.append(
            f"note: each trial trains the config's {training.num_epochs} epoch(s) (training.max_steps is not "
            "set); --steps S makes trials short"
        )
        return settings, notes
    settings["training.max_steps"] = trial_steps
    chosen = {_canonical(k) for k in overrides}
    every = training.eval_every
    if "training.eval_every" not in chosen and (every == 0 or trial_steps // every < 2):
        settings["training.eval_every"] = max(1, trial_steps // 4)
        notes.append(
            f"trials evaluate every {settings['training.eval_every']} steps (training.eval_every={every} "
            f"would evaluate {trial_steps}-step trials only at the end, leaving nothing to prune on; "
            "--training.eval_every=N sets it)"
        )
    return settings, notes


def default_space(base: RunConfig, trial_steps: int | None) -> dict[str, Dimension]:
    """The learning rate, log-uniform a decade either side of the config's (not below min_lr),
    and the warmup, from none to a quarter of a trial."""
    training = base.training
    lr = training.learning_rate
    low = max(lr / 10, training.min_lr)
    high_warmup = max(1, trial_steps // 4) if trial_steps else max(10, 2 * training.warmup_steps)
    return {
        "training.learning_rate": Dimension("training.learning_rate", "float", low, lr * 10, log=True),
        "training.warmup_steps": Dimension("training.warmup_steps", "int", 0, high_warmup),
    }


def check_space_against_config(
    raw: dict[str, Any], source: str, overrides: Mapping[str, Any], space: Mapping[str, Dimension]
) -> None:
    """Each end of each range (each choice) must make a valid config with the others' values; one
    that clashes only with another searched key is left to the trials (they fail, with the reason)."""
    for key, dim in space.items():
        for value in dim.edges():
            try:
                RunConfig.from_dict(raw, source=source, overrides={**overrides, key: value})
            except ConfigError as err:
                message = str(err)
                others = [k for k in space if k != key and (k in message or k.split(".")[1] in message)]
                if others:
                    continue
                raise ConfigError(
                    f"--space {key}={dim.describe()}: {key}={value} makes an invalid config: {message} "
                    "(change the range, or the setting it clashes with)"
                ) from None


# ---------------------------------------------------------------------------------------- study


def _open_study(optuna: Any, url: str, name: str, plan: _Plan, trial_steps: int | None) -> Any:
    try:
        study = optuna.create_study(study_name=name, storage=url, direction="minimize", load_if_exists=True)
    except Exception as err:  # a bad URL, a missing database driver, an unreachable server
        if isinstance(err, NimaError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot open the study storage {url}: {first}") from None
    if study.direction.name != "MINIMIZE":
        raise ConfigError(f"study {name!r} in {url} maximizes; nima sweep minimizes the validation loss")
    settings = {
        "space": space_to_json(plan.space),
        "trial_steps": trial_steps,
        "config": _comparable(plan.trial_config({}, plan.study_dir / "trial"), plan.space),
    }
    saved = study.user_attrs.get("nima_sweep")
    if saved is None:
        study.set_user_attr("nima_sweep", settings)
        return study
    how = f"study {name!r} in {url}"
    fix = "run it with the same settings, or start a new study (another --study_dir or --study_name)"
    if saved.get("space") != settings["space"]:
        was = ", ".join(f"{k}={v}" for k, v in saved.get("space", {}).items())
        raise ConfigError(f"{how} searches another space ({was}); {fix}")
    if saved.get("trial_steps") != trial_steps:
        raise ConfigError(
            f"{how} trains {saved.get('trial_steps')} steps per trial, not {trial_steps}; {fix}"
        )
    for key, value in settings["config"].items():
        if key in saved.get("config", {}) and saved["config"][key] != value:
            raise ConfigError(f"{how} was started with {key}={saved['config'][key]!r}, now {value!r}; {fix}")
    return study


def _comparable(config: RunConfig, space: Mapping[str, Dimension]) -> dict[str, Any]:
    """The trial config as ``{section.key: value}`` (JSON values), less searched and local keys."""
    flat = {
        f"{section}.{key}": value
        for section, values in config.to_dict().items()
        for key, value in values.items()
    }
    skip = set(space) | set(LOCAL_KEYS)
    return {k: json.loads(json.dumps(v)) for k, v in flat.items() if k not in skip}


def _make_sampler(optuna: Any, sampler: Any, seed: int | None, existing: int) -> Any:
    if not isinstance(sampler, str):
        return sampler
    # A resumed sweep must not draw the first trials' values again: offset the seed.
    seed = None if seed is None else seed + existing
    if sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")


def _make_pruner(
    optuna: Any, pruner: Any, trial_steps: int | None, prune_after: int | None, startup_trials: int
) -> Any:
    if not isinstance(pruner, str):
        return pruner
    after = prune_after if prune_after is not None else (trial_steps // 4 if trial_steps else 0)
    name, _, arg = pruner.strip().lower().partition(":")
    if name == "median" and not arg:
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=after)
    if name == "percentile":
        try:
            percentile = float(arg)
        except ValueError:
            percentile = -1.0
        if not 0 < percentile < 100:
            raise ConfigError(
                f"--pruner percentile:P needs a percentile P between 0 and 100 (e.g. percentile:25: prune "
                f"trials worse than the best quarter), got {pruner!r}"
            )
        return optuna.pruners.PercentilePruner(
            percentile, n_startup_trials=startup_trials, n_warmup_steps=after
        )
    if name == "hyperband" and not arg:
        return optuna.pruners.HyperbandPruner(min_resource=max(1, after), max_resource=trial_steps or "auto")
    if name == "none" and not arg:
        return optuna.pruners.NopPruner()
    from nima.config_fields import suggest

    hint = suggest(name, ("median", "percentile", "hyperband", "none"))
    raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}{hint}")


def _finished(optuna: Any, study: Any, complete_only: bool = False) -> list[Any]:
    """Trials that count towards the target: complete, pruned, and failed with a reason (not
    interrupted ones)."""
    states = optuna.trial.TrialState
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state == states.COMPLETE or (
            not complete_only
            and (t.state == states.PRUNED or (t.state == states.FAIL and "reason" in t.user_attrs))
        ):
            out.append(t)
    return out


def _fail_stale_trials(optuna: Any, study: Any, say: Say) -> None:
    """Trials left running by a process of this machine that is gone (killed) are failed: they
    will never finish, and the sweep runs others instead."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("host") != host or _alive(t.user_attrs.get("pid")):
            continue
        with contextlib.suppress(Exception):  # another process may have done it just now
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            say(f"trial {t.number}: left unfinished by a process that ended; marked failed, not counted")


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: leave it
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


# ---------------------------------------------------------------------------------------- one trial


def _run_trial(
    optuna: Any, study: Any, plan: _Plan, distributions: dict[str, Any], counter: str, say: Say
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
    study: Any, plan: _Plan, distributions: dict[str, Any], counter: str, say: Say
) -> tuple[Any, dict[str, Any], Path]:
    """Ask the study for a trial and give it an empty output folder: the trial, its values, its
    folder."""
    trial = study.ask(distributions)
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
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
    from nima.training.recipe import build_run

    with open(folder / "train.log", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
        run = build_run(config, callbacks=[reporter], say=print)
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
    best = study.best_value if _finished(optuna, study, complete_only=True) else math.inf
    mark = " (best so far)" if value < best else ""
    say(f"trial {trial.number}: val loss {value:.4f} after {results.steps} steps ({seconds:.1f}s){mark}")
    return _end_trial(study, trial, states.COMPLETE, value=value)


def format_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={_short(value)}" for key, value in params.items())


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _memory_failure(err: BaseException) -> str | None:
    """The reason, when ``err`` says the trial did not fit in memory."""
    import torch

    if isinstance(err, torch.OutOfMemoryError):
        return f"out of memory: {str(err).splitlines()[0] if str(err) else 'torch.OutOfMemoryError'}"
    text = str(err)
    if isinstance(err, ConfigError) and ("not fit in memory" in text or "ran out of memory" in text):
        return f"out of memory: {text}"
    return None


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------- the end


def _conclude(
    optuna: Any,
    study: Any,
    plan: _Plan,
    name: str,
    url: str,
    trials: int,
    ran: int,
    stop_signal: str | None,
    plots: bool,
    say: Say,
) -> SweepResult:
    states = optuna.trial.TrialState
    finished = _finished(optuna, study)
    count = {s: sum(t.state == s for t in finished) for s in (states.COMPLETE, states.PRUNED, states.FAIL)}
    result = SweepResult(
        study_name=name,
        storage=url,
        study_dir=plan.study_dir,
        trials=len(finished),
        ran=ran,
        complete=count[states.COMPLETE],
        pruned=count[states.PRUNED],
        failed=count[states.FAIL],
        stop_signal=stop_signal,
        study=study,
    )
    say(
        f"{len(finished)} of {trials} trials finished: {result.complete} complete, {result.pruned} pruned, "
        f"{result.failed} failed"
    )
    if result.complete:
        best = study.best_trial
        result.best_trial, result.best_value = best.number, float(best.value)
        result.best_params = dict(best.params)
        result.best_config = plan.best_config(best.params)
        result.best_config_path = write_best_config(result, plan, trial_settings=plan.trial_settings)
        say(f"best: trial {best.number}, val loss {best.value:.4f}: {format_params(best.params)}")
        say(f"best config: {result.best_config_path} (nima train --config {result.best_config_path})")
    else:
        result.notes.append("no trial completed, so there is no best config")
        reasons = [t.user_attrs.get("reason") for t in finished if t.user_attrs.get("reason")]
        if reasons:
            result.notes[-1] += f" (the last failure: {reasons[-1]})"
    if plots:
        result.plots = save_plots(optuna, study, plan.study_dir, result.notes)
        if result.plots:
            say("plots: " + ", ".join(str(p) for p in result.plots.values()))
    for note in result.notes:
        say(f"note: {note}")
    return result


def write_best_config(result: SweepResult, plan: _Plan, trial_settings: Mapping[str, Any]) -> Path:
    """``<study_dir>/best_config.yaml``: the complete config of the best trial, with a header."""
    path = plan.study_dir / BEST_CONFIG
    steps = trial_settings.get("training.max_steps")
    length = result.best_config.training.max_steps
    header = [
        f"# nima sweep: the best of {result.trials} trials of study {result.study_name!r} ({result.storage})",
        f"# trial {result.best_trial}: val loss {result.best_value:.4f} with",
    ]
    header += [f"#   {key}: {_short(value)}" for key, value in result.best_params.items()]
    if steps and steps != length:
        header += [f"# (trials trained {steps} steps; this config trains {length or 'its epochs'})"]
    header += [f"# train it: nima train --config {path}"]
    atomic_write_text(path, "\n".join(header) + "\n" + result.best_config.to_yaml())
    return path


def save_plots(optuna: Any, study: Any, folder: Path, notes: list[str]) -> dict[str, Path]:
    """Optuna's optimization history, parameter importances and learning curves as PNG (the Agg
    backend unless pyplot is already in use); a plot that cannot be made is a note instead."""
    try:
        import matplotlib
    except ImportError:
        notes.append("no plots: matplotlib is not installed (pip install 'nima[sweep]')")
        return {}
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")  # files only; a notebook's own backend (MPLBACKEND) is left alone
    import io

    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    states = optuna.trial.TrialState
    complete = study.get_trials(deepcopy=False, states=(states.COMPLETE,))
    searched = {name for t in complete for name in t.params}
    curves = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED))
    curves = [t for t in curves if t.intermediate_values]
    wanted: list[tuple[str, Callable[[], Any]]] = []
    if complete:
        wanted.append(("optimization_history", lambda: vis.plot_optimization_history(study)))
    else:
        notes.append("no optimization history plot: no trial completed")
    if len(complete) >= 2 and len(searched) >= 2:
        wanted.append(("param_importances", lambda: vis.plot_param_importances(study)))
    else:
        why = "fewer than 2 completed trials" if len(complete) < 2 else "only one searched parameter"
        notes.append(f"no parameter importance plot: {why}")
    if curves:
        wanted.append(("intermediate_values", lambda: vis.plot_intermediate_values(study)))
    saved: dict[str, Path] = {}
    for key, draw in wanted:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning, and matplotlib's layout notes
                axes = draw()
                figure = _figure_of(axes)
                figure.set_size_inches(8, 5)
                if key == "intermediate_values":
                    _label_curves(figure, study)
                elif key == "optimization_history":
                    _label_history(figure)
                else:
                    _label_importances(figure, len(complete))
                figure.tight_layout()
                buffer = io.BytesIO()
                figure.savefig(buffer, format="png", dpi=110)
                plt.close(figure)
        except Exception as err:  # an importance that cannot be computed, an odd study: a note
            notes.append(f"no {key.replace('_', ' ')} plot: {type(err).__name__}: {err}")
            continue
        saved[key] = atomic_write_bytes(folder / PLOTS[key], buffer.getvalue())
    return saved


def _figure_of(axes: Any) -> Any:
    if hasattr(axes, "figure"):
        return axes.figure
    flat = getattr(axes, "flat", None)
    return next(iter(flat)).figure if flat is not None else axes


def _label_history(figure: Any) -> None:
    """The history plot: whole trial numbers, what the value is, and the best so far as steps
    (it changes only at a trial; Optuna draws it as a line sloping between trials)."""
    from matplotlib.ticker import MaxNLocator

    ax = figure.axes[0]
    for line in ax.get_lines():
        if line.get_label() == "Best Value":
            line.set_drawstyle("steps-post")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation loss")
    ax.set_title("Optimization history (completed trials)")
    names = {"Objective Value": "trial (its best val loss)", "Best Value": "best so far"}
    handles, labels = ax.get_legend_handles_labels()
    relabelled = [names.get(label, label) for label in labels]
    ax.legend(handles, relabelled, bbox_to_anchor=(1.02, 1.0), loc="upper left", fontsize="small")


def _label_importances(figure: Any, completed: int) -> None:
    ax = figure.axes[0]
    for loc in ("left", "center", "right"):
        ax.set_title("", loc=loc)
    ax.set_title(f"Hyperparameter importances (fANOVA over {completed} completed trials)")
    ax.set_ylabel("")
    if ax.get_legend() is not None:
        ax.get_legend().remove()


def _label_curves(figure: Any, study: Any) -> None:
    """The learning-curve plot: axis names, and pruned trials dashed and named so."""
    ax = figure.axes[0]
    ax.set_xlabel("training step")
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss during each trial")
    states = {t.number: t.state.name.lower() for t in study.get_trials(deepcopy=False)}
    for line in ax.get_lines():
        number = line.get_label().removeprefix("Trial").strip()
        if not number.isdigit():
            continue
        state = states.get(int(number), "")
        if state == "pruned":  # dashed, its last point a cross: where the pruner stopped it
            line.set_linestyle("--")
            xs, ys = line.get_data()
            ax.plot(xs[-1:], ys[-1:], marker="x", markersize=9, color=line.get_color(), label="_")
        line.set_label(f"trial {number}" + (f" ({state})" if state in ("pruned", "fail") else ""))
    ax.legend(fontsize="small", loc="upper right")


def _printer(stream: Any) -> Say:
    def say(message: str) -> None:
        print(message, file=stream, flush=True)

    return say


__all__ = ["OptunaReporter", "SweepResult", "default_space", "import_optuna", "run_sweep", "save_plots"]
