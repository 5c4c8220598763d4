#!/usr/bin/env python3
"""A kill storm: SIGKILL a real training run at random moments, resume it each time, lose nothing.

Runs ``scripts/train.py --resume`` on a tiny model that saves a checkpoint every step (synchronous
saves, then ``--training.async_checkpoint=true``), and SIGKILLs it at random moments (seeded: the
seed is printed, ``--seed`` repeats a storm): many kills land inside a save, some during start-up
(once its data is ready, while it builds the model and loads the previous checkpoint). After
every kill it checks what ``--resume`` relies on:

- every file under a final checkpoint name (``checkpoints/*.pt``) loads with ``weights_only=True``
  and is complete (model, optimizer, step); a file that does not is **corrupt**;
- the newest checkpoint, the one ``--resume`` takes, is at least the newest one seen complete
  before the kill (else **lost**), and the temporary file of a save cut short
  (``.step_N.pt.<host>-<pid>.<random>.tmp``) is never what ``--resume`` picks;
- the next run says ``resuming at step N`` for exactly that newest step (**resumes verified**; a
  run that fails, or resumes elsewhere, is a **failed resume**).

A kill counts as *inside a save* when the killed process left its temporary checkpoint file
behind. At the end the run goes on uninterrupted to its last step, and its final checkpoint must be
bit-identical (``torch.equal`` on every tensor of the model and optimizer state) to that of the
same command run without kills. Prints the figures per mode and one JSON line; exits 1 on any
failure.

    python benchmarks/kill_storm.py --kills 200            # 100 kills per mode: 15-30 minutes on 2 cores
    python benchmarks/kill_storm.py --kills 10 --seed 1    # the test suite's version
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import ROOT, machine

from nima.checkpoint import load_checkpoint_file, newest_checkpoint
from nima.errors import CheckpointError

# The tests' tiny model (tests/tiny.py): a few milliseconds per step, so that saves are most of
# the run's time and many kills land inside one.
TINY = [
    "--model.n_layers=2",
    "--model.d_model=32",
    "--model.n_heads=4",
    "--model.d_ff=64",
    "--model.max_seq_len=32",
    "--training.batch_size=4",
    "--training.precision=fp32",
    "--training.warmup_steps=1",
    "--training.eval_every=0",
    "--training.eval_batches=2",
    "--training.log_every=5",
    "--training.progress_bar=false",
]
POLL_S = 0.002


@dataclass
class Figures:
    mode: str
    steps: int
    kills: int = 0
    kills_inside_save: int = 0
    kills_during_startup: int = 0
    resumes_verified: int = 0
    failed_resumes: int = 0
    corrupt: int = 0
    lost: int = 0
    temporary_taken: int = 0
    files_checked: int = 0
    final_step: int | None = None
    bit_identical: bool | None = None
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return (
            self.failed_resumes + self.corrupt + self.lost + self.temporary_taken
            + (self.bit_identical is not True) + (self.final_step != self.steps)
        )  # fmt: skip


def train_command(output_dir: Path, steps: int, mode: str, save_every: int, keep: int) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "--config",
        str(ROOT / "configs" / "cpu_quick.yaml"),
        "--resume",
        f"--training.output_dir={output_dir}",
        f"--training.max_steps={steps}",
        f"--training.save_every={save_every}",
        f"--training.keep_last_checkpoints={keep}",
        f"--training.async_checkpoint={'true' if mode == 'async' else 'false'}",
        *TINY,
    ]


def step_of(path: Path | None) -> int:
    """N of ``step_N.pt`` (-1 for none)."""
    match = re.fullmatch(r"step_(\d+)\.pt", path.name) if path is not None else None
    return int(match.group(1)) if match else -1


def newest_step(output_dir: Path) -> int:
    folder = output_dir / "checkpoints"
    found = [step_of(p) for p in folder.glob("step_*.pt")] if folder.is_dir() else []
    return max(found, default=-1)


def leftovers_of(output_dir: Path, pid: int) -> list[Path]:
    """The temporary checkpoint files that process ``pid`` of this host was writing."""
    tag = f"{socket.gethostname()}-{pid}."
    folder = output_dir / "checkpoints"
    return [p for p in folder.glob(".*.tmp") if tag in p.name] if folder.is_dir() else []


def check_files(output_dir: Path, figures: Figures) -> None:
    """Every final-named checkpoint loads (weights_only) and is complete."""
    for path in sorted((output_dir / "checkpoints").glob("*.pt")):
        figures.files_checked += 1
        try:
            ckpt = load_checkpoint_file(path)
            complete = bool(ckpt.get("model")) and bool(ckpt.get("optimizer")) and "step" in ckpt
        except CheckpointError as err:
            complete, why = False, str(err)
        else:
            why = "incomplete: no model, optimizer or step"
        if not complete:
            figures.corrupt += 1
            figures.problems.append(f"corrupt {path.name}: {why}")


def resumed_at(log: Path) -> int | None:
    """The step a run's log says it resumed at (None: started afresh or not that far yet)."""
    found = re.search(r"resuming at step (\d+)", log.read_text(errors="replace")) if log.is_file() else None
    return int(found.group(1)) if found else None


