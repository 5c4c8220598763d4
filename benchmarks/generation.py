#!/usr/bin/env python3
"""Generation speed with and without the key/value cache.

Generates ``--new-tokens`` tokens greedily from a random-weight gpt2-family model (default: 6 layers,
d_model 384, 6 heads, context 1024, vocabulary 65 as for character-level tiny Shakespeare) twice:
with the KV cache (each new token runs one position) and without it (each new token re-runs the
whole prefix). Prints one JSON line per mode and a final line with the speed-up; also checks that
both modes produced the same tokens.

Usage (from the checkout root):
    python benchmarks/generation.py                      # 512 new tokens, the issue's setting
    python benchmarks/generation.py --new-tokens 128 --arch llama --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import machine

from nima.models import GPT, ModelConfig


def time_generation(
    model: GPT, prompt: torch.Tensor, new_tokens: int, use_cache: bool
) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--ctx", type=int, default=1024)
    p.add_argument("--vocab-size", type=int, default=65)
    p.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    config = ModelConfig(
        vocab_size=a.vocab_size, d_model=a.d_model, n_heads=a.heads, n_layers=a.layers, max_seq_len=a.ctx,
        arch=a.arch,
    )  # fmt: skip
    model = GPT(config).eval()
    prompt = torch.randint(0, a.vocab_size, (1, a.prompt_len))
    time_generation(model, prompt, 8, use_cache=True)  # warm-up (allocator, kernels)
    time_generation(model, prompt, 8, use_cache=False)

    results = {}
    outputs = {}
    for use_cache in (True, False):
        seconds, outputs[use_cache] = time_generation(model, prompt, a.new_tokens, use_cache)
        name = "cached" if use_cache else "uncached"
        results[name] = a.new_tokens / seconds
        print(json.dumps({"mode": name, "new_tokens": a.new_tokens, "seconds": round(seconds, 2),
                          "tokens_per_s": round(results[name], 1)}), flush=True)  # fmt: skip
    print(json.dumps({
        "speedup_cached_vs_uncached": round(results["cached"] / results["uncached"], 2),
        "same_tokens": bool(torch.equal(outputs[True], outputs[False])),
        "params_M": round(model.num_parameters() / 1e6, 2),
        "config": f"{a.arch} {a.layers}L d{a.d_model} h{a.heads} ctx{a.ctx} vocab{a.vocab_size}",
        "prompt_len": a.prompt_len,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": machine(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
