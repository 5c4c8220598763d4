"""Hyperparameter search: ``nima sweep`` and :func:`run_sweep` (Optuna, imported only when a sweep runs).

::

    from nima.tuning import run_sweep

    result = run_sweep("configs/cpu_quick.yaml", trials=8, steps=100,
                       space=["training.learning_rate=log:3e-4..1e-2", "model.d_model=choice:64,128"])
    result.best_params, result.best_config_path, result.plots
"""

from __future__ import annotations

from typing import Any

from nima.tuning.space import Dimension, parse_space

__all__ = ["Dimension", "OptunaReporter", "SweepResult", "parse_space", "run_sweep"]


def __getattr__(name: str) -> Any:
    if name in ("run_sweep", "SweepResult", "OptunaReporter"):
        from nima.tuning import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'nima.tuning' has no attribute {name!r}")
