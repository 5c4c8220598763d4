#!/usr/bin/env python3
"""How long training waits for a checkpoint: synchronous saves vs ``async_checkpoint``.

Builds the Trainer's full checkpoint (model, AdamW state, schedule, RNG) for a GPT of the given
width and depth, after a real optimizer step, and times what the training thread spends in
``save_checkpoint`` (plus, for the background writer, the wait before the next save when the
write takes longer than the training in between). Prints one JSON line per mode and the ratio.

    python benchmarks/checkpoint_stall.py --d_model 512 --n_layers 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import machine

from nima.models import GPT, ModelConfig
from nima.training import Trainer, TrainingConfig


def stall_seconds(background: bool, args: argparse.Namespace, out: Path) -> dict[str, float]:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=1024, d_model=args.d_model, n_heads=8, n_layers=args.n_layers,
                            d_ff=4 * args.d_model, max_seq_len=64))  # fmt: skip
    batches = [{"input_ids": torch.randint(0, 1024, (2, 64)), "labels": torch.randint(0, 1024, (2, 64))}] * 2
    cfg = TrainingConfig(max_steps=1, batch_size=2, output_dir=str(out), progress_bar=False, eval_every=0,
                         save_every=0, async_checkpoint=background)  # fmt: skip
    trainer = Trainer(model, cfg, batches)
    trainer.train()  # one step: the optimizer state exists
    waits = []
    for i in range(args.saves):
        t0 = time.perf_counter()
        trainer.save_checkpoint(f"step_{i}")
        waits.append(time.perf_counter() - t0)
        time.sleep(args.train_s)  # the training between two saves
    t0 = time.perf_counter()
    trainer.wait_for_checkpoint()
    final_wait = time.perf_counter() - t0
    size = (out / "checkpoints" / f"step_{args.saves - 1}.pt").stat().st_size
    return {"mode": "async" if background else "sync", "median_stall_s": sorted(waits)[len(waits) // 2],
            "final_wait_s": final_wait, "checkpoint_mb": size / 2**20,
            "parameters_m": model.num_parameters() / 1e6}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d_model", type=int, default=512)
    p.add_argument("--n_layers", type=int, default=8)
    p.add_argument("--saves", type=int, default=5)
    p.add_argument("--train_s", type=float, default=3.0, help="seconds of 'training' between saves")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [stall_seconds(mode, args, Path(tmp) / str(mode)) for mode in (False, True)]
    for result in results:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))
    sync, background = results
    ratio = sync["median_stall_s"] / max(background["median_stall_s"], 1e-9)
    print(json.dumps({"stall_ratio_sync_vs_async": round(ratio, 1), "machine": machine()}))


if __name__ == "__main__":
    main()
