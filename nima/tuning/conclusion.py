"""The end of a sweep: what it found (:class:`SweepResult`), the best config, Optuna's plots.

The best trial's complete config goes to ``<study_dir>/best_config.yaml`` (the config's own
length and output folder, ready for ``nima train --config``), the plots to
``optimization_history.png``, ``param_importances.png`` and ``intermediate_values.png``. A plot
(or a best config) that cannot be made is a note saying why, never an error.

matplotlib is an optional extra (``pip install 'nima[sweep]'``), imported only to draw.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nima.config import RunConfig
from nima.files import atomic_write_bytes, atomic_write_text
from nima.tuning.plan import Plan
from nima.tuning.study import finished_trials
from nima.tuning.trials import format_params, short_value

Say = Callable[[str], Any]

BEST_CONFIG = "best_config.yaml"
PLOTS = {
    "optimization_history": "optimization_history.png",
    "param_importances": "param_importances.png",
    "intermediate_values": "intermediate_values.png",
}


@dataclass
class SweepResult:
    """What :func:`~nima.tuning.sweep.run_sweep` did and found."""

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


def conclude(
    optuna: Any,
    study: Any,
    plan: Plan,
    name: str,
    url: str,
    trials: int,
    ran: int,
    stop_signal: str | None,
    plots: bool,
    say: Say,
) -> SweepResult:
    """Count the study's trials, write the best config and the plots, say what was found."""
    states = optuna.trial.TrialState
    finished = finished_trials(optuna, study)
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


def write_best_config(result: SweepResult, plan: Plan, trial_settings: Mapping[str, Any]) -> Path:
    """``<study_dir>/best_config.yaml``: the complete config of the best trial, with a header."""
    path = plan.study_dir / BEST_CONFIG
    steps = trial_settings.get("training.max_steps")
    length = result.best_config.training.max_steps
    header = [
        f"# nima sweep: the best of {result.trials} trials of study {result.study_name!r} ({result.storage})",
        f"# trial {result.best_trial}: val loss {result.best_value:.4f} with",
    ]
    header += [f"#   {key}: {short_value(value)}" for key, value in result.best_params.items()]
    if steps and steps != length:
        header += [f"# (trials trained {steps} steps; this config trains {length or 'its epochs'})"]
    header += [f"# train it: nima train --config {path}"]
    atomic_write_text(path, "\n".join(header) + "\n" + result.best_config.to_yaml())
    return path


def save_plots(optuna: Any, study: Any, folder: Path, notes: list[str]) -> dict[str, Path]:
    """Optuna's optimization history, parameter importances and learning curves as PNG (the Agg
    backend unless pyplot is already in use); a plot that cannot be made is a note instead."""
    try:
        import matplotlib  # an optional extra: a sweep without it has notes instead of plots
    except ImportError:
        notes.append("no plots: matplotlib is not installed (pip install 'nima[sweep]')")
        return {}
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")  # files only; a notebook's own backend (MPLBACKEND) is left alone
    # Optional extras too, and pyplot only once the backend is chosen (importing it fixes one).
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
    from matplotlib.ticker import MaxNLocator  # an optional extra, as in save_plots

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
