#!/usr/bin/env python3
"""Model-only training step: Nima's GPT vs the reference model (../shared/bench/reference_gpt.py).

Both models are built at the same gpt2 shape (default: 4 layers, d_model 128, 4 heads, d_ff 512,
context 64, batch 12, vocabulary 65, fp32) and checked to have the same parameter count. Each
timed step is forward + loss + backward + gradient clipping + AdamW, on the same random batch, with
no trainer around it: this isolates the model's own speed from the training loop's. Rounds
alternate (reference, Nima, reference, ...) so that load from other processes hits both; the last
line is the median ratio (> 1: Nima is faster). With ``--compile``, Nima's model runs through
``torch.compile`` (as ``training.compile: true`` does); the reference stays eager, as written.

    python benchmarks/model_step.py --threads 1
    python benchmarks/model_step.py --compile --rounds 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import load_reference, machine

from nima.models import GPT, ModelConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--ctx", type=int, default=64)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--vocab-size", type=int, default=65)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--compile", action="store_true", help="torch.compile Nima's model")
    a = p.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ref = load_reference().GPT(a.vocab_size, a.ctx, a.d_model, a.heads, a.layers)
    ours = GPT(ModelConfig(vocab_size=a.vocab_size, d_model=a.d_model, n_heads=a.heads, n_layers=a.layers,
                           d_ff=4 * a.d_model, max_seq_len=a.ctx, dropout=0.0, bias=True))  # fmt: skip
    n_ref = sum(p.numel() for p in ref.parameters())
    assert ours.num_parameters() == n_ref, (ours.num_parameters(), n_ref)

    x = torch.randint(0, a.vocab_size, (a.batch, a.ctx))
    y = torch.randint(0, a.vocab_size, (a.batch, a.ctx))
    run_ours = torch.compile(ours) if a.compile else ours
    losses = {"reference": lambda: ref(x, y), "nima": lambda: run_ours(x, labels=y).loss}
    models = {"reference": ref, "nima": ours}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1) for name, m in models.items()}

    def step(name: str) -> None:
        loss = losses[name]()
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models[name].parameters(), 1.0)
        opts[name].step()

    # Wall time, and CPU time of this process: on a machine shared with other jobs the CPU time is
    # the steadier measure (time spent waiting for a core does not count).
    if a.compile:
        for _ in range(3):  # compile before any timing
            step("nima")
    wall_ms: dict[str, list[float]] = {"reference": [], "nima": []}
    cpu_ms: dict[str, list[float]] = {"reference": [], "nima": []}
    for _ in range(a.rounds):
        for name in ("reference", "nima"):
            for _ in range(3):  # untimed warm-up after the switch
                step(name)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(a.steps):
                step(name)
            wall_ms[name].append(1000 * (time.perf_counter() - wall) / a.steps)
            cpu_ms[name].append(1000 * (time.process_time() - cpu) / a.steps)
    for name in wall_ms:
        print(json.dumps({"model": name, "median_step_ms": round(statistics.median(wall_ms[name]), 2),
                          "median_cpu_ms_per_step": round(statistics.median(cpu_ms[name]), 2)}))  # fmt: skip

    def ratio(times: dict[str, list[float]]) -> float:
        return statistics.median(r / n for r, n in zip(times["reference"], times["nima"], strict=True))

    print(json.dumps({"speed_ratio_nima_vs_reference": round(ratio(wall_ms), 3),
                      "cpu_time_ratio_nima_vs_reference": round(ratio(cpu_ms), 3), "params": n_ref,
                      "compiled": a.compile, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "machine": machine()}))  # fmt: skip


if __name__ == "__main__":
    main()
