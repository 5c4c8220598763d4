"""Pictures of runs: training and validation loss, learning rate, throughput and gradient norm
against steps, training tokens or wall time, one run or several overlaid, in one PNG.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global state), so
it works on servers, in threads and inside a training run. matplotlib is optional
(``pip install 'nima[plots]'``); :func:`plots_available` says whether it is installed.
"""

from __future__ import annotations

import importlib.util
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nima.errors import ConfigError
from nima.files import atomic_write_bytes, one_line
from nima.reporting.runs import RunFolder, load_run, series

X_AXES = ("step", "tokens", "time")
PLOT_FILE = "loss.png"
MISSING = "drawing plots needs matplotlib: pip install 'nima[plots]'"


def plots_available() -> bool:
    """Whether matplotlib is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def _x_key(x: str) -> str:
    if x not in X_AXES:
        raise ConfigError(f"--x must be one of {', '.join(X_AXES)}, got {x!r}")
    return "time_s" if x == "time" else x


def _plain_text(text: str) -> str:
    """``text`` as matplotlib shows it literally: a ``$`` would start mathematical notation (and
    an unbalanced one fail the drawing)."""
    return text.replace("$", r"\$")


def _run_names(runs: Sequence[RunFolder]) -> list[str]:
    """Folder names, with their parent where two runs share a name."""
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        names = [f"{run.path.resolve().parent.name}/{run.name}" for run in runs]
    return [_plain_text(name) for name in names]


def _time_scale(runs: Sequence[RunFolder]) -> tuple[float, str]:
    longest = max((max(series(r.records, "loss", "time_s")[0], default=0.0) for r in runs), default=0.0)
    if longest >= 3 * 3600:
        return 3600.0, "training time (hours)"
    if longest >= 10 * 60:
        return 60.0, "training time (minutes)"
    return 1.0, "training time (seconds)"


def plot_runs(
    runs: Sequence[str | Path | RunFolder],
    output: str | Path,
    x: str = "step",
    title: str | None = None,
) -> Path:
    """Draw the runs' curves into ``output`` (a PNG, written atomically); returns its path.

    Four panels: loss (training solid, validation dashed with squares), learning rate, throughput
    (tokens/s) and gradient norm, against ``x``: ``step``, ``tokens`` (training tokens seen) or
    ``time`` (seconds of ``train()``, continued across resumes). Several runs are overlaid, one
    colour each, named by their folder. ConfigError when matplotlib is missing or no run has
    logged anything yet.
    """
    if not plots_available():
        raise ConfigError(MISSING)
    key = _x_key(x)
    folders = _load_logged_runs(runs)
    names = _run_names(folders)
    scale, time_label = _time_scale(folders) if key == "time_s" else (1.0, "")
    x_label = {"step": "optimizer step", "tokens": "training tokens", "time_s": time_label}[key]

    fig, panels = _new_figure()
    colors = [f"C{i % 10}" for i in range(len(folders))]
    several = len(folders) > 1
    for ax, panel_title, y_label, metrics in panels:
        drawn = _draw_curves(ax, metrics, folders, names, colors, key, scale)
        if metrics == ["loss", "val_loss"]:  # say which runs have nothing on this x axis
            missing = _mark_runs_without(ax, metrics, folders, names, colors, key, x)
            drawn = drawn or missing
        _label_panel(ax, panel_title, x_label, y_label, metrics, key)
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        elif len(metrics) > 1 or several:
            ax.legend(fontsize="small", loc="best")
    fig.suptitle(_plain_text(title) if title else _default_title(folders, names), fontsize=13)
    return _save_png(fig, output)


def _load_logged_runs(runs: Sequence[str | Path | RunFolder]) -> list[RunFolder]:
    """The run folders (without their checkpoints); ConfigError when none has logged anything."""
    folders = [r if isinstance(r, RunFolder) else load_run(r, checkpoint=False) for r in runs]
    if not any(run.records for run in folders):
        where = ", ".join(str(run.path) for run in folders)
        raise ConfigError(f"nothing to plot: no logged metrics in {where} (logs/metrics.jsonl) yet")
    return folders


def _new_figure() -> tuple[Any, list[tuple[Any, str, str, list[str]]]]:
    """The figure and its four panels: (axes, title, y label, metrics drawn on it)."""
    # lazy: matplotlib is optional (nima[plots]); plots_available() tells callers beforehand
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8), dpi=100)  # fixed margins: a layout engine would double the time
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.07, top=0.91, wspace=0.2, hspace=0.3)
    panels = [
        (axes[0][0], "Loss", "loss (nats per token)", ["loss", "val_loss"]),
        (axes[0][1], "Learning rate", "learning rate", ["lr"]),
        (axes[1][0], "Throughput", "tokens per second", ["tokens_per_s"]),
        (axes[1][1], "Gradient norm", "gradient norm (before clipping)", ["grad_norm"]),
    ]
    return fig, panels


def _draw_curves(
    ax: Any,
    metrics: list[str],
    folders: Sequence[RunFolder],
    names: Sequence[str],
    colors: Sequence[str],
    key: str,
    scale: float,
) -> bool:
    """Each run's curve of each metric on one panel; whether any was drawn."""
    several = len(folders) > 1
    drawn = False
    for run, name, color in zip(folders, names, colors, strict=True):
        for metric in metrics:
            xs, ys = series(run.records, metric, key)
            if not xs:
                continue
            xs = [v / scale for v in xs]
            validation = metric.startswith("val_")
            what = "validation" if validation else "training"
            label = (f"{name} ({what})" if several else what) if len(metrics) > 1 else name
            ax.plot(
                xs,
                ys,
                color=color,
                linestyle="--" if validation else "-",
                # validation points are squares: a run of a few steps is a dot of each, apart
                marker="s" if validation else ("o" if len(xs) == 1 else None),
                markersize=4,
                linewidth=1.6 if validation else 1.2,
                label=label,
            )
            drawn = True
    return drawn


