"""Hyperparameter search: ``nima sweep`` and :func:`run_sweep` (Optuna, imported only when a sweep runs).

::

    from nima.tuning import run_sweep

    result = run_sweep("configs/cpu_quick.yaml", trials=8, steps=100,
                       space=["training.learning_rate=log:3e-4..1e-2", "model.d_model=choice:64,128"])
    result.best_params, result.best_config_path, result.plots

The modules: :mod:`~nima.tuning.sweep` (:func:`run_sweep`), :mod:`~nima.tuning.space` (the search
space), :mod:`~nima.tuning.plan` (the config and the trials' settings), :mod:`~nima.tuning.study`
(the Optuna study), :mod:`~nima.tuning.trials` (running and judging a trial),
:mod:`~nima.tuning.conclusion` (the best config and the plots), :mod:`~nima.tuning.cli` (``nima sweep``).
"""

from __future__ import annotations

from nima.tuning.space import Dimension, parse_space
from nima.tuning.sweep import OptunaReporter, SweepResult, run_sweep

__all__ = ["Dimension", "OptunaReporter", "SweepResult", "parse_space", "run_sweep"]
