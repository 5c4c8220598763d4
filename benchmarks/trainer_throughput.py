#!/usr/bin/env python3
"""Nima's Trainer vs the textbook reference loop (../shared/bench/reference_gpt.py), same shape, fp32.

Shape: 4 layers, 4 heads, d_model 128, d_ff 512, context 64, batch 12, AdamW lr 1e-3 with cosine
to 1e-4, char-level tiny Shakespeare. The Trainer runs with its features on (metrics every 10 steps,
progress output, evaluation every 500 steps, checkpoints every 1000). Runs alternate (reference,
Nima, reference, Nima, ...) in fresh processes; tokens/s is the steady state (the first 20 steps
excluded, evaluation and checkpoint time excluded for both). The last line is the median ratio.

    python benchmarks/trainer_throughput.py --steps 300 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NIMA_SHARED_DIR", ROOT.parent / "shared"))
REFERENCE = SHARED / "bench" / "reference_gpt.py"

NIMA_RUN = r"""
import json, sys, time
import torch
from nima.data import DataCollator, TokenWindowDataset, create_dataloader, prepare
from nima.models import ModelConfig, create_model
from nima.training import Callback, Trainer, TrainingConfig

steps, out, data_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
prepared = prepare("tiny_shakespeare", "char", data_dir=data_dir)
collate = DataCollator(prepared.tokenizer)
train = create_dataloader(TokenWindowDataset.from_prepared(prepared, "train", 64, seed=1337), 12,
                          collate_fn=collate, shuffle=True, seed=1337)
val = create_dataloader(TokenWindowDataset.from_prepared(prepared, "val", 64), 12, collate_fn=collate,
                        shuffle=False)
torch.manual_seed(1337)
model = create_model(ModelConfig(vocab_size=prepared.tokenizer.vocab_size, d_model=128, n_heads=4, n_layers=4,
                                 d_ff=512, max_seq_len=64, dropout=0.0, bias=True))
cfg = TrainingConfig(max_steps=steps, batch_size=12, learning_rate=1e-3, min_lr=1e-4, warmup_steps=100,
                     weight_decay=0.1, betas=(0.9, 0.99), gradient_clip=1.0, output_dir=out,
                     eval_batches=20)

class Timer(Callback):
    # Steady state: time from step 20 on, minus evaluation/checkpoint time (as the reference does).
    def __init__(self):
        self.t0 = None
    def on_step_end(self, trainer, metrics):
        if trainer.step == 20:
            self.t0, self.o0, self.s0 = time.perf_counter(), trainer._overhead_s, trainer.step
    def on_train_end(self, trainer, results):
        # the final evaluation and checkpoint are outside the timed steps
        self.t1, self.o1, self.s1 = time.perf_counter(), trainer._overhead_s, trainer.step

timer = Timer()
trainer = Trainer(model, cfg, train, val, callbacks=[timer])
results = trainer.train()
timed_s = (timer.t1 - timer.t0) - (timer.o1 - timer.o0)
print(json.dumps({"tokens_per_s": (timer.s1 - timer.s0) * 12 * 64 / timed_s,
                  "val_loss": results["final_val_loss"], "wall_s": results["wall_time_s"]}))
"""


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not REFERENCE.is_file():
        sys.exit(f"reference not found: {REFERENCE} (set NIMA_SHARED_DIR)")
    text = SHARED / "data" / "tiny_shakespeare" / "input.txt"
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        (data_dir / "tiny_shakespeare").mkdir(parents=True)
        (data_dir / "tiny_shakespeare" / "input.txt").symlink_to(text)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for i in range(args.repeats):
            ref = subprocess.run(
                [sys.executable, str(REFERENCE), "--steps", str(args.steps), "--text", str(text)],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            nima = subprocess.run(
                [sys.executable, "-c", NIMA_RUN, str(args.steps), f"{tmp}/run{i}", str(data_dir)],
                capture_output=True,
                text=True,
                check=True,
                env=env,
                cwd=ROOT,
            )
            r, n = last_json(ref.stdout)["tokens_per_s"], last_json(nima.stdout)["tokens_per_s"]
            ratios.append(n / r)
            print(
                f"run {i + 1}: reference {r:,.0f} tok/s, nima {n:,.0f} tok/s, ratio {n / r:.3f}", flush=True
            )
    print(
        f"nima/reference tokens/s: median {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {len(ratios)} runs)"
    )


if __name__ == "__main__":
    main()
