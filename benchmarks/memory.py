#!/usr/bin/env python3
"""Peak memory of one training step against batch x context, next to Nima's memory plan.

Each configuration runs in a fresh child process (so that no allocator cache from an earlier one
is counted): it builds the model and AdamW, then runs real training steps (4 by default: the heap
a CPU run keeps between steps settles over the first few) through Nima's ``TrainStep`` (forward,
backward, clipping, optimizer). The measured figure is the process's peak memory above where it
stood before the model existed (on a CPU the resident set's high-water mark, on a GPU the CUDA
allocator's peak); the plan is ``estimate_training_memory`` for the same step. Printed: one JSON
line per configuration, then a table and, per model and precision, how the activation memory
grows with the context (linear: doubling the context doubles it).

    python benchmarks/memory.py                          # base config and gpt2-small, CPU
    python benchmarks/memory.py --models base --batches 1 2 4 8 --contexts 256 1024
    python benchmarks/memory.py --quick                  # seconds: a tiny model, one size
    python benchmarks/memory.py --models base --batches 32 --checkpointing off --precisions bf16 --heap whole
    python benchmarks/memory.py --models base --batches 4 --contexts 1024 --precisions bf16 --compile

``--heap``: what a CPU step keeps of the memory it frees (``nima/memory/heap.py``): ``small``
(blocks under 32 MiB; what the plan counts), ``whole`` (every block: what a run does where its
plan fits twice over), ``glibc`` (glibc's own settings). Each row also gives seconds and page
faults per step over the steps after the first two (with ``--compile``, after the compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from common import print_table

MODELS: dict[str, dict[str, Any]] = {
    # configs/base_model.yaml's model on tiny Shakespeare's characters (vocab 65)
    "base": {"vocab_size": 65, "d_model": 512, "n_heads": 8, "n_layers": 6, "d_ff": 2048,
             "max_seq_len": 1024, "dropout": 0.0},
    # the gpt2-small preset with the GPT-2 vocabulary
    "gpt2-small": {"vocab_size": 50257, "d_model": 768, "n_heads": 12, "n_layers": 12,
                   "max_seq_len": 1024, "dropout": 0.0},
    "tiny": {"vocab_size": 65, "d_model": 64, "n_heads": 4, "n_layers": 2, "max_seq_len": 256},
}  # fmt: skip


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one configuration in this process (called in a fresh child)."""
    import torch

    from nima.distributed import DistributedContext
    from nima.memory import estimate_training_memory, measure_peak
    from nima.memory.heap import keep_freed_memory
    from nima.models import LOSS_CHUNK_ROWS, ModelConfig, create_model
    from nima.runtime import Runtime
    from nima.runtime.compilation import compile_model
    from nima.runtime.precision import PrecisionChoice
    from nima.training import get_optimizer, get_scheduler
    from nima.training.step import TrainStep

    torch.set_num_threads(spec["threads"])
    config = ModelConfig(**{**MODELS[spec["model"]], "gradient_checkpointing": spec["gc"]})
    batch, context, precision = spec["batch"], spec["context"], spec["precision"]
    device = torch.device(spec["device"])
    runtime = Runtime(DistributedContext(), device, PrecisionChoice(precision, device.type, "benchmark"))
    ids = torch.randint(0, config.vocab_size, (batch, context))

    warm: list[float] = []  # wall seconds and page faults of the steps after the first two

    if spec["heap"] == "whole":
        keep_freed_memory(large_blocks=True)

    def train_steps() -> None:
        torch.manual_seed(0)
        model = create_model(config).to(device).train()
        optimizer = get_optimizer(model, "adamw", learning_rate=1e-4)
        scheduler = get_scheduler(optimizer, "constant", num_training_steps=spec["steps"])
        to_run = compile_model(model, device) if spec["compile"] else model  # compiled at step 0
        step = TrainStep(to_run, optimizer, scheduler, runtime, 1.0, list(model.parameters()))
        for i in range(spec["steps"]):
            if i == 2:
                warm[:] = [time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt]
            loss = step([{"input_ids": ids, "labels": ids}]).loss
            float(loss)
        if warm:
            n = spec["steps"] - 2
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - warm[1]
            warm[:] = [(time.perf_counter() - warm[0]) / n, faults / n]

    peak = measure_peak(train_steps, device)
    plan = estimate_training_memory(
        config, batch, context, precision, loss_chunk_rows=LOSS_CHUNK_ROWS, device=str(device),
        quadratic_attention=getattr(config, "attn_dropout", 0) > 0 and device.type != "cuda",
    )  # fmt: skip
    return {**spec, "measured_mib": round(peak / 2**20), "plan_mib": round(plan.total / 2**20),
            "plan_over_measured": round(plan.total / peak, 3) if peak else None,
            "activations_plan_mib": round((plan.activations + plan.logits) / 2**20),
            "s_per_step": round(warm[0], 3) if warm else None,
            "faults_per_step": round(warm[1]) if warm else None}  # fmt: skip


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ)
    if spec["heap"] == "glibc":  # any malloc setting in the environment leaves glibc as it is
        env["MALLOC_MMAP_MAX_"] = "65536"  # glibc's default
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        return {**spec, "error": (proc.stderr.strip().splitlines() or ["killed"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=["base", "gpt2-small"], choices=sorted(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[2, 8])
    parser.add_argument("--contexts", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--checkpointing", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="training steps measured per configuration")
    parser.add_argument(
        "--heap",
        default="small",
        choices=["small", "whole", "glibc"],
        help="what a CPU step keeps of the memory it frees: blocks under 32 MiB (what the plan "
        "counts), every block (where the plan leaves room), or glibc's defaults",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (training.compile)")
    parser.add_argument("--quick", action="store_true", help="one tiny configuration (a smoke test)")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    if args.quick:
        args.models, args.batches, args.contexts = ["tiny"], [2], [128, 256]
        args.precisions, args.checkpointing = ["fp32"], ["off"]
    rows = []
    for model in args.models:
        for precision in args.precisions:
            for gc in args.checkpointing:
                for batch in args.batches:
                    for context in args.contexts:
                        spec = {"model": model, "batch": batch, "context": context, "precision": precision,
                                "gc": gc == "on", "device": args.device, "threads": args.threads,
                                "steps": args.steps, "heap": args.heap, "compile": args.compile}  # fmt: skip
                        row = run_child(spec)
                        print(json.dumps(row), flush=True)
                        rows.append(row)
    print_results(rows)
    return 0


def print_results(rows: list[dict[str, Any]]) -> None:
    header = ["model", "precision", "checkpointing", "batch x context", "measured MiB", "plan MiB"]
    header += ["plan / measured", "s/step", "page faults/step"]
    table = []
    for r in rows:
        cells = [r["model"], r["precision"], "on" if r["gc"] else "off", f"{r['batch']} x {r['context']}"]
        if "error" in r:
            cells += ["failed: " + r["error"], "", "", "", ""]
        else:
            cells += [str(r["measured_mib"]), str(r["plan_mib"]), f"{r['plan_over_measured']:.2f}"]
            cells += [str(r.get("s_per_step")), str(r.get("faults_per_step"))]
        table.append(cells)
    print_table(header, table)
    ok = [r for r in rows if "error" not in r]
    if ok:
        ratios = [r["plan_over_measured"] for r in ok]
        print(f"\nplan / measured: {min(ratios):.2f} - {max(ratios):.2f} over {len(ok)} configurations")


if __name__ == "__main__":
    sys.exit(main())
