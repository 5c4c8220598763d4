#!/usr/bin/env python3
"""Where a training step's time goes, by operator family, at 1 and at N threads.

Profiles Nima's GPT at the reference shape (gpt2, 4 layers, d_model 128, context 64, batch 12,
fp32; forward + backward + clipping + fused AdamW, no trainer around it) with torch.profiler, and
prints each family's milliseconds per step at 1 thread and at ``--threads`` threads, its share of
the step, and how much it gains from the extra threads. This is the diagnosis behind the speed
goal's ceiling on small CPUs: a family that does not speed up with threads caps the whole step.
With ``--compile`` the model runs through ``torch.compile`` (as ``training.compile: true`` does):
the kernels Inductor generates (layer norms, GELU, adds, the loss) are one family, "fused", and the
Python code that calls them and the library kernels is another, "graph calls".

    python benchmarks/op_scaling.py --threads 2
    python benchmarks/op_scaling.py --threads 2 --compile
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
from common import machine
from torch.profiler import profile

from nima.models import GPT, ModelConfig

# Operator name fragment -> family (first match wins; everything else is "other").
FAMILIES = (
    ("flash_attention", "attention"),
    ("scaled_dot_product", "attention"),
    ("aten::mm", "matmul"),
    ("aten::addmm", "matmul"),
    ("aten::bmm", "matmul"),
    ("gelu", "gelu"),
    ("layer_norm", "layer norm"),
    ("adamw", "optimizer"),
    ("vector_norm", "clipping"),
    ("foreach_norm", "clipping"),
)


def family(name: str) -> str | None:
    """The family of a profiler event, or None for events that only wrap others."""
    if name.startswith("aten::"):
        return next((fam for fragment, fam in FAMILIES if fragment in name), "other")
    if "cpp_fused" in name:  # an Inductor kernel (recorded with cpp.enable_kernel_profile)
        return "fused"
    if name.startswith("## Call CompiledFxGraph"):  # self time: the generated Python wrapper
        return "graph calls"
    return None


def profile_step(threads: int, steps: int, batch: int, compiled: bool = False) -> dict[str, float]:
    """Milliseconds per step by family (self time of aten ops, and of Inductor's kernels and
    wrappers when ``compiled``, on the calling thread)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=65, d_model=128, n_heads=4, n_layers=4, d_ff=512, max_seq_len=64,
                            dropout=0.0, bias=True))  # fmt: skip
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, fused=True)
    x = torch.randint(0, 65, (batch, 64))
    y = torch.randint(0, 65, (batch, 64))

    run_model = model
    if compiled:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
        run_model = torch.compile(model)

    def step() -> None:
        loss = run_model(x, labels=y).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()

    for _ in range(10):
        step()
    with profile() as prof:
        for _ in range(steps):
            step()
    per_family: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        fam = family(event.key)
        if fam is not None:
            per_family[fam] += event.self_cpu_time_total / 1000 / steps
    return dict(per_family)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="the N to compare with 1")
    p.add_argument("--steps", type=int, default=30, help="profiled steps per thread count")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2, help="best of this many profiles per thread count")
    p.add_argument("--compile", action="store_true", help="profile the model through torch.compile")
    a = p.parse_args()

    best: dict[int, dict[str, float]] = {}
    for _ in range(a.rounds):  # alternate, and keep each family's best: load only ever adds time
        for threads in (1, a.threads):
            figures = profile_step(threads, a.steps, a.batch, a.compile)
            kept = best.setdefault(threads, figures)
            for fam, ms in figures.items():
                kept[fam] = min(kept.get(fam, ms), ms)
    one, many = best[1], best[a.threads]
    total_one, total_many = sum(one.values()), sum(many.values())
    print(f"{'family':<12} {'1 thread ms':>12} {f'{a.threads} threads ms':>14} {'share':>7} {'speed-up':>9}")
    for fam in sorted(many, key=many.get, reverse=True):
        print(f"{fam:<12} {one.get(fam, 0):12.2f} {many[fam]:14.2f} {many[fam] / total_many:7.1%} "
              f"{one.get(fam, 0) / max(many[fam], 1e-9):8.2f}x")  # fmt: skip
    speedups = {fam: round(one.get(fam, 0) / max(ms, 1e-9), 2) for fam, ms in many.items()}
    print(json.dumps({"threads": a.threads, "compiled": a.compile, "step_ms_1_thread": round(total_one, 2),
                      "step_ms_n_threads": round(total_many, 2), "speedup_by_family": speedups,
                      "machine": machine()}))  # fmt: skip


if __name__ == "__main__":
    main()
