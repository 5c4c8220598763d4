#!/usr/bin/env python3
"""Nima against the textbook PyTorch loop (``reference_gpt.py``), side by side, on this machine.

Two comparisons, each run as paired rounds in alternating order (A B, B A, A B, ...) so that
both sides see the same machine conditions; every figure is a median of per-pair ratios with
its min-max.

(a) Throughput, goal >= 1.15x: Nima's Trainer at exactly the reference's shape (4 layers, 4 heads,
    d_model 128, d_ff 512, context 64, batch 12, gpt2 family with biases and tied embeddings,
    fp32, AdamW lr 1e-3), with logging, progress output, periodic evaluation and checkpoints at
    their default frequency, timed in steady state after a 20-step warm-up, evaluation and
    checkpoint time included (``benchmarks/_nima_throughput.py``) -- against the reference's
    tokens/s (``reference_gpt.py --steps N``).

(b) Time to quality, goal <= 0.5x: ``python scripts/train.py --config <recipe>`` wall clock from
    process launch to exit (start-up, compilation, periodic evaluation and checkpoints included;
    data prepared beforehand), then the final checkpoint is scored on the FULL validation split
    with ``scripts/evaluate.py`` (reported separately; it must be <= 1.88) -- against the wall
    clock of ``reference_gpt.py --steps 2000 --eval-every 500`` from launch to exit.

The last printed line holds both ratios. Examples:

    python benchmarks/compare_reference.py                      # both, defaults (about 10 min)
    python benchmarks/compare_reference.py --skip_quality --rounds 5
    python benchmarks/compare_reference.py --quick              # seconds: a smoke test of every path

On a machine shared with other work, ``--omp_passive`` sets OMP_WAIT_POLICY=PASSIVE for both
sides: busy-waiting OpenMP threads otherwise slow both down many times over when the cores are
oversubscribed. The reference is found at ``$NIMA_SHARED_DIR/bench`` or ``<repo>/../shared/bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, find_reference, find_text, fmt, machine, script, summary, utc_now

DEFAULT_RECIPE = "configs/tiny_shakespeare_char_fast.yaml"
TARGET_LOSS = 1.88
# What the throughput comparison holds equal: --nima_option may not change these.
FIXED_BY_REFERENCE = (
    "model.",
    "data.",
    "training.batch_size",
    "training.gradient_accumulation_steps",
    "training.precision",
    "training.use_mixed_precision",
    "training.max_steps",
)


# ---------------------------------------------------------------------------------- data


def prepare_data(text: Path, data_dir: Path) -> Path:
    """Prepare char-level tiny Shakespeare from ``text`` (before any timing); returns its folder."""
    os.environ.setdefault("NIMA_DATA_MIRROR", str(text.parent.parent))
    from nima.data import prepare

    return prepare("tiny_shakespeare", "char", data_dir=data_dir).path


# ---------------------------------------------------------------------------------- children


def _run(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, str]:
    """Run ``cmd`` from the checkout root; returns (wall seconds launch-to-exit, stdout)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return wall, proc.stdout


