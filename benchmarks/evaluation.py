"""Evaluation throughput: `evaluate_tokens` against a bare loop of model forwards.

    python benchmarks/evaluation.py [--tokens 50000] [--threads 2]

Scores the same random token stream with the quick-test-sized model (3 layers, width 128, context
64, 65-symbol vocabulary, random weights: speed does not depend on training) three ways and prints
tokens per second and the ratio to the bare loop:

- bare: `model(x, labels=y)` over pre-built (B, T) batches, no bookkeeping;
- evaluate_tokens, non-overlapping windows (what `nima eval` does by default), with a char
  tokenizer so that bytes and characters are counted too;
- evaluate_tokens with stride 16 (sliding windows): about context/stride = 4x the forwards.

Goal: the default evaluation within 10% of the bare loop (ratio >= 0.9).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import best_of

from nima.data.tokenizer import CharTokenizer
from nima.evaluation import evaluate_tokens
from nima.models import create_model

CONFIG = {"vocab_size": 65, "d_model": 128, "n_heads": 4, "n_layers": 3, "d_ff": 512, "max_seq_len": 64}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(CONFIG).eval()
    tokenizer = CharTokenizer("".join(chr(32 + i) for i in range(65)))
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 65, size=args.tokens + 1, dtype=np.int64)
    T, B = CONFIG["max_seq_len"], args.batch_size
    n = (len(stream) - 1) // T * T
    x = torch.from_numpy(stream[:n]).view(-1, T)
    y = torch.from_numpy(stream[1 : n + 1]).view(-1, T)

    def bare() -> None:
        with torch.no_grad():
            for i in range(0, len(x), B):
                model(x[i : i + B], labels=y[i : i + B], return_logits=False)

    def default() -> None:
        evaluate_tokens(model, stream, tokenizer=tokenizer, batch_size=B)

    def sliding() -> None:
        evaluate_tokens(model, stream, tokenizer=tokenizer, batch_size=B, stride=16)

    bare()  # warm-up
    bare_rate = n / best_of(bare)
    print(f"torch threads {torch.get_num_threads()}, {args.tokens:,} tokens, batch {B} x context {T}")
    print(f"{'bare forward loop':34s} {bare_rate:10,.0f} tokens/s   ratio 1.00")
    runs = (("evaluate_tokens (non-overlapping)", default), ("evaluate_tokens (stride 16)", sliding))
    for name, fn in runs:
        rate = args.tokens / best_of(fn)
        print(f"{name:34s} {rate:10,.0f} tokens/s   ratio {rate / bare_rate:.2f}")


if __name__ == "__main__":
    main()