def verify_resume(log: Path, expected: int, figures: Figures) -> bool:
    """Whether the run of ``log`` resumed where it should (``expected`` -1: a fresh start)."""
    text = log.read_text(errors="replace")
    got = resumed_at(log)
    if expected < 0:
        ok = got is None and "starting afresh" in text
    else:
        ok = got == expected
    if ok:
        figures.resumes_verified += 1
    else:
        figures.failed_resumes += 1
        figures.problems.append(f"{log.name}: expected to resume at step {expected}, log says {got}")
    return ok


def storm(mode: str, kills: int, steps: int, rng: random.Random, work: Path, env: dict[str, str],
          save_every: int, keep: int, startup_share: float, window_s: float) -> Figures:  # fmt: skip
    """``kills`` SIGKILLs of one run, then the run to its end, then the same run without kills."""
    started = time.perf_counter()
    figures = Figures(mode=mode, steps=steps)
    out = work / mode / "run"
    logs = work / mode / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = train_command(out, steps, mode, save_every, keep)
    # The same command without kills, meanwhile (it shares nothing with the storm's run).
    reference = work / mode / "reference"
    with open(logs / "reference.log", "w") as handle:
        uninterrupted = subprocess.Popen(train_command(reference, steps, mode, save_every, keep), cwd=ROOT,
                                         env=env, stdout=handle, stderr=subprocess.STDOUT)  # fmt: skip
    for attempt in range(kills):
        expected = newest_step(out)  # where this start must resume (-1: afresh)
        log = logs / f"start_{attempt:04d}.log"
        with open(log, "w") as handle:
            job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
        during_startup = rng.random() < startup_share
        seen = expected
        if during_startup:  # once its data is ready: while it builds the model, loads the checkpoint
            while job.poll() is None and "data: " not in log.read_text(errors="replace"):
                time.sleep(POLL_S)
            deadline = time.monotonic() + rng.uniform(0.0, 0.5)
            while time.monotonic() < deadline and job.poll() is None:
                seen = max(seen, newest_step(out))
                time.sleep(POLL_S)
        else:  # once it has resumed and saved at least once: then at a random moment
            while job.poll() is None and newest_step(out) <= expected:
                time.sleep(POLL_S)
            deadline = time.monotonic() + rng.uniform(0.0, window_s)
            while time.monotonic() < deadline and job.poll() is None:
                seen = max(seen, newest_step(out))
                time.sleep(POLL_S)
        seen = max(seen, newest_step(out))
        if job.poll() is not None:  # it ended on its own: finished, or failed
            if job.returncode != 0:
                figures.failed_resumes += 1
                figures.problems.append(f"{log.name}: exited with {job.returncode}: {log.read_text()[-500:]}")
            else:
                verify_resume(log, expected, figures)
            break
        job.send_signal(signal.SIGKILL)
        job.wait()
        figures.kills += 1
        figures.kills_during_startup += during_startup
        inside = leftovers_of(out, job.pid)
        figures.kills_inside_save += bool(inside)
        # What the next --resume will find.
        check_files(out, figures)
        newest = newest_checkpoint(out)
        if newest is not None and not re.fullmatch(r"(step|epoch)_\d+\.pt", newest.name):
            figures.temporary_taken += 1
            figures.problems.append(f"--resume would take {newest.name}")
        if newest_step(out) < seen or step_of(newest) != newest_step(out):
            figures.lost += 1
            figures.problems.append(f"kill {attempt}: step_{seen}.pt was complete; --resume takes {newest}")
        if resumed_at(log) is not None or "starting afresh" in log.read_text(errors="replace"):
            verify_resume(log, expected, figures)
    # The run to its end, uninterrupted.
    expected = newest_step(out)
    log = logs / "final.log"
    with open(log, "w") as handle:
        final = subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if final.returncode != 0:
        figures.failed_resumes += 1
        figures.problems.append(f"final run exited with {final.returncode}: {log.read_text()[-500:]}")
    else:  # a run the last kill caught after its last step resumes there too, with nothing to do
        verify_resume(log, expected, figures)
    check_files(out, figures)
    figures.final_step = newest_step(out)
    if uninterrupted.wait() != 0:
        raise RuntimeError(f"the uninterrupted run failed: {(logs / 'reference.log').read_text()[-2000:]}")
    figures.bit_identical = same_tensors(
        out / "checkpoints" / f"step_{steps}.pt", reference / "checkpoints" / f"step_{steps}.pt", figures
    )
    figures.seconds = round(time.perf_counter() - started, 1)
    return figures