def _last_json(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            return json.loads(line)
    raise SystemExit(f"no JSON line in output:\n{stdout[-2000:]}")


class Sides:
    """Builds and runs the commands of both sides with one environment."""

    def __init__(self, args: argparse.Namespace, work: Path, data_dir: Path) -> None:
        self.args = args
        self.work = work
        self.data_dir = data_dir
        self.reference = find_reference(args.reference)
        self.text = find_text(args.text)
        self.python = sys.executable
        env = dict(os.environ)
        env["NIMA_DATA_DIR"] = str(data_dir)
        env.setdefault("NIMA_DATA_MIRROR", str(self.text.parent.parent))
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        if args.omp_passive:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        self.env = env
        self.count = 0

    def _log(self, name: str) -> Path:
        self.count += 1
        return self.work / f"{self.count:02d}_{name}.log"

    def reference_throughput(self, steps: int) -> float:
        cmd = [self.python, str(self.reference), "--steps", str(steps), "--text", str(self.text)]
        _, out = _run(cmd, self.env, self._log("reference_throughput"))
        return float(_last_json(out)["tokens_per_s"])

    def nima_throughput(self, steps: int, overrides: list[str] | None = None) -> dict[str, Any]:
        out_dir = self.work / f"nima_throughput_{self.count}"
        cmd = [
            self.python,
            str(script("_nima_throughput")),
            "--steps",
            str(steps),
            "--data_dir",
            str(self.data_dir),
            "--output_dir",
            str(out_dir),
            *(overrides or []),
        ]
        _, out = _run(cmd, self.env, self._log("nima_throughput"))
        return _last_json(out)

    def reference_quality(self, steps: int, eval_every: int) -> dict[str, Any]:
        cmd = [
            self.python,
            str(self.reference),
            "--steps",
            str(steps),
            "--eval-every",
            str(eval_every),
            "--text",
            str(self.text),
        ]
        wall, out = _run(cmd, self.env, self._log("reference_quality"))
        return {"wall_s": wall, "val_loss": _last_json(out)["val_loss"]}

    def nima_quality(self, recipe: str, overrides: list[str]) -> dict[str, Any]:
        out_dir = self.work / f"nima_quality_{self.count}"
        cmd = [
            self.python,
            "scripts/train.py",
            "--config",
            recipe,
            f"--training.output_dir={out_dir}",
            *overrides,
        ]
        wall, _ = _run(cmd, self.env, self._log("nima_quality"))
        trained = read_train_results(out_dir)
        checkpoints = sorted(
            (out_dir / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1])
        )
        if not checkpoints:
            raise SystemExit(f"no step checkpoint in {out_dir}/checkpoints")
        final = checkpoints[-1]
        eval_cmd = [
            self.python,
            "scripts/evaluate.py",
            "--checkpoint",
            str(final),
            "--json",
            "--data_dir",
            str(self.data_dir),
        ]
        eval_wall, out = _run(eval_cmd, self.env, self._log("nima_full_val"))
        report = json.loads(out[out.index("{") :])
        return {
            "wall_s": wall,
            "full_val_loss": float(report["loss"]),
            "val_tokens": int(report["tokens"]),
            "eval_wall_s": eval_wall,
            "checkpoint": final.name,
            "overhead_share": overhead_share(trained),
        }


def read_train_results(output_dir: Path) -> dict[str, float]:
    """The figures that ``nima train`` wrote to ``<output_dir>/results.json`` (its TrainResults)."""
    path = Path(output_dir) / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"no readable results.json from the training run: {err}") from None
    return {
        "steps": int(results["steps"]),
        "tokens": int(results["tokens"]),
        "wall_s": float(results["wall_time_s"]),
        "train_tokens_per_s": float(results["train_tokens_per_s"]),
    }


def overhead_share(trained: dict[str, float]) -> float:
    """Share of the Trainer's wall time spent in evaluation and checkpoints (not training steps)."""
    training_s = trained["tokens"] / trained["train_tokens_per_s"]
    return max(0.0, 1.0 - training_s / trained["wall_s"])


# ---------------------------------------------------------------------------------- rounds


