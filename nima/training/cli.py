"""``nima train`` / ``python scripts/train.py``: train a model from a YAML config.

Reads the config (``--config``, or ``configs/cpu_quick.yaml`` with ``--quick_test``), applies
``--section.key=value`` overrides, prepares the data when it is not prepared yet, builds the
model, loaders and :class:`~nima.training.Trainer`, optionally resumes (``--checkpoint``), trains,
and prints a summary (and, for ``--quick_test``, a short sample).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import torch

from nima.checkpoint import newest_checkpoint
from nima.cli import CommandParser
from nima.config import RunConfig, known_keys, parse_overrides, read_yaml, renamed_keys_help, shipped_config
from nima.distributed import cleanup
from nima.errors import CheckpointError, ConfigError, DataError
from nima.files import atomic_write_json
from nima.training.recipe import build_run
from nima.training.results import TrainResults

QUICK_TEST_CONFIG = "cpu_quick.yaml"
"""The --quick_test recipe, configs/cpu_quick.yaml: a small char model that reaches a validation loss
below 2.3 on tiny Shakespeare within about a minute on a 2-core CPU."""
QUICK_TEST_OUTPUT_DIR = "experiments/quick_test"
"""Where --quick_test writes (the docs' experiments/quick_test/checkpoints/best_model.pt); the file's
own output_dir, experiments/cpu_quick, is for --config runs and sweeps of it."""


def build_parser() -> argparse.ArgumentParser:
    keys = known_keys()
    lines = [
        "overrides (any config field, typed like the field):",
        "  --section.key=value  or  --section.key value",
        "  e.g. --training.max_steps=20 --model.n_layers=2 --training.learning_rate 1e-3",
        "",
    ]
    for section, names in keys.items():
        lines += textwrap.wrap(
            ", ".join(names),
            width=100,
            initial_indent=f"  {section}: ",
            subsequent_indent=" " * (len(section) + 4),
        )
    lines.append("")
    for line in renamed_keys_help():  # aliases and moved keys, from their one table
        lines += textwrap.wrap(line, width=100, subsequent_indent="  ")
    parser = CommandParser(
        prog="nima train",
        description="Train a GPT-style model. Data named in the config (data.dataset, data.tokenizer) is "
        "prepared first if needed; checkpoints go to <training.output_dir>/checkpoints and metrics to "
        "<training.output_dir>/logs/metrics.jsonl.",
        epilog="\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config",
        help="YAML config with model:, training: and data: sections (e.g. configs/base_model.yaml)",
    )
    parser.add_argument(
        "--quick_test",
        action="store_true",
        help=f"train the small CPU recipe of configs/{QUICK_TEST_CONFIG} (about a minute) into "
        f"{QUICK_TEST_OUTPUT_DIR} and print a sample",
    )
    parser.add_argument(
        "--checkpoint",
        help="resume from this checkpoint (model, optimizer, schedule, data position and RNG state)",
    )
    parser.add_argument(
        "--init_from",
        help="start from this checkpoint's weights and model config (fine-tuning, e.g. a model from "
        "nima import); the data must use its tokenizer (data.tokenizer: path of its tokenizer.json)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="resume from the newest step_N.pt / epoch_N.pt in <training.output_dir>/checkpoints if "
        "there is one, else start afresh: the same command restarts a preempted or killed job",
    )
    return parser


def load_run_config(
    config_path: str | None, quick_test: bool, overrides: list[str] | dict[str, str]
) -> RunConfig:
    """The run config from a file or the quick recipe, with overrides applied and validated."""
    if quick_test and config_path:
        raise ConfigError(
            "give either --config or --quick_test (the quick test has its own small recipe; "
            "use overrides to change it)"
        )
    if quick_test:
        return quick_test_config(overrides)
    if not config_path:
        raise ConfigError("no config given: use --config configs/base_model.yaml (or --quick_test)")
    return RunConfig.from_yaml(config_path, overrides=overrides)


def quick_test_config(overrides: list[str] | dict[str, str]) -> RunConfig:
    """configs/cpu_quick.yaml writing to experiments/quick_test, then ``overrides``; messages name
    ``--quick_test`` as the source."""
    try:
        raw = read_yaml(shipped_config(QUICK_TEST_CONFIG))
    except ConfigError as err:
        raise ConfigError(f"--quick_test: {err}") from None
    given = parse_overrides(overrides) if isinstance(overrides, list) else overrides
    overrides = {"training.output_dir": QUICK_TEST_OUTPUT_DIR, **given}
    return RunConfig.from_dict(raw, source="--quick_test", overrides=overrides)


def print_sample(model: Any, tokenizer: Any, device: torch.device, max_new_tokens: int = 200) -> str:
    """Generate a short continuation of a newline and print it."""
    try:
        prompt = tokenizer.encode("\n")
    except DataError:
        prompt = []
    prompt = prompt or [0]
    model.eval()
    ids = model.generate(
        torch.tensor([prompt], device=device),
        max_new_tokens=max_new_tokens,
        temperature=0.8,
        top_k=None,
        seed=0,
    )
    text = tokenizer.decode(ids[0, len(prompt) :].tolist())
    print("sample:\n" + text, flush=True)
    return text


def train_from_cli(
    run: RunConfig,
    checkpoint: str | Path | None = None,
    quick_test: bool = False,
    init_from: str | Path | None = None,
    command: str | None = None,
    found_by_resume: bool = False,
) -> TrainResults:
    """Everything ``nima train`` does after parsing: build the run, train, write the results to
    ``<output_dir>/results.json``, print the summary (and, for the quick test, a sample).
    ``command``: the command line, recorded in ``<output_dir>/config.yaml``.
    ``found_by_resume``: ``checkpoint`` came from ``--resume``, not ``--checkpoint PATH`` (the
    hint for continuing a stopped run names the flag the user gave)."""
    started = time.perf_counter()
    try:
        built = build_run(
            run, checkpoint=checkpoint, init_from=init_from, allow_fallback=quick_test, command=command
        )
        trainer = built.trainer
        start_step = trainer.step  # a resumed run starts past 0: the summary counts this session apart
        results = built.train()
        if trainer.is_main:
            write_results(Path(run.training.output_dir) / "results.json", results)
            _print_summary(results, start_step, time.perf_counter() - started)
            if results.get("stop_signal"):
                given = None if found_by_resume or checkpoint is None else str(checkpoint)
                print(continue_hint(results, given), flush=True)
            if quick_test and trainer.checkpointer.sharded:  # generating would need every rank's shards
                print("sample: skipped (the model is sharded); run nima generate on the checkpoint")
            elif quick_test:
                print_sample(trainer.raw_model, built.tokenizer, trainer.device)
        return results
    finally:
        cleanup()


def write_results(path: Path, results: TrainResults) -> None:
    """``results.json``; a failed write (a full disk) is one CheckpointError line: the checkpoints
    are already written."""
    try:
        atomic_write_json(path, dict(results))
    except OSError as err:
        raise CheckpointError(
            f"cannot write {path}: {err.strerror or err}; the run's checkpoints are written "
            f"({results.get('last_checkpoint') or 'none'}); free disk space"
        ) from None


def _print_summary(results: TrainResults, start_step: int, total_s: float) -> None:
    val = results["final_val_loss"]
    best = results["best_val_loss"]
    parts = [
        f"done: {steps_done(results['steps'], start_step)}, {results['tokens']:,} tokens in "
        f"{results['wall_time_s']:.1f}s ({results['train_tokens_per_s']:,.0f} tok/s training)"
    ]
    if val is not None:  # best is None when no validation loss was finite (a diverged last step)
        parts.append(f"val loss {val:.4f}" + (f" (best {best:.4f})" if best is not None else ""))
    parts.append(f"total {total_s:.1f}s")
    print("; ".join(parts), flush=True)
    if results.get("last_checkpoint"):
        print(f"checkpoint: {results['last_checkpoint']}", flush=True)


def steps_done(step: int, start_step: int) -> str:
    """``8 steps``, or for a resumed run ``step 11 (4 steps this session)``: the tokens and
    tokens/s beside it count this session only, so the global step alone would mislead."""
    session = step - start_step
    counted = f"{session} step{'' if session == 1 else 's'}"
    return f"step {step} ({counted} this session)" if start_step else counted


def continue_hint(results: TrainResults, checkpoint_given: str | None) -> str:
    """How to continue a run a signal stopped, in words that work when followed literally.

    ``checkpoint_given``: the ``--checkpoint PATH`` the run started from, if it did; that flag
    cannot be combined with ``--resume``, so the hint says which to replace.
    """
    if checkpoint_given is None:
        return "to continue: run the same command with --resume"
    saved = results.get("last_checkpoint")
    if saved is None:  # stopped before its first step: nothing new was saved
        return "to continue: run the same command again"
    newest = newest_checkpoint(results["output_dir"])
    if newest is not None and newest.resolve() == Path(saved).resolve():  # what --resume takes
        return (
            f"to continue: run the same command with --resume in place of --checkpoint "
            f"{checkpoint_given} (--resume takes the newest checkpoint, {saved})"
        )
    return (
        f"to continue: run the same command with --checkpoint {saved} in place of "
        f"--checkpoint {checkpoint_given}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``nima train``; user errors raise NimaError (printed as one line, exit 2, by nima.cli)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, rest = build_parser().parse_known_args(argv)
    overrides = parse_overrides(rest)
    run = load_run_config(args.config, args.quick_test, overrides)
    checkpoint = args.checkpoint
    if args.resume and checkpoint:
        raise ConfigError("give either --checkpoint PATH or --resume (which finds the newest checkpoint)")
    if args.init_from and checkpoint:
        raise ConfigError("give either --checkpoint (resume a run) or --init_from (start one from weights)")
    if args.resume:
        checkpoint = newest_checkpoint(run.training.output_dir)
        if checkpoint is None:
            print(f"--resume: no checkpoint in {run.training.output_dir}/checkpoints yet; starting afresh")
    command = shlex.join(["nima", "train", *argv])  # recorded in config.yaml, for report.md
    results = train_from_cli(
        run,
        checkpoint=checkpoint,
        quick_test=args.quick_test,
        init_from=args.init_from,
        command=command,
        found_by_resume=args.resume,
    )
    if results.get("stop_signal"):  # preempted: saved, and the exit status says why it stopped
        return 128 + signal.Signals[results["stop_signal"]].value
    return 0
