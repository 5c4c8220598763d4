#!/usr/bin/env python3
"""What the Trainer's loop costs around the model step: ``trainer.train()`` against a bare loop.

Both sides are built by :func:`nima.training.recipe.build_run` at the reference shape
(``REFERENCE_SHAPE`` of ``common.py``: gpt2 family, 4 layers, d_model 128, 4 heads,
d_ff 512, context 64, batch 12, AdamW, warmup 100 + cosine, clipping at 1.0), fp32 on the CPU,
with evaluation and checkpoints off (``eval_every 0``, ``save_every 0``, no epoch checkpoints);
logging (every 10 steps, ``metrics.jsonl``) and the progress output stay at their defaults.

- **bare**: the built Trainer's own model, optimizer, scheduler and train loader, driven the way
  a user would write it: ``for batch in loader``, forward, backward, ``clip_grad_norm_`` (foreach,
  as the Trainer clips), ``optimizer.step()``, ``scheduler.step()``, ``zero_grad``.
- **trainer**: ``trainer.train()`` on a fresh build (same seed: the same weights and batches).

Each side runs ``--warmup`` untimed steps, then ``--steps`` timed ones; the Trainer is timed by a
callback from its step ``warmup`` to step ``warmup + steps`` (``on_step``), so the evaluation and
checkpoint it still makes once after its last step are not in the window. Rounds alternate the
order (bare first, then trainer first, ...), so that both sides see the same machine; every figure
is the median of per-round ratios with its min-max. Wall time and this process's CPU time are
both reported (CPU time is the steadier one on a shared machine). The last line is JSON.

    python benchmarks/loop_overhead.py                       # 6 rounds of 200 steps
    python benchmarks/loop_overhead.py --rounds 10 --steps 300
    python benchmarks/loop_overhead.py --profile             # where the loop's own time goes

``--profile`` runs cProfile over ``trainer.train()`` and lists the functions whose own time is
spent OUTSIDE the model's forward/backward, the clipping and the optimizer's math (time of C
functions is charged to the Python function that called them), in ms per step.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import Clock, machine, prepare_tiny_shakespeare, reference_shape, summary, utc_now

LOOP_OFF = {"eval_every": 0, "save_every": 0, "save_epoch_checkpoints": False}


def build(data_dir: str, output_dir: str, max_steps: int, callbacks: list[Any] = ()) -> Any:
    """The reference-shape run (fp32, cpu) with evaluation and checkpoints off."""
    from nima.config import RunConfig
    from nima.training.recipe import build_run

    raw = reference_shape()
    raw["training"].update(LOOP_OFF, max_steps=max_steps, output_dir=output_dir)
    raw["training"].update(precision="fp32", device="cpu")
    raw["data"]["data_dir"] = data_dir
    config = RunConfig.from_dict(raw, source="loop_overhead")
    return build_run(config, callbacks=list(callbacks), say=lambda *a, **k: None)


def time_bare(data_dir: str, output_dir: str, warmup: int, steps: int) -> tuple[float, float, int]:
    """(wall s, cpu s, page faults) of ``steps`` steps of the bare loop, after ``warmup`` untimed ones."""
    trainer = build(data_dir, output_dir, warmup + steps).trainer
    model, optimizer, scheduler = trainer.raw_model, trainer.optimizer, trainer.scheduler
    loader, clip = trainer.train_dataloader, trainer.config.gradient_clip
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    clock, step, batches = Clock(), 0, iter(loader)
    while step < warmup + steps:
        if step == warmup:
            clock.start()
        batch = next(batches, None)
        if batch is None:  # end of an epoch: the loader starts the next one
            batches = iter(loader)
            continue
        loss = model(batch["input_ids"], labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
    return clock.stop()


class StepWindow:
    """Callback: the clock runs from step ``first`` to step ``last`` (both at ``on_step``, right
    after the optimizer step), so the window holds ``last - first`` whole loop iterations."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.clock = Clock()
        self.times: tuple[float, float, int] | None = None
        self.overhead_at_start = 0.0
        self.overhead_s = 0.0

    def on_step(self, run: Any) -> None:
        if run.step == self.first:
            self.overhead_at_start = run.overhead_seconds
            self.clock.start()
        elif run.step == self.last:
            self.times = self.clock.stop()
            self.overhead_s = run.overhead_seconds - self.overhead_at_start


def time_trainer(data_dir: str, output_dir: str, warmup: int, steps: int) -> tuple[float, float, int]:
    """(wall s, cpu s, page faults) of ``steps`` steps of ``trainer.train()``, after ``warmup``."""
    window = StepWindow(warmup, warmup + steps)
    run = build(data_dir, output_dir, warmup + steps, callbacks=[window])
    run.train()
    assert window.times is not None and window.overhead_s == 0.0, "evaluation or a save in the window"
    return window.times


class ProfileWindow(StepWindow):
    """:class:`StepWindow` that also runs cProfile over the window."""

    def __init__(self, first: int, last: int) -> None:
        super().__init__(first, last)
        self.profiler = cProfile.Profile()

    def on_step(self, run: Any) -> None:
        if run.step == self.last:
            self.profiler.disable()
        super().on_step(run)
        if run.step == self.first:
            self.profiler.enable()