def throughput(sides: Sides, rounds: int, steps: int, options: list[str]) -> dict[str, Any]:
    extra_options = f" (Nima with {' '.join(options)})" if options else ""
    print(
        f"== (a) throughput: {rounds} paired rounds of {steps} steps, alternating order{extra_options}",
        flush=True,
    )
    ratios, loop_ratios, ref_tps, nima_tps, shares = [], [], [], [], []
    for r in range(rounds):
        order = ("reference", "nima") if r % 2 == 0 else ("nima", "reference")
        got: dict[str, float] = {}
        for side in order:
            if side == "reference":
                got[side] = sides.reference_throughput(steps)
            else:
                figures = sides.nima_throughput(steps, options)
                got[side] = figures["tokens_per_s"]
                extra = (
                    f"evals {figures['evals']}, saves {figures['saves']}, evaluation + checkpoints "
                    f"{100 * figures['overhead_share']:.1f}% of its time, "
                    f"{figures.get('page_faults_per_step', float('nan')):.0f} page faults per step"
                )
                shares.append(figures["overhead_share"])
                loop_only = figures["train_tokens_per_s"]
        ratios.append(got["nima"] / got["reference"])
        # The same pair with Nima's evaluation and checkpoint time left out, as the reference's is.
        loop_ratios.append(loop_only / got["reference"])
        ref_tps.append(got["reference"])
        nima_tps.append(got["nima"])
        print(
            f"  round {r + 1} ({order[0]} first): reference {got['reference']:,.0f} tok/s, "
            f"nima {got['nima']:,.0f} tok/s ({extra}) -> {ratios[-1]:.3f}x",
            flush=True,
        )
    result = {
        "ratio": summary(ratios),
        "loop_only_ratio": summary(loop_ratios),
        "reference_tps": summary(ref_tps),
        "nima_tps": summary(nima_tps),
        "overhead_share": summary(shares),
    }
    print(
        f"  throughput ratio nima/reference: {fmt(result['ratio'])}; evaluation + checkpoints "
        f"{100 * result['overhead_share']['median']:.1f}% of Nima's time (median); training steps "
        f"only: {fmt(result['loop_only_ratio'])}",
        flush=True,
    )
    return result


def quality(
    sides: Sides, rounds: int, recipe: str, overrides: list[str], ref_steps: int, ref_eval: int
) -> dict[str, Any]:
    print(
        f"== (b) time to quality: {rounds} paired rounds; nima `scripts/train.py --config {recipe}"
        f"{' ' + ' '.join(overrides) if overrides else ''}` vs `reference_gpt.py --steps {ref_steps} "
        f"--eval-every {ref_eval}`",
        flush=True,
    )
    ratios, losses, ref_walls, nima_walls, shares = [], [], [], [], []
    for r in range(rounds):
        order = ("reference", "nima") if r % 2 == 0 else ("nima", "reference")
        got: dict[str, dict[str, Any]] = {}
        for side in order:
            if side == "reference":
                got[side] = sides.reference_quality(ref_steps, ref_eval)
            else:
                got[side] = sides.nima_quality(recipe, overrides)
        ref, nima = got["reference"], got["nima"]
        ratios.append(nima["wall_s"] / ref["wall_s"])
        losses.append(nima["full_val_loss"])
        ref_walls.append(ref["wall_s"])
        nima_walls.append(nima["wall_s"])
        shares.append(nima["overhead_share"])
        print(
            f"  round {r + 1} ({order[0]} first): reference {ref['wall_s']:.1f}s (val {ref['val_loss']}, "
            f"20-batch estimate); nima {nima['wall_s']:.1f}s, full-split val loss "
            f"{nima['full_val_loss']:.4f} over {nima['val_tokens']:,} tokens ({nima['checkpoint']}; "
            f"scored in {nima['eval_wall_s']:.1f}s more; evaluation + checkpoints "
            f"{100 * nima['overhead_share']:.1f}% of the Trainer's time) -> {ratios[-1]:.3f}x",
            flush=True,
        )
    result = {
        "ratio": summary(ratios),
        "overhead_share": summary(shares),
        "full_val_loss": summary(losses),
        "reference_wall_s": summary(ref_walls),
        "nima_wall_s": summary(nima_walls),
        "reached": max(losses) <= TARGET_LOSS,
    }
    print(
        f"  time ratio nima/reference: {fmt(result['ratio'])}; nima full-split val loss "
        f"{result['full_val_loss']['median']:.4f} (max {result['full_val_loss']['max']:.4f}), "
        f"target <= {TARGET_LOSS}: {'reached' if result['reached'] else 'NOT reached'}",
        flush=True,
    )
    return result


