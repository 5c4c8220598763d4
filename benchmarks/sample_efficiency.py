#!/usr/bin/env python3
"""Sample efficiency of training recipes: validation loss (FULL split) against tokens trained.

Loss-versus-tokens does not depend on how busy the machine is, so recipes can be compared on a
shared CPU (and several can run side by side, one thread each) where wall-clock times cannot.
Per-token cost is the other half of time-to-quality; measure it with ``--cost`` (interleaved,
paired, medians) or with ``compare_reference.py``.

Each recipe is a config file plus ``--section.key=value`` overrides, separated by ``::``. The
Trainer evaluates on every validation window (``eval_batches`` large enough for the whole split)
every ``--eval_every`` steps, and the table shows tokens, steps and full-split validation loss,
plus the first point at or below ``--target``.

    python benchmarks/sample_efficiency.py --eval_every 200 \\
        "configs/tiny_shakespeare_char.yaml" \\
        "configs/tiny_shakespeare_char.yaml --training.learning_rate=2e-3 --training.batch_size=24"

Data must be prepared beforehand (``nima prepare``) or it is prepared on first use
(``$NIMA_DATA_DIR`` or ``--data_dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import machine

ALL_BATCHES = 1_000_000  # eval_batches large enough that the Trainer evaluates every window


def curve(
    config: str,
    overrides: list[str],
    eval_every: int,
    data_dir: str | None,
    output_dir: str,
    threads: int | None = None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Train one recipe, evaluating on the whole validation split every ``eval_every`` steps."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from nima.config import RunConfig
    from nima.training.recipe import build_run

    forced = [
        f"--training.eval_every={eval_every}",
        f"--training.eval_batches={ALL_BATCHES}",
        "--training.save_every=0",
        "--training.save_epoch_checkpoints=false",
        "--training.progress_bar=false",
        f"--training.output_dir={output_dir}",
    ]
    if data_dir:
        forced.append(f"--data.data_dir={data_dir}")
    if max_steps:
        forced.append(f"--training.max_steps={max_steps}")
    run = RunConfig.from_yaml(config, overrides=[*overrides, *forced])
    points: list[dict[str, float]] = []

    class Record:
        def on_evaluate(self, run: Any, metrics: dict[str, float]) -> None:
            points.append({"step": run.step, "tokens": run.tokens_seen, "val_loss": metrics["val_loss"]})

    import contextlib
    import io

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        built = build_run(run, callbacks=[Record()], say=lambda *a, **k: None)
        results = built.train()
    model = built.trainer.raw_model
    return {
        "recipe": " ".join([config, *overrides]),
        "points": points,
        "wall_s": time.perf_counter() - start,
        "params": sum(p.numel() for p in model.parameters()),
        "final_val_loss": results["final_val_loss"],
    }


def _first_at_or_below(points: list[dict[str, float]], target: float) -> dict[str, float] | None:
    return next((p for p in points if p["val_loss"] <= target), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipes", nargs="+", help='"CONFIG [--section.key=value ...]" (quote each)')
    parser.add_argument("--eval_every", type=int, default=200, help="steps between full evaluations")
    parser.add_argument("--target", type=float, default=1.88, help="validation loss to reach")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per recipe (default 1)")
    parser.add_argument("--max_steps", type=int, default=None, help="override every recipe's max_steps")
    parser.add_argument("--data_dir", default=None, help="prepared data (default $NIMA_DATA_DIR)")
    parser.add_argument("--json", default=None, help="also write all curves to this JSON file")
    args = parser.parse_args(argv)

    print(f"machine: {machine()}", flush=True)  # for the wall times; the curves do not depend on it
    curves = []
    with tempfile.TemporaryDirectory(prefix="nima-sample-eff-") as tmp:
        for i, recipe in enumerate(args.recipes):
            config, *overrides = shlex.split(recipe)
            result = curve(
                config,
                overrides,
                args.eval_every,
                args.data_dir,
                os.path.join(tmp, str(i)),
                threads=args.threads,
                max_steps=args.max_steps,
            )
            curves.append(result)
            hit = _first_at_or_below(result["points"], args.target)
            print(f"\n{result['recipe']}  ({result['params'] / 1e6:.3f}M params, {result['wall_s']:.0f}s)")
            print("  tokens      step  val_loss(full)")
            for p in result["points"]:
                print(f"  {p['tokens']:>9,d} {p['step']:>6d}  {p['val_loss']:.4f}")
            reached = f"{hit['tokens']:,} tokens (step {hit['step']})" if hit else "not reached"
            print(f"  first val_loss <= {args.target}: {reached}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(curves, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
