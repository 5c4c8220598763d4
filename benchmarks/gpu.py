#!/usr/bin/env python3
"""Training tokens/s and MFU of Nima's Trainer for the GPT-2 small shape (124M, context 1024).

Runs the real ``Trainer`` (bf16 autocast, ``torch.compile``, fused AdamW, logging on) on random
tokens held in memory, so that the figure is the model and training loop, not data loading.
Timing starts after ``--warmup`` steps (compilation and autotuning happen there) and covers
``--steps`` more; MFU = tokens/s x FLOPs per token (``model.estimate_flops_per_token``: 6N plus
attention) / peak FLOP/s (``nima.training.mfu``: H100 SXM 989 TFLOP/s dense bf16; ``--peak_flops``
for other hardware). The vocabulary is GPT-2's 50257 padded to 50304 (a multiple of 128, which
the GPU's matmul tiles prefer; ``--vocab_size 50257`` for the exact one).

    python benchmarks/gpu.py                                  # CUDA: GPT-2 small, bf16, compile
    python benchmarks/gpu.py --batch_size 32 --steps 50
    python benchmarks/gpu.py --device cpu --tiny              # seconds on a CPU: a smoke test
    python benchmarks/gpu.py --record benchmarks/RESULTS.md   # also append the figures there

Prints a human line and, last, one JSON line with tokens_per_s, mfu, step_ms and the settings.
``--record FILE`` appends one Markdown table row (UTC date, device, settings, figures, the command)
to FILE, writing the table's header first when FILE is new.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import append_table_rows, command_line

PADDED_GPT2_VOCAB = 50304


class RandomTokens:
    """A loader of ``batches`` fixed random (input_ids, labels) batches, cycled forever."""

    def __init__(
        self, vocab_size: int, batch_size: int, seq_len: int, batches: int = 4, seed: int = 0
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, vocab_size, (batches, batch_size, seq_len + 1), generator=gen)
        self.batches = [{"input_ids": t[:, :-1], "labels": t[:, 1:]} for t in tokens]
        if torch.cuda.is_available():
            self.batches = [{k: v.pin_memory() for k, v in b.items()} for b in self.batches]
        self.batch_size = batch_size

    def __iter__(self):
        while True:
            yield from self.batches


class WindowTimer:
    """Callback: time from the first logging step at or after ``warmup`` to the last one."""

    def __init__(self, warmup: int, sync: bool) -> None:
        self.warmup, self.sync = warmup, sync
        self.marks: list[tuple[int, float]] = []
        self.logged: list[dict[str, float]] = []

    def on_log(self, run: Any, metrics: dict[str, float]) -> None:
        if run.step < self.warmup or "loss" not in metrics:  # not a logging step's record
            return
        if self.sync:
            torch.cuda.synchronize()
        self.marks.append((run.step, time.perf_counter()))
        self.logged.append(dict(metrics))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from nima.models import create_gpt_small, create_gpt_tiny
    from nima.training import Trainer, TrainingConfig

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        seq_len = args.seq_len or 64
        model = create_gpt_tiny(vocab_size=args.vocab_size or 65, max_seq_len=seq_len, dropout=0.0)
        batch_size = args.batch_size or 8
    else:
        seq_len = args.seq_len or 1024
        model = create_gpt_small(
            vocab_size=args.vocab_size or PADDED_GPT2_VOCAB, max_seq_len=seq_len, dropout=0.0
        )
        batch_size = args.batch_size or 16
    loader = RandomTokens(model.config.vocab_size, batch_size, seq_len)
    log_every = args.log_every
    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory(prefix="nima-gpu-bench-") as out:
        config = TrainingConfig(
            max_steps=total,
            batch_size=batch_size,
            learning_rate=6e-4,
            warmup_steps=min(100, total // 2),
            weight_decay=0.1,
            betas=(0.9, 0.95),
            device=device,
            precision=args.precision,
            compile=args.compile,
            log_every=log_every,
            eval_every=0,
            save_every=0,
            save_epoch_checkpoints=False,
            progress_bar=False,
            peak_flops=args.peak_flops,
            output_dir=out,
        )
        timer = WindowTimer(args.warmup, sync=device.startswith("cuda"))
        trainer = Trainer(model, config, loader, callbacks=[timer])
        trainer.train()
    if len(timer.marks) < 2:
        raise SystemExit("too few timed steps: raise --steps (a multiple of --log_every)")
    (s0, t0), (s1, t1) = timer.marks[0], timer.marks[-1]
    tokens_per_s = (s1 - s0) * batch_size * seq_len / (t1 - t0)
    flops = float(model.estimate_flops_per_token(seq_len))
    peak = trainer.peak_flops
    trainer_mfu = [m["mfu"] for m in timer.logged[1:] if "mfu" in m]
    return {
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "model": "tiny" if args.tiny else "gpt2-small",
        "params": model.num_parameters(),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "precision": trainer.precision.name,
        "compile": args.compile,
        "timed_steps": s1 - s0,
        "step_ms": 1000 * (t1 - t0) / (s1 - s0),
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops,
        "peak_flops": peak,
        "mfu": tokens_per_s * flops / peak if peak else None,
        "trainer_logged_mfu": sorted(trainer_mfu)[len(trainer_mfu) // 2] if trainer_mfu else None,
        "torch": torch.__version__,
    }


RECORD_HEADER = ["date (UTC)", "device", "model", "precision", "compile", "batch x context", "tokens/s",
                 "ms/step", "MFU", "torch", "command"]  # fmt: skip


def record(path: Path, result: dict[str, Any], argv: list[str]) -> None:
    """Append ``result`` as one row of the Markdown table in ``path`` (header first if new)."""
    mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a"
    row = (
        f"| {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} | {result['device']} "
        f"| {result['model']} ({result['params'] / 1e6:.1f}M) | {result['precision']} | {result['compile']} "
        f"| {result['batch_size']} x {result['seq_len']} | {result['tokens_per_s']:,.0f} "
        f"| {result['step_ms']:.1f} | {mfu} | {result['torch']} | `{command_line('gpu', argv)}` |\n"
    )
    append_table_rows(path, RECORD_HEADER, row)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--tiny", action="store_true", help="a tiny model (CPU smoke test)")
    parser.add_argument("--batch_size", type=int, default=None, help="sequences per step (16; tiny: 8)")
    parser.add_argument("--seq_len", type=int, default=None, help="context (1024; tiny: 64)")
    parser.add_argument(
        "--vocab_size", type=int, default=None, help=f"default {PADDED_GPT2_VOCAB} (tiny: 65)"
    )
    parser.add_argument("--steps", type=int, default=40, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 20; tiny: 10)")
    parser.add_argument("--log_every", type=int, default=10, help="Trainer logging interval (timing marks)")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on recent GPUs), bf16, fp16, fp32")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model (default: on for CUDA, off for CPU)",
    )
    parser.add_argument("--peak_flops", type=float, default=None, help="peak FLOP/s of the device for MFU")
    parser.add_argument("--record", type=Path, default=None, help="append the figures to this Markdown table")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.compile is None:
        args.compile = device.startswith("cuda")
    if args.warmup is None:
        args.warmup = 10 if args.tiny else 20
    result = run(args)
    mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a (unknown peak: --peak_flops)"
    print(
        f"{result['model']} ({result['params'] / 1e6:.1f}M params) on {result['device']}, "
        f"{result['precision']}, compile {result['compile']}, "
        f"batch {result['batch_size']} x {result['seq_len']}: "
        f"{result['tokens_per_s']:,.0f} tokens/s, {result['step_ms']:.1f} ms/step, MFU {mfu}",
        flush=True,
    )
    print(json.dumps(result), flush=True)
    if args.record is not None:
        record(args.record, result, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
