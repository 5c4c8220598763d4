"""The checkpoint format: one layout, written in one place, read back with safe loading.

A checkpoint is ``torch.save`` of a plain dict (format ``nima-checkpoint-v1``) holding only
tensors, numbers, strings, lists and dicts, so it always loads with ``weights_only=True``: no
pickled code is ever run. :func:`make_checkpoint` is the layout: the model and what it needs to
be rebuilt (``model_config``, ``tokenizer`` identity, ``data``), plus whatever training state the
Trainer's components contribute at the top level (``optimizer``, ``scheduler``, ``step``,
``epoch``, ``rng`` ...). :func:`load_checkpoint_file` reads any file of this format, filling
what older v1 files lack.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from nima.checkpoint.storage import atomic_save
from nima.errors import CheckpointError
from nima.runtime.wrapping import unwrap_model

FORMAT = "nima-checkpoint-v1"
FORMAT_VERSION = 1

# What a v1 file written before a field existed reads as (the loader fills these in).
V1_DEFAULTS: dict[str, Any] = {
    "data": {"prepared_path": None},
    "training_config": {},
    "step": 0,
    "epoch": 0,
    "batch_in_epoch": 0,
    "tokens_seen": 0,
    "best_val_loss": None,
    "last_val_loss": None,
    "early_stopping": None,
    "world_size": 1,
    "rng_by_rank": None,
}


def make_checkpoint(
    model_state: dict[str, torch.Tensor],
    model_config: dict[str, Any] | None,
    tokenizer: dict[str, Any] | None,
    prepared_path: str | Path | None = None,
    training_config: dict[str, Any] | None = None,
    **training_state: Any,
) -> dict[str, Any]:
    """The checkpoint dict: model weights (wrapper prefixes removed), how to rebuild the model,
    the tokenizer's identity, the prepared data it trained on, and ``training_state`` (step,
    optimizer, ...; plain values and tensors only) at the top level."""
    return {
        "format": FORMAT,
        "model": clean_state_dict(model_state),
        "model_config": model_config,
        "tokenizer": tokenizer,
        "data": {"prepared_path": str(prepared_path) if prepared_path is not None else None},
        "training_config": dict(training_config or {}),
        "step": 0,
        "epoch": 0,
        **training_state,
    }


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a Nima checkpoint with ``weights_only=True``; CheckpointError when missing or foreign.

    ``mmap=True`` maps the tensors instead of reading them: cheap when only the metadata is needed.
    """
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            found = sorted(p.name for p in path.parent.glob("*.pt"))
            hint = f"; found there: {', '.join(found[:8])}" if found else "; no .pt files there"
        raise CheckpointError(f"checkpoint not found: {path}{hint}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable Nima checkpoint (corrupt, truncated or not "
            f"saved by Nima): {first[:200]}"
        ) from None
    return upgrade(ckpt, path)


def upgrade(ckpt: Any, path: str | Path = "checkpoint") -> dict[str, Any]:
    """Check the format of a loaded checkpoint and fill in the fields older v1 files lack."""
    found = ckpt.get("format") if isinstance(ckpt, dict) else None
    newer = isinstance(found, str) and re.fullmatch(r"nima-checkpoint-v(\d+)", found)
    if newer and int(newer.group(1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {found}, newer than this Nima reads ({FORMAT}); "
            "upgrade Nima to load it"
        )
    if found != FORMAT or "model" not in ckpt:
        raise CheckpointError(
            f"{path} is not a Nima checkpoint (expected format {FORMAT!r}); "
            "only files saved by Nima's Trainer can be loaded"
        )
    return {**V1_DEFAULTS, **ckpt}



def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` and ``_orig_mod.`` prefixes that wrappers add to parameter names."""
    return {
        re.sub(r"^(?:(?:module|_orig_mod)\.)+", "", k).replace("._orig_mod.", "."): v
        for k, v in state.items()
    }



def load_model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the GPT saved in a checkpoint: returns ``(model in eval mode on device, checkpoint dict)``."""
    from nima.models import ModelConfig, create_model

    ckpt = load_checkpoint_file(path, map_location="cpu")
    if not isinstance(ckpt.get("model_config"), dict):
        raise CheckpointError(f"{path} has no model_config; it cannot be rebuilt without one")
    model = create_model(ModelConfig.from_dict(ckpt["model_config"]))
    try:
        model.load_state_dict(clean_state_dict(ckpt["model"]))
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: weights do not fit the saved model config: {str(err).splitlines()[0][:200]}"
        ) from None
    return model.to(device).eval(), ckpt



def save_model_checkpoint(model: torch.nn.Module, tokenizer: Any, path: str | Path, **extra: Any) -> Path:
    """Write a checkpoint with weights, model config and tokenizer identity only (no training state).

    ``nima eval`` and ``nima generate`` read it like any other; the tokenizer is saved as
    ``tokenizer.json`` next to the ``checkpoints/`` folder holding ``path``, and recorded by path.
    """
    path = Path(path)
    tokenizer_path = tokenizer.save(path.parent.parent / "tokenizer.json")
    state = make_checkpoint(
        unwrap_model(model).state_dict(),
        model.config.to_dict(),
        {**tokenizer.identity(), "path": str(tokenizer_path.resolve())},
        **extra,
    )
    return atomic_save(state, path)