def profile(data_dir: str, output_dir: str, warmup: int, steps: int, top: int) -> dict[str, Any]:
    """cProfile over ``steps`` steps of ``train()``: the loop's own cost per step, by function."""
    window = ProfileWindow(warmup, warmup + steps)
    build(data_dir, output_dir, warmup + steps, callbacks=[window]).train()
    stats = pstats.Stats(window.profiler).stats  # type: ignore[attr-defined]
    math = _math_functions(stats)
    own: dict[str, float] = {}
    for func, (_, _, tottime, _, callers) in stats.items():
        if func in math:
            continue
        if not callers:
            own[_name(func)] = own.get(_name(func), 0.0) + tottime
        for caller, (_, _, share, _) in callers.items():  # the time of the calls from the loop
            if caller not in math:
                # A C function is named with its caller: "torch.stack <- the collator".
                key = f"{func[2]}  <- {_name(caller)}" if func[0] == "~" else _name(func)
                own[key] = own.get(key, 0.0) + share
    total = sum(v[2] for v in stats.values())
    loop = sum(own.values())
    rows = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    print(f"cProfile over {steps} steps of train(): {1000 * total / steps:.2f} ms/step in all, "
          f"{1000 * loop / steps:.3f} ms/step outside the model, clipping and optimizer math "
          "(cProfile inflates Python-heavy code)")  # fmt: skip
    for name, seconds in rows:
        print(f"  {1000 * seconds / steps:7.3f} ms/step  {name}")
    return {"profile_ms_per_step": 1000 * total / steps, "loop_ms_per_step": 1000 * loop / steps}


# Code that is the model step's math (forward, backward, clipping, optimizer), not the loop.
_MATH = (
    "nima/models/",
    "torch/nn/modules/",
    "torch/nn/functional.py",
    "torch/nn/utils/clip_grad.py",
    "torch/autograd/",
    "torch/_tensor.py",
    "torch/optim/adamw.py",
    "torch/optim/adam.py",
    "torch/optim/optimizer.py",
)


def _math_functions(stats: dict) -> set:
    """The functions of the model step's math: those in ``_MATH``'s files, and those called only
    from them (torch internals such as the optimizer's profiling hooks or foreach grouping)."""
    math = {func for func in stats if any(part in func[0].replace(os.sep, "/") for part in _MATH)}
    grew = True
    while grew:
        grew = False
        for func, (*_, callers) in stats.items():
            if func not in math and callers and all(caller in math for caller in callers):
                math.add(func)
                grew = True
    return math


def _name(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    parts = Path(filename).parts
    short = "/".join(parts[-2:])
    return f"{short}:{line}({name})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6, help="paired rounds (default 6)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per side and round")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (a multiple of 10)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--data_dir", default=None, help="prepared data (default: a temporary folder)")
    parser.add_argument("--text", default=None, help="tiny Shakespeare input.txt (default: shared copy)")
    parser.add_argument("--profile", action="store_true", help="profile the Trainer's loop instead")
    parser.add_argument("--top", type=int, default=25, help="rows of the profile")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)  # as it was (main() also runs inside the test suite)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="nima-loop-") as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp) / "data"
        prepare_tiny_shakespeare(data_dir, args.text)
        out = str(Path(tmp) / "out")
        print(f"machine: {machine()}", flush=True)
        if args.profile:
            figures = profile(str(data_dir), out, args.warmup, args.steps, args.top)
            print(json.dumps(figures), flush=True)
            return 0
        sides = {"bare": time_bare, "trainer": time_trainer}
        ms: dict[str, list[float]] = {"bare": [], "trainer": []}
        cpu_ms: dict[str, list[float]] = {"bare": [], "trainer": []}
        faults: dict[str, list[float]] = {"bare": [], "trainer": []}
        wall_ratios, cpu_ratios = [], []
        for r in range(args.rounds):
            order = ("bare", "trainer") if r % 2 == 0 else ("trainer", "bare")
            load = os.getloadavg()[0]
            for side in order:
                wall, cpu, minflt = sides[side](str(data_dir), out, args.warmup, args.steps)
                ms[side].append(1000 * wall / args.steps)
                cpu_ms[side].append(1000 * cpu / args.steps)
                faults[side].append(minflt / args.steps)
            wall_ratios.append(ms["bare"][-1] / ms["trainer"][-1])
            cpu_ratios.append(cpu_ms["bare"][-1] / cpu_ms["trainer"][-1])
            print(
                f"round {r + 1} ({order[0]} first, load {load:.2f}): bare {ms['bare'][-1]:.2f} ms/step "
                f"(cpu {cpu_ms['bare'][-1]:.2f}, {faults['bare'][-1]:.0f} page faults), trainer "
                f"{ms['trainer'][-1]:.2f} ms/step (cpu {cpu_ms['trainer'][-1]:.2f}, "
                f"{faults['trainer'][-1]:.0f} page faults) -> trainer speed / bare {wall_ratios[-1]:.3f}x "
                f"(cpu {cpu_ratios[-1]:.3f}x)",
                flush=True,
            )
        extra = [t - b for t, b in zip(ms["trainer"], ms["bare"], strict=True)]
        result = {
            "speed_ratio_trainer_vs_bare": summary(wall_ratios),
            "cpu_ratio_trainer_vs_bare": summary(cpu_ratios),
            "loop_ms_per_step": summary(extra),
            "bare_ms_per_step": summary(ms["bare"]),
            "trainer_ms_per_step": summary(ms["trainer"]),
            "page_faults_per_step": {side: statistics.median(f) for side, f in faults.items()},
            "steps": args.steps,
            "rounds": args.rounds,
            "machine": machine(),
            "load": os.getloadavg()[0],
            "date": utc_now(),
        }
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
