"""Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak.

MFU = tokens/s x FLOPs per token (6N + attention, from ``model.estimate_flops_per_token``) /
(peak FLOP/s per device x devices). Peaks are dense (no sparsity) tensor-core figures for the
precision trained in; pass ``training.peak_flops`` for hardware not listed.
"""

from __future__ import annotations

import torch

# name fragment (lower case) -> peak dense FLOP/s for bf16/fp16 tensor cores; first match wins.
GPU_PEAK_FLOPS: list[tuple[str, float]] = [
    ("h200", 989e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),  # SXM
    ("gh200", 989e12),
    ("b200", 2250e12),
    ("a100", 312e12),
    ("a800", 312e12),
    ("l40s", 362e12),
    ("l4", 121e12),
    ("a10g", 125e12),
    ("a10", 125e12),
    ("rtx 4090", 165e12),
    ("rtx 3090", 71e12),
    ("v100", 125e12),
    ("t4", 65e12),
]


def peak_flops_for(device: torch.device, precision: str, override: float | None = None) -> float | None:
    """Peak FLOP/s of one ``device`` in ``precision`` (None when unknown, e.g. CPUs)."""
    if override:
        return float(override)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device).lower()
    for fragment, peak in GPU_PEAK_FLOPS:
        if fragment in name:
            # fp32 runs on TF32 tensor cores at best: about half the bf16 rate.
            return peak if precision in ("bf16", "fp16") else peak / 2
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float, num_devices: int = 1) -> float:
    """Fraction (0-1) of the peak that training achieves."""
    return tokens_per_s * flops_per_token / (peak_flops * max(1, num_devices))