def _mark_runs_without(
    ax: Any,
    metrics: list[str],
    folders: Sequence[RunFolder],
    names: Sequence[str],
    colors: Sequence[str],
    key: str,
    x: str,
) -> bool:
    """A legend entry (an empty line) for each run with none of ``metrics`` against ``x``; whether
    there was one."""
    marked = False
    for run, name, color in zip(folders, names, colors, strict=True):
        if not any(series(run.records, m, key)[0] for m in metrics):
            ax.plot([], [], color=color, label=f"{name}: no {x} logged")
            marked = True
    return marked


def _label_panel(ax: Any, title: str, x_label: str, y_label: str, metrics: list[str], key: str) -> None:
    """Title, axis labels, grid and the number formats that suit the panel's values."""
    from matplotlib.ticker import EngFormatter  # lazy: matplotlib is optional (nima[plots])

    ax.set_title(title)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(True, alpha=0.3)
    if key == "tokens":
        ax.xaxis.set_major_formatter(EngFormatter())
    if metrics == ["tokens_per_s"]:
        ax.yaxis.set_major_formatter(EngFormatter())
    if metrics == ["lr"]:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))


def _save_png(fig: Any, output: str | Path) -> Path:
    """Render ``fig`` in memory, then write it atomically (a reader never sees half a PNG)."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png")
    except (ValueError, OverflowError) as err:  # ticks for a value near 1e308 (a diverged run's lr)
        raise ConfigError(
            f"cannot draw {output}: a value in logs/metrics.jsonl is too large to plot ({one_line(err)}); "
            "leave that run out"
        ) from None
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(output, buffer.getvalue())


def _default_title(runs: Sequence[RunFolder], names: Sequence[str]) -> str:
    if len(runs) > 1:
        return f"{len(runs)} runs: {', '.join(names)}"
    run = runs[0]
    parts = [f"Run {names[0]}"]
    last = run.records[-1] if run.records else {}
    if _number(last.get("step")):
        parts.append(f"step {last['step']}")
    best = min(run.values("val_loss"), default=None)
    if best is not None:
        parts.append(f"best validation loss {best:.4f}")
    return " | ".join(parts)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["PLOT_FILE", "X_AXES", "plot_runs", "plots_available"]
