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


def data_mismatch(saved: dict[str, Any] | None, current: dict[str, Any] | None) -> str | None:
    """How the prepared data a checkpoint trained on differs from the data there now, or None.

    ``saved`` is the checkpoint's ``data`` entry, ``current`` the run's data identity (both with
    ``train_tokens``, ``val_tokens`` and ``sha256``; see :func:`nima.checkpoint.metadata.data_identity`).
    Checkpoints written before the record existed, and data without a ``meta.json``, are not
    compared.
    """
    if not saved or not current or not saved.get("sha256") or not current.get("sha256"):
        return None
    if saved["sha256"] == current["sha256"]:
        return None

    def describe(record: dict[str, Any]) -> str:
        return (
            f"{record.get('train_tokens', '?')} train + {record.get('val_tokens', '?')} val tokens, "
            f"data sha256 {str(record['sha256'])[:12]}"
        )

    where = current.get("prepared_path") or saved.get("prepared_path") or "the prepared data"
    return f"it recorded {describe(saved)}, and {where} now holds {describe(current)}"