def precision_check(sides: Sides, rounds: int, steps: int) -> dict[str, Any]:
    """Goal 3: the default (precision auto, mixed precision on) against forced fp32, paired."""
    print(
        f"== (c) precision auto vs fp32 at the reference shape: {rounds} paired rounds of {steps} steps",
        flush=True,
    )
    ratios, chosen = [], set()
    for r in range(rounds):
        order = ("fp32", "auto") if r % 2 == 0 else ("auto", "fp32")
        got: dict[str, float] = {}
        for name in order:
            figures = sides.nima_throughput(steps, [f"--training.precision={name}"])
            got[name] = figures["tokens_per_s"]
            if name == "auto":
                chosen.add(figures["precision"])
        ratios.append(got["auto"] / got["fp32"])
        print(
            f"  round {r + 1}: fp32 {got['fp32']:,.0f} tok/s, auto {got['auto']:,.0f} tok/s "
            f"-> {ratios[-1]:.3f}x",
            flush=True,
        )
    result = {"ratio": summary(ratios), "auto_chose": sorted(chosen)}
    print(f"  auto/fp32: {fmt(result['ratio'])}; auto chose {', '.join(result['auto_chose'])}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="paired throughput rounds (default 3)")
    parser.add_argument("--steps", type=int, default=1000, help="steps per throughput run (default 1000)")
    parser.add_argument("--quality_rounds", type=int, default=2, help="paired time-to-quality rounds")
    parser.add_argument(
        "--recipe", default=DEFAULT_RECIPE, help=f"Nima's CPU recipe (default {DEFAULT_RECIPE})"
    )
    parser.add_argument(
        "--nima_option",
        action="append",
        default=[],
        metavar="--SECTION.KEY=VALUE",
        help="a config override for Nima's throughput runs, e.g. --nima_option=--training.compile=true "
        "(repeatable; the shape, batch and precision stay the reference's)",
    )
    parser.add_argument("--skip_throughput", action="store_true")
    parser.add_argument("--skip_quality", action="store_true")
    parser.add_argument(
        "--check_precision",
        action="store_true",
        help="also compare precision auto (the default) with fp32, paired (goal 3)",
    )
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both sides")
    parser.add_argument("--omp_passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE for both sides")
    parser.add_argument("--quick", action="store_true", help="tiny runs of every path (a smoke test)")
    parser.add_argument("--reference", default=None, help="path of reference_gpt.py")
    parser.add_argument("--text", default=None, help="tiny Shakespeare input.txt")
    parser.add_argument("--work_dir", default=None, help="keep logs and checkpoints here (default: temp)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    for option in args.nima_option:
        if option.lstrip("-").startswith(FIXED_BY_REFERENCE):
            parser.error(f"--nima_option {option}: the shape, batch and precision are the reference's")

    ref_steps, ref_eval, overrides = 2000, 500, []
    if args.quick:
        args.rounds, args.steps, args.quality_rounds = 1, 40, 1
        ref_steps, ref_eval = 40, 20
        overrides = ["--training.max_steps=40", "--training.eval_every=20", "--training.eval_batches=2"]

    with tempfile.TemporaryDirectory(prefix="nima-compare-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        text = find_text(args.text)
        data_dir = work / "data"
        print(f"machine: {machine()}; preparing data in {data_dir} (not timed)", flush=True)
        prepare_data(text, data_dir)
        sides = Sides(args, work, data_dir)
        results: dict[str, Any] = {
            "machine": machine(),
            "date": utc_now(),
        }
        if not args.skip_throughput:
            results["throughput"] = throughput(sides, args.rounds, args.steps, args.nima_option)
        if not args.skip_quality:
            results["quality"] = quality(
                sides, args.quality_rounds, args.recipe, overrides, ref_steps, ref_eval
            )
        if args.check_precision:
            results["precision"] = precision_check(
                sides, max(2, args.rounds) if not args.quick else 1, args.steps
            )
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        parts = []
        if "throughput" in results:
            parts.append(f"throughput {fmt(results['throughput']['ratio'])} [goal >= 1.15x]")
        if "quality" in results:
            q = results["quality"]
            loss = q["full_val_loss"]["max"]
            parts.append(
                f"time-to-loss {fmt(q['ratio'])} [goal <= 0.5x; full-split val loss {loss:.4f} "
                f"{'<=' if q['reached'] else '>'} {TARGET_LOSS}; evaluation + checkpoints "
                f"{100 * q['overhead_share']['median']:.1f}% of training time]"
            )
        if "precision" in results:
            parts.append(f"precision auto/fp32 {fmt(results['precision']['ratio'])} [goal >= 1x]")
        print("RESULT " + "; ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
