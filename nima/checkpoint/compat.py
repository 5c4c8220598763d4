"""Whether a checkpoint fits the run that loads it: model architecture and tokenizer identity."""

from __future__ import annotations

from typing import Any

# Model settings that may differ between a checkpoint and the model resuming from it.
RUNTIME_MODEL_KEYS = frozenset(
    {
        "dropout",
        "gradient_checkpointing",
        "attn_dropout",
        "resid_dropout",
        "embd_dropout",
        "attention_backend",
        "use_flash",
        "compile",
    }
)


def model_config_mismatches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: checkpoint X, model Y`` for each architecture setting that differs."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in RUNTIME_MODEL_KEYS or key not in saved or key not in current:
            continue
        a, b = saved[key], current[key]
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = list(a), list(b)
        if a != b:
            out.append(f"model.{key}: checkpoint {a!r}, model {b!r}")
    return out


def tokenizer_mismatches(saved: dict[str, Any] | None, current: dict[str, Any] | None) -> list[str]:
    """Differences in tokenizer identity (kind, vocab_size, sha256) when both sides know it."""
    if not saved or not current:
        return []
    return [
        f"tokenizer.{key}: checkpoint {saved[key]!r}, data {current[key]!r}"
        for key in ("kind", "vocab_size", "sha256")
        if key in saved and key in current and saved[key] != current[key]
    ]