def same_tensors(a: Path, b: Path, figures: Figures) -> bool:
    """Whether the model and optimizer states of two checkpoints are bit-identical."""
    if not (a.is_file() and b.is_file()):
        figures.problems.append(f"missing final checkpoint: {a if not a.is_file() else b}")
        return False
    left, right = load_checkpoint_file(a), load_checkpoint_file(b)
    differing = [
        name for name, x, y in pairs({"model": left["model"], "optimizer": left["optimizer"]},
                                     {"model": right["model"], "optimizer": right["optimizer"]})
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y))
    ]  # fmt: skip
    if differing:
        figures.problems.append(f"final weights differ from the uninterrupted run: {differing[:5]}")
    return not differing


def pairs(a: Any, b: Any, name: str = "") -> list[tuple[str, Any, Any]]:
    """The tensors of two nested states, side by side (a missing one pairs with None)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [item for key in sorted(set(a) | set(b), key=str)
                for item in pairs(a.get(key), b.get(key), f"{name}.{key}")]  # fmt: skip
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [item for i, (x, y) in enumerate(zip(a, b, strict=True))
                for item in pairs(x, y, f"{name}[{i}]")]  # fmt: skip
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return [(name, a, b)]
    return [] if a == b else [(name, a, b)]


def prepare_data(data_dir: str | None) -> None:
    """Prepare tiny Shakespeare once, so that no run spends its start-up preparing it."""
    from nima.data import prepare

    prepare("tiny_shakespeare", "char", data_dir=data_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs in all, shared by the modes (200)")
    parser.add_argument("--modes", nargs="+", choices=("sync", "async"), default=["sync", "async"])
    parser.add_argument("--seed", type=int, default=None, help="the storm's seed (default: a random one)")
    parser.add_argument("--steps", type=int, default=None, help="max_steps (default: 6 per kill + 20)")
    parser.add_argument("--save_every", type=int, default=1)
    parser.add_argument("--keep", type=int, default=2, help="keep_last_checkpoints (2)")
    parser.add_argument("--startup_share", type=float, default=0.1, help="share of kills during start-up")
    parser.add_argument("--window_s", type=float, default=0.12,
                        help="kills land up to this long after the run's first save (0.12 s)")  # fmt: skip
    parser.add_argument("--data_dir", help="data directory (default: $NIMA_DATA_DIR, else experiments/data)")
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    print(f"kill storm: seed {seed} (repeat with --seed {seed})", flush=True)
    print(f"machine: {machine()}", flush=True)
    rng = random.Random(seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if args.data_dir:
        env["NIMA_DATA_DIR"] = args.data_dir
    prepare_data(env.get("NIMA_DATA_DIR"))
    modes = len(args.modes)
    share = [args.kills // modes + (i < args.kills % modes) for i in range(modes)]
    results = []
    with tempfile.TemporaryDirectory(prefix="nima-kill-storm-") as tmp:
        work = args.work or Path(tmp)
        for mode, kills in zip(args.modes, share, strict=True):
            steps = args.steps or 6 * kills + 20
            figures = storm(mode, kills, steps, rng, work, env, args.save_every, args.keep,
                            args.startup_share, args.window_s)  # fmt: skip
            results.append(figures)
            print(
                f"{mode:>5}: {figures.kills} kills ({figures.kills_inside_save} inside a save, "
                f"{figures.kills_during_startup} during start-up), {figures.resumes_verified} resumes "
                f"verified, {figures.files_checked} checkpoint files checked; corrupt {figures.corrupt}, "
                f"lost {figures.lost}, failed resumes {figures.failed_resumes}, temporary taken "
                f"{figures.temporary_taken}; final step {figures.final_step}/{steps}, bit-identical to "
                f"the uninterrupted run: {figures.bit_identical} ({figures.seconds:.0f} s)",
                flush=True,
            )
            for problem in figures.problems[:20]:
                print(f"  problem: {problem}", flush=True)
    total = {
        "benchmark": "kill_storm",
        "seed": seed,
        "kills": sum(f.kills for f in results),
        "kills_inside_save": sum(f.kills_inside_save for f in results),
        "kills_during_startup": sum(f.kills_during_startup for f in results),
        "resumes_verified": sum(f.resumes_verified for f in results),
        "files_checked": sum(f.files_checked for f in results),
        "corrupt": sum(f.corrupt for f in results),
        "lost": sum(f.lost for f in results),
        "failed_resumes": sum(f.failed_resumes for f in results),
        "temporary_taken": sum(f.temporary_taken for f in results),
        "bit_identical": all(f.bit_identical for f in results),
        "failures": sum(f.failures for f in results),
        "modes": [{k: v for k, v in asdict(f).items() if k != "problems"} for f in results],
    }
    print(json.dumps(total), flush=True)
    return 1 if total["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
