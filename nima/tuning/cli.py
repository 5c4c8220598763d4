"""``nima sweep`` / ``python scripts/sweep.py``: search hyperparameters with Optuna.

Reads the config like ``nima train`` (``--config`` plus ``--section.key=value`` overrides), runs
short training trials over the search space (``--space``), pruning the bad ones early, and writes
the best trial's config and Optuna's plots to the study folder. See :mod:`nima.tuning.sweep`.
"""

from __future__ import annotations

import argparse
import signal
import sys

from nima.cli import CommandParser
from nima.config import parse_overrides
from nima.errors import ConfigError
from nima.tuning.space import FORMS
from nima.tuning.sweep import import_optuna, run_sweep

EPILOG = """\
search space (--space, repeatable; a KEY of any config section, its type taken from the field):
  training.learning_rate=log:1e-4..3e-3   log-uniform between the bounds
  training.warmup_steps=0..200            uniform (int or float as the field is; int:/float: say it)
  model.n_layers=int:log:2..8             prefixes combine
  model.d_model=choice:64,128             one of the values
  space.yaml                              a YAML file's sweep: section, e.g.
                                            sweep:
                                              training.learning_rate: {low: 1e-4, high: 3e-3, log: true}
                                              model.d_model: [64, 128]
  A sweep: section in the --config file is read too. Default: the learning rate (log, a decade either
  side of the config's) and training.warmup_steps (0 to a quarter of a trial).

outputs (in --study_dir, default <training.output_dir>/sweep):
  study.db              the Optuna study (SQLite); the same command again continues it
  trial_<n>/            each trial's train.log, logs/metrics.jsonl, results.json
  best_config.yaml      the best trial's complete config: nima train --config <study_dir>/best_config.yaml
  optimization_history.png  param_importances.png  intermediate_values.png

overrides (as for nima train) apply to every trial and to best_config.yaml, e.g.
  --training.batch_size=8 --model.n_layers=2
"""


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="nima sweep",
        description="Search hyperparameters with Optuna: each trial is a short nima train run (same "
        "config, its own folder), pruned early when its validation loss is worse than the other "
        "trials' at the same step. Needs optuna (pip install 'nima[sweep]').",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--config", required=True, help="YAML run config (as for nima train)")
    parser.add_argument(
        "--trials",
        type=int,
        required=True,
        help="how many finished trials the study should have: the same command run again (after an "
        "interruption, or with a larger N) runs only the missing ones",
    )
    parser.add_argument(
        "--space", action="append", default=[], metavar="KEY=SPEC", help=f"a searched key: {FORMS}"
    )
    parser.add_argument("--steps", type=int, help="training steps per trial (default: training.max_steps)")
    parser.add_argument("--study_dir", help="the study's folder (default: <training.output_dir>/sweep)")
    parser.add_argument(
        "--storage",
        help="an Optuna storage URL for processes on several machines (e.g. postgresql://user@host/db; "
        "default: sqlite:///<study_dir>/study.db, which processes on one machine can share)",
    )
    parser.add_argument(
        "--study_name", help="the study's name in the storage (default: the config file's name)"
    )
    parser.add_argument(
        "--pruner",
        default="median",
        help="median (default: stop a trial whose best validation loss is worse than the median of the "
        "completed trials at the same step), percentile:P, hyperband or none",
    )
    parser.add_argument(
        "--prune_after",
        type=int,
        metavar="STEPS",
        help="never prune before this training step (default: a quarter of a trial)",
    )
    parser.add_argument(
        "--startup_trials",
        type=int,
        default=2,
        metavar="N",
        help="never prune until N trials have completed (default 2)",
    )
    parser.add_argument(
        "--sampler", default="tpe", choices=("tpe", "random"), help="Optuna sampler (default tpe)"
    )
    parser.add_argument("--seed", type=int, help="seed of the sampler (default: random)")
    parser.add_argument(
        "--keep_checkpoints",
        action="store_true",
        help="keep each trial's checkpoints/ (default: removed when the trial ends; logs are kept)",
    )
    parser.add_argument("--no_plots", action="store_true", help="do not save the PNG plots")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``nima sweep``; user errors raise NimaError (one line, exit 2, by nima.cli)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, rest = build_parser().parse_known_args(argv)
    overrides = parse_overrides(rest)
    import_optuna()  # the one-line error before anything else
    if not args.no_plots:
        try:
            import matplotlib  # an optional extra, imported only when plots are wanted

            matplotlib.use("Agg")  # files only, never a window
        except ImportError:
            pass  # the sweep says that there are no plots
    result = run_sweep(
        args.config,
        args.trials,
        space=args.space,
        overrides=overrides,
        steps=args.steps,
        study_dir=args.study_dir,
        storage=args.storage,
        study_name=args.study_name,
        pruner=args.pruner,
        prune_after=args.prune_after,
        startup_trials=args.startup_trials,
        sampler=args.sampler,
        seed=args.seed,
        keep_checkpoints=args.keep_checkpoints,
        plots=not args.no_plots,
    )
    if result.stop_signal:
        return 128 + signal.Signals[result.stop_signal].value
    if result.best_trial is None:  # each trial said why above; the sweep found nothing to give
        raise ConfigError(
            f"no trial completed ({result.failed} failed, {result.pruned} pruned, of {result.trials} in the "
            "study), so there is no best config; fix what the trials' lines above say, then run the "
            "same command"
        )
    return 0
