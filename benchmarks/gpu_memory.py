#!/usr/bin/env python3
"""Real sizes on one GPU: the guide's base config as written, ``batch_size: auto``, and memory
running out mid-run, each checked in a fresh process.

1. **guide**: ``python scripts/train.py --config configs/base_model.yaml`` for ``--steps`` steps
   (batch 32 x 1024, as the guide writes it): exit code 0, the memory plan's line, tokens/s, the
   precision and the checkpoint it saved.
2. **auto**: the same command with a model that does not fit whole (24 layers x 1024 wide) and
   ``--training.batch_size=auto --training.gradient_accumulation_steps=8``: the search tries
   real steps until CUDA runs out of memory; the micro-batch it chose, and that the run trained
   with the effective batch kept.
3. **oom**: the base config from Python (``build_run``); after step 3 a callback fills the GPU's
   free memory, so step 4 runs out: it must end in one ``ConfigError`` line that names the step,
   the plan and the fixes, never a traceback.

Prints one JSON line per check, then a summary line; ``--record FILE`` appends one Markdown
table row per check to FILE. A check that does not hold makes the exit code 1.

    python benchmarks/gpu_memory.py                                  # CUDA: about 2-4 minutes
    python benchmarks/gpu_memory.py --record benchmarks/RESULTS.md
    python benchmarks/gpu_memory.py --device cpu --tiny              # a CPU smoke test (tests run it)

With ``--tiny`` every check runs a 1-layer model at context 64; on a CPU the third check raises
``torch.OutOfMemoryError`` itself, since a CPU that runs out of memory kills the process instead.
Data: tiny Shakespeare, prepared as ``nima train`` does; on a machine without network put
``input.txt`` at ``experiments/data/tiny_shakespeare/input.txt`` or set ``NIMA_DATA_MIRROR``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import ROOT, append_table_rows, command_line

GUIDE_CONFIG = "configs/base_model.yaml"
# A model that needs batch_size: auto's search on an 80-140 GiB GPU (about 300M parameters).
LARGE_MODEL = ["--model.n_layers=24", "--model.d_model=1024", "--model.n_heads=16", "--model.d_ff=4096"]
TINY_MODEL = ["--model.n_layers=1", "--model.d_model=64", "--model.n_heads=4", "--model.d_ff=256",
              "--model.max_seq_len=64", "--training.eval_batches=2"]  # fmt: skip


def train_command(args: argparse.Namespace, out: Path, *extra: str) -> list[str]:
    """``scripts/train.py`` on the guide's config, as a user runs it, with ``extra`` overrides."""
    sized = TINY_MODEL if args.tiny else []
    return [sys.executable, "scripts/train.py", "--config", GUIDE_CONFIG,
            f"--training.max_steps={args.steps}", f"--training.output_dir={out}",
            f"--training.device={args.device}", *sized, *extra]  # fmt: skip


def run_command(name: str, command: list[str], out: Path, timeout: int) -> dict[str, Any]:
    """Run ``command``; what it printed that a user reads, and what its run wrote."""
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.splitlines()
    said = {
        prefix: next((line for line in lines if line.startswith(prefix)), None)
        for prefix in ("memory plan:", "batch_size auto:", "training ")
    }
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    checkpoint = results.get("last_checkpoint")
    return {
        "check": name,
        "exit_code": proc.returncode,
        "error": proc.stderr.strip().splitlines()[-1] if proc.returncode else None,
        "memory_plan": said["memory plan:"],
        "batch_size_auto": said["batch_size auto:"],
        "start": said["training "],
        "steps": results.get("steps"),
        "tokens_per_s": results.get("tokens_per_s"),
        "precision": results.get("precision"),
        "checkpoint_saved": bool(checkpoint) and Path(checkpoint).is_file(),
        "command": shlex.join(["python", *command[1:]]).replace(str(out), "OUT"),
    }


