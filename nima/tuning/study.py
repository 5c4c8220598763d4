"""The Optuna study of a sweep: where it lives, opening and checking it, which trials count.

A study lives in ``<study_dir>/study.db`` (SQLite) or any Optuna storage URL, so several
processes (or machines, with a database server) can work on one, and running the same sweep
again continues it. What a trial measures is recorded in the study's ``nima_sweep`` user
attribute when it is created (the space, the trial length, the trial config less the searched
and machine-local keys); a sweep that would measure something else is refused. Each trial
records the host and pid that run it, so that trials left running by a process that is gone
(killed) are failed when the study is opened again.

Optuna is an optional extra (``pip install 'nima[sweep]'``): :func:`import_optuna` imports it,
and the functions here take the module as their first argument.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nima.config import RunConfig
from nima.config_fields import suggest
from nima.errors import ConfigError, NimaError
from nima.tuning.plan import Plan
from nima.tuning.space import Dimension, space_to_json

Say = Callable[[str], Any]

STUDY_FILE = "study.db"
PRUNERS = ("median", "percentile:P", "hyperband", "none")
SAMPLERS = ("tpe", "random")
SETTINGS_ATTR = "nima_sweep"
"""The study's user attribute that records what its trials measure."""
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


def import_optuna() -> Any:
    """``optuna``, or a one-line ConfigError saying how to install it."""
    try:
        import optuna  # an optional extra: imported only when a sweep runs
    except ImportError:
        raise ConfigError("nima sweep needs optuna: pip install 'nima[sweep]'") from None
    return optuna


def default_storage(study_dir: Path) -> str:
    """``sqlite:///<study_dir>/study.db`` (an absolute path: the URL works from any folder)."""
    return f"sqlite:///{(study_dir / STUDY_FILE).resolve()}"


def shown_storage(url: str) -> str:
    """The storage as a person reads it: a SQLite file near the working folder by its relative
    path (``experiments/sweep/study.db``, ``../experiments/...`` from a notebooks folder), anything
    else as given."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    path = url[len(prefix) :]
    relative = os.path.relpath(path)
    return relative if relative.split(os.sep)[:2].count("..") < 2 else path


def default_study_name(source: str) -> str:
    """The config file's name (``cpu_quick`` for ``configs/cpu_quick.yaml``), else ``sweep``."""
    return Path(source).stem if source and source.endswith((".yaml", ".yml")) else "sweep"


def open_study(
    optuna: Any,
    url: str,
    name: str,
    plan: Plan,
    *,
    sampler: str | Any,
    seed: int | None,
    pruner: str | Any,
    prune_after: int | None,
    startup_trials: int,
    say: Say,
) -> Any:
    """The study ``name`` in ``url``, created or loaded (and checked against this sweep's settings),
    with its sampler and pruner, and the trials a gone process left running failed."""
    study = _create_or_load(optuna, url, name, plan)
    study.sampler = make_sampler(optuna, sampler, seed, len(study.get_trials(deepcopy=False)))
    study.pruner = make_pruner(optuna, pruner, plan.trial_steps, prune_after, startup_trials)
    fail_stale_trials(optuna, study, say)
    return study


def _create_or_load(optuna: Any, url: str, name: str, plan: Plan) -> Any:
    """The study, its settings recorded when new; ConfigError when it cannot be opened or its
    trials measure something else than this sweep's would."""
    try:
        study = optuna.create_study(study_name=name, storage=url, direction="minimize", load_if_exists=True)
    except Exception as err:  # a bad URL, a missing database driver, an unreachable server
        if isinstance(err, NimaError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot open the study storage {url}: {first}") from None
    if study.direction.name != "MINIMIZE":
        raise ConfigError(f"study {name!r} in {url} maximizes; nima sweep minimizes the validation loss")
    trial_steps = plan.trial_steps
    settings = {
        "space": space_to_json(plan.space),
        "trial_steps": trial_steps,
        "config": _comparable(plan.trial_config({}, plan.study_dir / "trial"), plan.space),
    }
    saved = study.user_attrs.get(SETTINGS_ATTR)
    if saved is None:
        study.set_user_attr(SETTINGS_ATTR, settings)
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
    # Only the keys both know: a config field added since the study began does not refuse it.
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


def make_sampler(optuna: Any, sampler: Any, seed: int | None, existing: int) -> Any:
    """``tpe`` or ``random`` as an Optuna sampler (one given as an object is used as it is)."""
    if not isinstance(sampler, str):
        return sampler
    # A resumed sweep must not draw the first trials' values again: offset the seed.
    seed = None if seed is None else (seed + existing) % 2**32
    if sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")


def make_pruner(
    optuna: Any, pruner: Any, trial_steps: int | None, prune_after: int | None, startup_trials: int
) -> Any:
    """``median``, ``percentile:P``, ``hyperband`` or ``none`` as an Optuna pruner (one given as an
    object is used as it is)."""
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
    hint = suggest(name, ("median", "percentile", "hyperband", "none"))
    raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}{hint}")


def finished_trials(optuna: Any, study: Any, complete_only: bool = False) -> list[Any]:
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


def mark_trial_owner(trial: Any) -> None:
    """Record which process runs ``trial`` (for :func:`fail_stale_trials`)."""
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())


def fail_stale_trials(optuna: Any, study: Any, say: Say) -> None:
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
    """Whether process ``pid`` of this machine still runs (unknown: assumed so)."""
    if not isinstance(pid, int):
        return True  # unknown: leave it
    if pid == os.getpid():
        return False  # this process has not started a trial yet: an earlier one (same pid) left it
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, but belongs to another user
    return True
