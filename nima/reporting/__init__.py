"""Seeing runs: run folders read back, plots of their curves, and ``report.md``.

``plot_runs([...], "runs.png", x="tokens")`` overlays runs (``nima plot``); ``write_report(run_dir)``
writes a run's one-page report (``nima report``); ``load_run(run_dir)`` reads a run folder's files.
The Trainer keeps ``loss.png`` and ``report.md`` in its output folder through the
:class:`~nima.training.loggers.RunReport` callback; TensorBoard and W&B are
``training.report_to`` (:mod:`nima.training.loggers`).
"""

from nima.reporting.plot import plot_runs, plots_available
from nima.reporting.report import render_report, write_report
from nima.reporting.runs import RunFolder, load_run, read_metrics, write_run_config

__all__ = [
    "RunFolder",
    "load_run",
    "plot_runs",
    "plots_available",
    "read_metrics",
    "render_report",
    "write_report",
    "write_run_config",
]
