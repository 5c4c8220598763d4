"""A short generated sample: what the model writes after a newline, for logs and reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nima.errors import NimaError
from nima.inference.loading import load_for_inference
from nima.reporting.runs import update_run_info

SAMPLE_TOKENS = 100
TEMPERATURE = 0.8
SEED = 0


def sample_settings(max_new_tokens: int = SAMPLE_TOKENS) -> str:
    return f"{max_new_tokens} tokens after a newline, temperature {TEMPERATURE}, seed {SEED}"


@torch.no_grad()
def generate_sample(
    model: Any, tokenizer: Any, device: torch.device | str, max_new_tokens: int = SAMPLE_TOKENS
) -> str:
    """``max_new_tokens`` sampled after a newline (seeded: the same weights give the same text),
    decoded. The model is left in the mode it was in, and the global RNG is not touched."""
    try:
        prompt = tokenizer.encode("\n")
    except NimaError:  # a char tokenizer whose corpus had no newline
        prompt = []
    prompt = prompt or [0]
    ids = model.generate(
        torch.tensor([prompt], device=device),
        max_new_tokens=max_new_tokens,
        temperature=TEMPERATURE,
        top_k=None,
        seed=SEED,
    )
    return tokenizer.decode(ids[0, len(prompt) :].tolist())


def sample_from_checkpoint(
    run_dir: str | Path, checkpoint: str | Path, max_new_tokens: int = SAMPLE_TOKENS
) -> str | None:
    """Generate a sample from ``checkpoint`` on the CPU and record it in the run's run_info.json;
    None (and nothing recorded) when its model or tokenizer cannot be loaded, or the model cannot
    generate (damaged weights)."""
    try:
        loaded = load_for_inference(checkpoint, device="cpu")
        text = generate_sample(loaded.model, loaded.tokenizer, loaded.device, max_new_tokens)
    except NimaError as err:
        print(f"note: no sample ({err})")
        return None
    update_run_info(
        run_dir,
        sample=text,
        sample_step=loaded.info.get("step"),
        sample_settings=sample_settings(max_new_tokens),
    )
    return text


__all__ = ["SAMPLE_TOKENS", "generate_sample", "sample_from_checkpoint", "sample_settings"]
