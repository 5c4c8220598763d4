#!/usr/bin/env python3
"""The whole Trainer against the textbook loop, interleaved in one process: the fine-grained pairing.

``compare_reference.py`` pairs whole runs, one process after the other. On a shared virtual
machine a run's speed moves by up to 10% from one process to the next (the reference alone:
23.8-26.8k tokens/s over four runs in a row), so one pair's ratio moves by as much. Here both
sides run in ONE process, in alternating chunks of ``--chunk`` steps (50): Nima's Trainer trains,
and every ``--chunk`` steps a callback runs the same number of steps of the textbook loop. Both
sides see the same machine within seconds of each other, and the noise left is that of a chunk.

- **Nima**: ``trainer.train()`` at the reference shape (``REFERENCE_SHAPE`` of
  ``common.py``: fp32, batch 12 x 64, AdamW, warmup + cosine, clipping at 1.0), with
  logging, progress output, periodic evaluation and checkpoints at their default frequency. Its
  time runs from step ``--warmup`` to the end of ``train()`` (the final evaluation and checkpoint
  included), less the time the callback spends in the reference's chunks; the Trainer is told
  that time is not its own (``meter.add_overhead``), so its tokens/s and the budget that decides
  when ``loss.png`` is redrawn (1% of its training time) see Nima's time alone.
- **reference**: the loop of ``reference_gpt.py`` with its own model class (imported from the
  shared file), data (characters of the same text, 90/10 split, random windows), optimizer,
  schedule and clipping: set the lr, take a batch, forward, ``zero_grad``, backward, clip, step.
  It runs ``--warmup`` untimed steps first, then as many timed steps as Nima's window holds.
  Its throughput leaves out its own evaluation, as ``reference_gpt.py`` does.

The process's allocator settings are Nima's for both sides (at this shape every block is small
and kept either way). Each round is a fresh process; the last line is JSON with the median of the
rounds' ratios (> 1: Nima is faster).

    python benchmarks/interleaved_reference.py                  # 3 rounds of 1000 steps
    python benchmarks/interleaved_reference.py --rounds 5 --chunk 20
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    ROOT,
    load_reference,
    machine,
    prepare_tiny_shakespeare,
    reference_shape,
    summary,
    tiny_shakespeare_text,
    utc_now,
)


class TextbookLoop:
    """``reference_gpt.py``'s training loop, step by step, with its defaults (seed 1337)."""

    def __init__(self, text_path: Path, steps: int, batch: int = 12, ctx: int = 64, lr: float = 1e-3) -> None:
        text = text_path.read_text(encoding="utf-8")
        chars = sorted(set(text))
        table = {c: i for i, c in enumerate(chars)}
        data = torch.tensor([table[c] for c in text], dtype=torch.long)
        self.train = data[: int(0.9 * len(data))]
        self.batch, self.ctx, self.lr, self.steps = batch, ctx, lr, steps
        # Its own random streams, so that Nima's are the same as in a run alone.
        self.generator = torch.Generator().manual_seed(1337)
        with torch.random.fork_rng():
            torch.manual_seed(1337)
            self.model = load_reference().GPT(len(chars), ctx, 128, 4, 4)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.1
        )
        self.step = 0

    def lr_at(self, step: int) -> float:
        warm, lr = 100, self.lr
        if step < warm:
            return lr * (step + 1) / warm
        frac = (step - warm) / max(1, self.steps - warm)
        return lr / 10 + 0.5 * (1 + math.cos(math.pi * min(1.0, frac))) * (lr - lr / 10)

    def run(self, steps: int) -> float:
        """Train ``steps`` steps; returns their wall seconds."""
        start = time.perf_counter()
        for _ in range(steps):
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(self.step)
            ix = torch.randint(len(self.train) - self.ctx - 1, (self.batch,), generator=self.generator)
            x = torch.stack([self.train[i : i + self.ctx] for i in ix])
            y = torch.stack([self.train[i + 1 : i + 1 + self.ctx] for i in ix])
            loss = self.model(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.step += 1
        return time.perf_counter() - start


class Interleave:
    """Callback: Nima's clock from step ``warmup``; every ``chunk`` steps a chunk of the textbook
    loop, whose time is taken out of Nima's; the rest of the reference's steps after the end."""

    def __init__(self, reference: TextbookLoop, warmup: int, chunk: int) -> None:
        self.reference, self.warmup, self.chunk = reference, warmup, chunk
        self.start: float | None = None
        self.start_step = 0
        self.paused_s = 0.0
        self.reference_s = 0.0
        self.reference_steps = 0
        self.nima_s = 0.0
        self.nima_steps = 0
        self.evals = self.saves = 0
        self.overhead_at_start = self.overhead_s = 0.0  # Nima's evaluation and checkpoint seconds

    def _reference_chunk(self, run: Any, steps: int) -> None:
        paused = time.perf_counter()
        # Not Nima's training time: kept out of its tokens/s and of loss.png's drawing budget.
        with run.overhead():
            self.reference_s += self.reference.run(steps)
        self.reference_steps += steps
        self.paused_s += time.perf_counter() - paused

    def on_log(self, run: Any, metrics: dict[str, float]) -> None:
        if "loss" not in metrics:  # the final evaluation's record: not a step
            return
        if self.start is None and run.step >= self.warmup:
            with run.overhead():
                self.reference.run(self.warmup)  # the reference's untimed warm-up
            self.start, self.start_step = time.perf_counter(), run.step
            self.overhead_at_start = run.overhead_seconds
        elif self.start is not None and run.step % self.chunk == 0 and run.step < run.total_steps:
            self._reference_chunk(run, run.step - self.start_step - self.reference_steps)

    def on_evaluate(self, run: Any, metrics: dict[str, float]) -> None:
        self.evals += self.start is not None

    def on_save(self, run: Any, path: Path) -> None:
        self.saves += self.start is not None

    def on_train_end(self, run: Any, results: dict[str, Any]) -> None:
        if self.start is None:
            raise SystemExit(f"the run is too short for a warm-up of {self.warmup} steps")
        self.nima_s = time.perf_counter() - self.start - self.paused_s
        self.nima_steps = run.step - self.start_step
        self.overhead_s = run.overhead_seconds - self.overhead_at_start - self.paused_s
        self._reference_chunk(run, self.nima_steps - self.reference_steps)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One interleaved run in this process; returns its figures."""
    from nima.config import RunConfig
    from nima.training.recipe import build_run

    raw = reference_shape()
    raw["training"].update(max_steps=args.steps, output_dir=args.output_dir)
    raw["data"]["data_dir"] = args.data_dir
    reference = TextbookLoop(Path(args.text), args.steps)
    interleave = Interleave(reference, args.warmup, args.chunk)
    run = build_run(RunConfig.from_dict(raw, source="reference shape"), callbacks=[interleave])
    run.trainer.train()
    nima_ms = 1000 * interleave.nima_s / interleave.nima_steps
    reference_ms = 1000 * interleave.reference_s / interleave.reference_steps
    return {
        "ratio": reference_ms / nima_ms,
        "nima_ms_per_step": nima_ms,
        "reference_ms_per_step": reference_ms,
        "steps": interleave.nima_steps,
        "reference_steps": interleave.reference_steps,
        "evals": interleave.evals,
        "saves": interleave.saves,
        "overhead_share": interleave.overhead_s / interleave.nima_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="processes, one interleaved run each")
    parser.add_argument("--steps", type=int, default=1000, help="Nima's steps per round (default 1000)")
    parser.add_argument("--chunk", type=int, default=50, help="steps per chunk (a multiple of 10)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (a multiple of 10)")
    parser.add_argument("--text", default=None, help="tiny Shakespeare input.txt (default: shared copy)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.text = args.text or str(tiny_shakespeare_text())
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="nima-interleaved-") as tmp:
        data_dir = Path(tmp) / "data"
        prepare_tiny_shakespeare(data_dir, args.text)
        print(f"machine: {machine()}", flush=True)
        ratios = []
        for r in range(args.rounds):
            out = Path(tmp) / f"out_{r}"
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--steps",
                str(args.steps),
                "--chunk",
                str(args.chunk),
                "--warmup",
                str(args.warmup),
                "--text",
                args.text,
                "--data_dir",
                str(data_dir),
                "--output_dir",
                str(out),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                raise SystemExit(f"round {r + 1} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
            figures = json.loads(proc.stdout.strip().splitlines()[-1])
            if figures["reference_steps"] != figures["steps"]:
                raise SystemExit(f"round {r + 1}: the two sides ran different step counts: {figures}")
            ratios.append(figures["ratio"])
            print(
                f"round {r + 1}: reference {figures['reference_ms_per_step']:.2f} ms/step, nima "
                f"{figures['nima_ms_per_step']:.2f} ms/step ({figures['steps']} steps, evals "
                f"{figures['evals']}, saves {figures['saves']}, evaluation + checkpoints "
                f"{100 * figures['overhead_share']:.1f}% of its time) -> {figures['ratio']:.3f}x",
                flush=True,
            )
        print(
            json.dumps(
                {
                    "whole_trainer_vs_textbook": summary(ratios),
                    "chunk": args.chunk,
                    "steps": args.steps,
                    "date": utc_now(),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
