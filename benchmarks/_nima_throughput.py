"""Child process of ``compare_reference.py``: Nima's Trainer at exactly the reference's shape.

The model, batch, precision and optimizer settings are those of ``reference_gpt.py``
(``REFERENCE_SHAPE`` in ``common.py``: 4 layers, 4 heads, d_model 128, d_ff 512, context 64,
batch 12, gpt2 family with biases and tied embeddings, fp32, AdamW lr 1e-3 with betas
(0.9, 0.99), weight decay 0.1, warmup 100 and cosine to 1e-4, clipping at 1.0). Everything
else stays at ``TrainingConfig``'s defaults, so logging, the progress display, periodic
evaluation and checkpoints all run at their default frequency.

Tokens/s is steady state: wall time from the end of step ``warmup`` (20, like the reference's
untimed warm-up) to the end of ``trainer.train()``; evaluation and checkpoint time are INCLUDED.
``train_tokens_per_s`` is the same window with them left out (the training steps alone), and
``overhead_share`` their share of it. Prints one JSON line.

    python benchmarks/_nima_throughput.py --steps 1000 --data_dir /tmp/nima-bench-data --output_dir /tmp/out
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from common import reference_shape


class SteadyStateTimer:
    """Callback: start the clock after step ``warmup``'s logging, stop it when training ends."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.start_step = 0
        self.eval_s = 0.0
        self.evals = 0
        self.saves = 0
        self.end: float | None = None
        self.overhead_at_start = 0.0
        self.overhead_s = 0.0
        self.faults = 0

    def on_log(self, run: Any, metrics: dict[str, float]) -> None:
        if self.start is None and run.step >= self.warmup and "loss" in metrics:  # a logging step
            self.start, self.start_step = time.perf_counter(), run.step
            self.overhead_at_start = run.overhead_seconds
            self.faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def on_evaluate(self, run: Any, metrics: dict[str, float]) -> None:
        self.evals += 1

    def on_save(self, run: Any, path: Path) -> None:
        self.saves += 1

    def on_train_end(self, run: Any, results: dict[str, Any]) -> None:
        self.end = time.perf_counter()
        self.overhead_s = run.overhead_seconds - self.overhead_at_start
        self.faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.faults


def run(steps: int, warmup: int, data_dir: str, output_dir: str, overrides: list[str]) -> dict[str, Any]:
    """Train ``steps`` steps at the reference shape; returns the steady-state figures."""
    import torch

    from nima.config import RunConfig
    from nima.training.recipe import build_run

    raw = reference_shape()
    raw["training"].update(max_steps=steps, output_dir=output_dir)
    raw["data"]["data_dir"] = data_dir
    run_config = RunConfig.from_dict(raw, source="reference shape", overrides=overrides)
    timer = SteadyStateTimer(warmup)
    built = build_run(run_config, callbacks=[timer])  # what `nima train` builds, same data and model
    trainer = built.trainer
    results = trainer.train()
    if timer.start is None or timer.end is None:
        raise SystemExit(f"--steps {steps} is too short for a warm-up of {warmup} steps")
    timed_steps = results["steps"] - timer.start_step
    tokens = timed_steps * trainer.batch_size * trainer.seq_len
    wall = timer.end - timer.start
    return {
        "tokens_per_s": tokens / wall,
        "timed_steps": timed_steps,
        "timed_s": wall,
        # The same window without its evaluation and checkpoint time: the training steps alone.
        "train_tokens_per_s": tokens / max(wall - timer.overhead_s, 1e-9),
        # Evaluation + checkpoint share of the timed window.
        "overhead_share": timer.overhead_s / wall,
        "evals": timer.evals,
        "saves": timer.saves,
        "val_loss": results["final_val_loss"],
        "precision": results["precision"],
        "threads": torch.get_num_threads(),
        # Minor page faults per timed step (evaluation and checkpoints included): memory the
        # allocator handed back to the system and maps in again.
        "page_faults_per_step": timer.faults / max(1, timed_steps),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps (a multiple of log_every)")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    args, overrides = parser.parse_known_args(argv)
    figures = run(args.steps, args.warmup, args.data_dir, args.output_dir, overrides)
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