def check_guide(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / "guide"
    result = run_command("guide", train_command(args, out), out, args.timeout)
    result["ok"] = result["exit_code"] == 0 and result["steps"] == args.steps and result["checkpoint_saved"]
    return result


def check_auto(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / "auto"
    large = [] if args.tiny else LARGE_MODEL
    command = train_command(
        args, out, *large, "--training.batch_size=auto", "--training.gradient_accumulation_steps=8"
    )
    result = run_command("auto", command, out, args.timeout)
    result["ok"] = (
        result["exit_code"] == 0 and result["steps"] == args.steps and result["batch_size_auto"] is not None
    )
    return result


# ------------------------------------------------------------------------- check 3, in a child


class FillMemoryAfter:
    """Callback: after step ``step``, take all the GPU's free memory (on a CPU: raise as CUDA would)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.blocker: Any = None

    def on_step(self, run: Any) -> None:
        import torch

        if run.step != self.step:
            return
        if run.device.type != "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated on a CPU)")
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the next step must allocate afresh, not reuse cached blocks
        free, _ = torch.cuda.mem_get_info(run.device)
        self.blocker = torch.empty(max(0, free - 64 * 2**20), dtype=torch.uint8, device=run.device)


def oom_child(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Check 3 in this process: one line when the GPU runs out of memory at step 4."""
    from nima.config import RunConfig, parse_overrides
    from nima.errors import ConfigError
    from nima.training.recipe import build_run

    overrides = [f"--training.max_steps={args.steps}", f"--training.output_dir={out}",
                 f"--training.device={args.device}", *(TINY_MODEL if args.tiny else [])]  # fmt: skip
    config = RunConfig.from_yaml(ROOT / GUIDE_CONFIG, parse_overrides(overrides))
    run = build_run(config, callbacks=[FillMemoryAfter(3)], say=lambda line: None)
    try:
        run.train()
        message = None
    except ConfigError as err:
        message = str(err)
    ok = (
        message is not None
        and "\n" not in message
        and message.startswith("the GPU ran out of memory at step 4")
    )
    return {"check": "oom", "ok": ok, "message": message, "steps": run.trainer.step}


def check_oom(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / "oom"
    command = [sys.executable, __file__, "--child_oom", str(out), "--device", args.device,
               "--steps", str(args.steps), *(["--tiny"] if args.tiny else [])]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"check": "oom", "ok": False, "message": (proc.stderr or proc.stdout)[-2000:]}
    result["traceback"] = "Traceback" in proc.stderr
    result["ok"] = result["ok"] and not result["traceback"]
    return result


# ---------------------------------------------------------------------------------- record


RECORD_HEADER = ["date (UTC)", "device", "check", "holds", "figures", "command"]


def figures(result: dict[str, Any]) -> str:
    if result["check"] == "oom":
        return f"after {result.get('steps')} steps: `{(result.get('message') or '')[:160]}`"
    parts = [result.get("memory_plan") or "", result.get("batch_size_auto") or ""]
    if result.get("tokens_per_s"):
        parts.append(
            f"{result['steps']} steps, {result['tokens_per_s']:,.0f} tokens/s, {result['precision']}"
        )
    if result.get("error"):
        parts.append(f"`{result['error'][:160]}`")
    return "; ".join(part for part in parts if part)


def record(path: Path, device: str, results: list[dict[str, Any]], argv: list[str]) -> None:
    """Append one Markdown table row per check to ``path`` (the header first when it is new)."""
    when = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}"
    invoked = command_line("gpu_memory", argv)
    rows = "".join(
        f"| {when} | {device} | {r['check']} | {'yes' if r['ok'] else 'NO'} | {figures(r)} | "
        f"`{r.get('command', invoked)}` |\n"
        for r in results
    )
    append_table_rows(path, RECORD_HEADER, rows)


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--tiny", action="store_true", help="a 1-layer model at context 64 (smoke test)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 30; tiny: 5)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds each check may take")
    parser.add_argument("--record", type=Path, default=None, help="append the results to this Markdown table")
    parser.add_argument("--child_oom", type=Path, default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.steps = args.steps or (5 if args.tiny else 30)
    if args.child_oom is not None:
        print(json.dumps(oom_child(args, args.child_oom)), flush=True)
        return 0
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory(prefix="nima-gpu-memory-") as work:
        results = []
        for check in (check_guide, check_auto, check_oom):
            results.append(check(args, Path(work)))
            print(json.dumps(results[-1]), flush=True)
    held = [r["check"] for r in results if r["ok"]]
    print(json.dumps({"device": device, "held": held, "all_held": len(held) == len(results)}), flush=True)
    if args.record is not None:
        record(args.record, device, results, argv)
    return 0 if len(held) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
